"""Temporal (BioMassters) input pipeline vs the bare parse of the same records (issue 10).

``temporal_data.train_dataset`` (parse incl. unpacking the bit-packed no-data
mask, min-max normalisation, month dropout, paired augmentation of all
months and the target, padding, batching) against the ceiling of a bare
parse (read + ``tf.io.parse_single_example`` + decoding the raw image:
nothing computed), chips/s, interleaved rounds. Synthetic chips of 12
months x 15 bands (4 S1 float32 + 11 S2 as in The BioMassters), written as
temporal records in a temp dir. Results: bench/out/temporal_pipeline.md.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import tensorflow as tf  # noqa: E402

from foldnet.tasks.temporal import data as temporal_data
from foldnet.tasks.temporal import layouts as temporal_layouts
from foldnet.tasks.temporal import records as temporal_records
from foldnet.tasks.temporal.records import TemporalSpec  # noqa: E402

T, C = 12, 15


def write_chips(root, n, size, n_files=4, seed=0):
    rng = np.random.default_rng(seed)
    files = [os.path.join(root, f"train-{k}.tfrec") for k in range(n_files)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i in range(n):
        image = np.empty((T, size, size, C), np.float32)
        image[..., :4] = rng.normal(-15, 4, (T, size, size, 4))
        image[..., 4:] = rng.integers(0, 12000, (T, size, size, 11))
        valid = np.ones(image.shape, bool)
        valid[rng.random(T) < 0.2, :, :, 4:] = False  # absent S2 months
        valid[..., :4] &= rng.random((T, size, size, 1)) > 0.02  # S1 no-data
        months = valid.reshape(T, -1).any(1)
        target = rng.uniform(0, 450, (size, size)).astype(np.float32)
        writers[i % n_files].write(temporal_records.make_example(f"c{i}", image, valid, months, target))
    for w in writers:
        w.close()
    norm = {b: list(v) for b, v in temporal_layouts.BIOMASSTERS_NORM.items()}
    return files, TemporalSpec(T, (size, size), list(temporal_layouts.BIOMASSTERS_BANDS), norm, {"name": "agbm"})


def bare_parse(files, spec, batch_size):
    t, (h, w), c = spec.n_months, spec.shape, spec.n_channels

    def parse(s):
        ex = tf.io.parse_single_example(s, temporal_records.FEATURES)
        return tf.reshape(tf.io.decode_raw(ex["image"], tf.float32), [t, h, w, c]), ex["target"]

    ds = temporal_data.tfdata.read_records(files, deterministic=False).repeat()
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_chips", type=int, default=32, help="synthetic chips written")
    p.add_argument("--size", type=int, default=128, help="chip side (px; BioMassters: 256)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--n_batches", type=int, default=10, help="batches timed per measurement")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    p.add_argument("--out", default=None, help="Markdown output (default bench/out/temporal_pipeline.md)")
    args = p.parse_args(argv)
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        files, spec = write_chips(tmp, args.n_chips, args.size)
        flips = {"flip": True, "rot90": True}
        measures = {
            "ceiling: read + parse + decode only": lambda: bare_parse(files, spec, b),
            "train_dataset: no augmentation, no dropout": lambda: temporal_data.train_dataset(
                files, spec, b, augment={}),
            "train_dataset: flips/rot90 + month dropout 0.3": lambda: temporal_data.train_dataset(
                files, spec, b, augment=flips, month_dropout=0.3),
            "train_dataset: flips/rot90 + rotation 10 deg + month dropout 0.3": lambda: temporal_data.train_dataset(
                files, spec, b, augment={**flips, "rotate": 10.0}, month_dropout=0.3),
            "train_dataset: temporal_input mean, flips/rot90": lambda: temporal_data.train_dataset(
                files, spec, b, augment=flips, temporal_input="mean"),
        }
        got = common.interleaved({k: (lambda f=f: common.iterate_rate(f(), b, 1, args.n_batches)) for k, f in measures.items()},
                                 args.reps)
    ceiling = got["ceiling: read + parse + decode only"]
    mb = T * args.size * args.size * C * 4 / 1e6
    rows = [f"| {k} | {common.median(v):.1f} | {common.median(v) * mb:.0f} | {common.median_ratio(v, ceiling):.2f} |"
            for k, v in got.items()]
    text = "\n".join([
        "# Temporal input pipeline", "",
        f"{common.machine()} ({common.cpu_flags()}); {args.n_chips} synthetic chips [12, {args.size}, {args.size}, 15] "
        f"({mb:.1f} MB float32 each) in 4 shards, batch {b}, {args.n_batches} batches per measurement, "
        f"medians of {args.reps} interleaved rounds.", "",
        "| pipeline | chips/s | MB/s of image | / ceiling |", "|---|---:|---:|---:|", *rows, "",
    ])
    common.write_out(text, "temporal_pipeline", args.out)


if __name__ == "__main__":
    main()
