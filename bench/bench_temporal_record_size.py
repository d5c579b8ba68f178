"""Bytes per chip of temporal TFRecords against the raw BioMassters files.

Writes synthetic chips in the competition's layout (foldnet.tasks.temporal.demo_data at the real
side, 256 px: S1 one page [256, 256, 4] float32, S2 one page [256, 256, 11] uint16, absent for
missing months, the target [256, 256] float32), converts them with create_tfrecords (records with
storage groups: S1 float32, S2 uint16) and re-encodes the same chips in the format before storage
groups (one float32 image). Reports per chip: the raw files' bytes, each record's serialized bytes,
and the ratios. Sizes are exact byte counts, not timings: one run suffices.

Usage: python bench/bench_temporal_record_size.py [--chips 10] [--side 256]
"""
import argparse
import os
import tempfile

from common import machine, write_out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args(argv)
    import tensorflow as tf

    import foldnet  # noqa: F401
    from foldnet.io import records
    from foldnet.tasks.temporal import chips as temporal_chips
    from foldnet.tasks.temporal import convert as temporal_convert
    from foldnet.tasks.temporal import layouts as temporal_layouts
    from foldnet.tasks.temporal import records as temporal_records
    from foldnet.tasks.temporal.demo_data import build_biomass_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = build_biomass_dataset(os.path.join(tmp, "bio"), n_train=args.chips, n_test=1, size=args.side, seed=0)
        m = temporal_convert.create_temporal_tfrecords("biomassters", data, os.path.join(tmp, "tfrec"), n_folds=2,
                                                       workers=1, progress=False)
        files = records.fold_files(m, [0, 1])
        new = [len(r.numpy()) for f in files for r in tf.data.TFRecordDataset(f)]
        dataset = temporal_layouts.read_layout("biomassters", data)
        old, raw, s2_months = [], [], []
        for spec in dataset.train["spec"]:
            chip = temporal_chips.load_chip(spec)
            old.append(len(temporal_records.make_example(spec.id, chip.image, chip.valid, chip.months, chip.target)))
            paths = [p for month in spec.files for p in month if p is not None] + [spec.target]
            raw.append(sum(os.path.getsize(p) for p in paths))
            s2_months.append(int(chip.sensor_months[:, 1].sum()))
    n = len(raw)
    mean = {k: sum(v) / n / 2**20 for k, v in (("raw", raw), ("new", new), ("old", old))}
    rows = [("raw files (S1 + S2 TIFFs + target)", mean["raw"], 1.0),
            ("records before storage groups (all float32)", mean["old"], mean["old"] / mean["raw"]),
            ("records with storage groups (S1 float32, S2 uint16)", mean["new"], mean["new"] / mean["raw"])]
    text = (f"{n} synthetic chips of {args.side}x{args.side}, 12 months, {sum(s2_months) / n:.1f} S2 months "
            f"per chip on average (the others absent, as in the competition); {machine()}\n\n"
            "| storage | MB per chip | / raw |\n|---|---:|---:|\n"
            + "".join(f"| {name} | {mb:.2f} | {ratio:.2f} |\n" for name, mb, ratio in rows))
    write_out(text, "temporal_record_size")


if __name__ == "__main__":
    main()
