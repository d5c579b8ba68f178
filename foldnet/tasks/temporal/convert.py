"""Temporal layouts -> sharded TFRecords by fold + folds.csv + chips.csv + manifest.

Called by ``create_tfrecords.py --layout biomassters|temporal`` (or when the
data directory is recognised as The BioMassters). Two passes over the chips,
both in worker processes (foldnet.tasks.temporal.chips, no TensorFlow):

1. inspect every chip: every problem (unreadable TIFF, wrong band count,
   months of one chip or chips that differ in shape, a chip with no month
   of data, a target missing or of another shape) is collected and raised
   as one DataError before anything is written. The same pass computes the
   band and target statistics of the training chips.
2. folds (stratified on quantile bins of the chip's mean target), then read
   again and write the shards into a temporary directory that replaces
   ``out_dir`` when complete (manifest.json last).

Band statistics (training chips, values present): min / max / mean / std
exact, q01 / q99 from a uniform sample of ``seg_tiles.FLOAT_SAMPLE`` values
per chip and band, weighted by the chip's count (as seg_convert).
"""
import os
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pandas as pd

from foldnet.core import fileio, report
from foldnet.core.errors import DataError
from foldnet.io import folds as folds_mod
from foldnet.io import images, tables
from foldnet.io.convert import input_fingerprint, manifest_common, staging_dir, write_unless_current
from foldnet.raster import tiff as seg_tiles
from foldnet.raster.convert import BandStats, check_flags, write_shards
from foldnet.tasks.temporal import chips as temporal_chips
from foldnet.tasks.temporal import layouts as temporal_layouts

CHIPS_CSV = "chips.csv"
TASK = "temporal_regression"


class ChipJob(NamedTuple):
    split: str  # "train-fold{K}" or "test"
    spec: temporal_chips.ChipSpec


def inspect_chips(dataset, workers, progress):
    """(train infos, test infos); one DataError naming every bad chip (with the layout's problems)."""
    specs = list(dataset.train["spec"]) + list(dataset.test["spec"])
    n_train = len(dataset.train)
    readable = [s for s in specs if s.id not in dataset.bad_ids]
    results = dict(zip([id(s) for s in readable], images.map_images(
        temporal_chips.inspect_task, readable, workers, desc="checking chips", progress=progress)))
    problems, shapes = [], {}
    for k, spec in enumerate(specs):
        if id(spec) not in results:
            continue
        ok, info = results[id(spec)]
        where = f"{'train' if k < n_train else 'test'} chip {spec.id}"
        if not ok:
            problems.append(f"{where}: {info}")
            continue
        problems += [f"{where}: {p}" for p in info.problems]
        if not info.problems:
            shapes.setdefault(tuple(info.shape), []).append(spec.id)
    if len(shapes) > 1:
        common = max(shapes, key=lambda s: len(shapes[s]))
        for shape, ids in sorted(shapes.items(), key=lambda kv: -len(kv[1])):
            if shape != common:
                problems.append(f"{len(ids)} chip(s) are [T, H, W, C] = {list(shape)}, most are {list(common)}: "
                                f"{report.preview(ids)}")
    temporal_layouts.raise_problems(dataset, problems)
    infos = [results[id(s)][1] for s in specs]
    return infos[:n_train], infos[n_train:]


def band_stats_dict(stats):
    """{band: {min, max, mean, std, q01, q99, missing, n_valid}} from ``BandStats.table()`` rows."""
    return {row["band"]: {"min": row["min"], "max": row["max"], "q01": row["q01"], "q99": row["q99"],
                          "mean": row["mean"], "std": row["std"], "missing": row["missing_share"],
                          "n_valid": row["n_valid"]} for row in stats}


def default_norm(dataset, band_stats):
    """The layout's fixed constants, or each band's [q01, q99] (a flat or all-missing band: [0, 1])."""
    if dataset.norm is not None:
        return {b: list(dataset.norm[b]) for b in dataset.bands}
    out = {}
    for b in dataset.bands:
        s = band_stats[b]
        lo, hi = s["q01"], s["q99"]
        if lo is None or hi is None or not hi > lo:
            lo, hi = (s["min"], s["max"]) if s["min"] is not None and s["max"] > s["min"] else (0.0, 1.0)
        out[b] = [float(lo), float(hi)]
    return out


def chip_strata(train_infos, bins):
    means = np.array([np.nan if i.props.get("target_mean") is None else i.props["target_mean"] for i in train_infos])
    means = np.where(np.isfinite(means), means, -1.0)
    return folds_mod.quantile_bins(means, bins) if bins > 1 else np.zeros(len(means), int)


def plan_jobs(dataset, fold, seed):
    """Jobs in write order: each fold's chips shuffled (seeded), then the test chips."""
    rng = np.random.default_rng(seed)
    specs = list(dataset.train["spec"])
    jobs = []
    for k in range(int(fold.max()) + 1):
        jobs += [ChipJob(f"train-fold{k}", specs[r]) for r in rng.permutation(np.flatnonzero(fold == k))]
    return jobs + [ChipJob("test", s) for s in dataset.test["spec"]]


def storage_groups(sensors):
    """The records' storage groups ``[(name, n_bands, dtype)]``: one per sensor, in its dtype."""
    return [(s.name, len(s.bands), s.dtype) for s in sensors]


def _encode(job, chip):
    from foldnet.tasks.temporal import records as temporal_records

    return temporal_records.make_example(job.spec.id, chip.image, chip.valid, chip.months, chip.target,
                                         groups=storage_groups(job.spec.sensors), sensor_months=chip.sensor_months)


def month_summary(chips, sensors, n_months):
    """One line: months present on average, in total and per sensor, and blank months counted as missing."""
    parts = [f"{chips['n_months_present'].mean():.1f} of {n_months} months with data on average"]
    if len(sensors) > 1:
        parts.append(", ".join(f"{s.name} {chips[f'months_{s.name}'].mean():.1f}" for s in sensors))
    blank = {s.name: int(chips[f"blank_{s.name}"].sum()) for s in sensors if s.cloud_band is not None}
    parts += [f"{n} blank {name} month(s) (all zero or cloud >= "
              f"{next(s.cloud_nodata for s in sensors if s.name == name):g} everywhere) counted as missing"
              for name, n in blank.items()]
    return "; ".join(parts)


def chips_table(dataset, train_infos, test_infos, fold, groups=None):
    """chips.csv: id, split, fold (-1 for test), group (the scene a sub-chip id names, else empty), props."""
    test_groups = folds_mod.scene_groups(dataset.test["id"].astype(str).tolist()) if groups is not None else None
    rows = [{"id": cid, "split": "train", "fold": int(fold[r]), "group": "" if groups is None else str(groups[r]),
             **train_infos[r].props} for r, cid in enumerate(dataset.train["id"])]
    rows += [{"id": cid, "split": "test", "fold": -1, "group": "" if test_groups is None else str(test_groups[r]),
              **test_infos[r].props} for r, cid in enumerate(dataset.test["id"])]
    return pd.DataFrame(rows)


def fingerprint(dataset, flags):
    """convert.input_fingerprint over every input and target file (names, sizes, mtimes), CSVs and flags."""
    files = pd.DataFrame(dataset.paths(), columns=["id", "path"])
    return input_fingerprint(SimpleNamespace(csv_files=dataset.csv_files, root=dataset.root, train=files,
                                             test=files.iloc[:0]), flags)


def target_summary(dataset, target_stats):
    row = target_stats.table()[0]
    return {**dataset.target, "stats": {k: row[k] for k in ("min", "max", "mean", "std", "q01", "q99", "n_valid")}}


def build_manifest(dataset, shape, files, counts, stats, target, flags, fp):
    band_stats = band_stats_dict(stats)
    sensors = dataset.train["spec"].iloc[0].sensors if len(dataset.train) else ()
    groups, start = [], 0
    for name, n, dtype in storage_groups(sensors):
        groups.append({"name": name, "bands": list(dataset.bands[start:start + n]), "dtype": dtype})
        start += n
    return {
        "groups": groups,
        **manifest_common(TASK, dataset.layout, flags["n_folds"], files, counts, CHIPS_CSV),
        "n_months": int(shape[0]),
        "shape": [int(shape[1]), int(shape[2])],
        "bands": list(dataset.bands),
        "month_names": list(dataset.month_names),
        "band_stats": band_stats,
        "quantiles": f"sampled ({seg_tiles.FLOAT_SAMPLE} values per chip and band)",
        "norm": default_norm(dataset, band_stats),
        "norm_source": "fixed constants of the layout" if dataset.norm is not None else "q01/q99 of the training chips",
        "target": target,
        "submission_naming": dataset.naming,
        "flags": flags,
        "fingerprint": fp,
        "skipped": [],
    }


def convert_temporal_dataset(dataset, out_dir, flags, fp, workers, progress):
    from foldnet.io import records

    train_infos, test_infos = inspect_chips(dataset, workers, progress)
    shape = train_infos[0].shape
    stats, target_stats = BandStats(dataset.bands), BandStats([dataset.target.get("name", "target")])
    for info in train_infos:
        stats.add(info.stats, "float32")
        target_stats.add(info.target_stats, "float32")
    # sub-chips cut from larger chips ("<chip>_r0_c1"): neighbours stay in one fold
    groups = folds_mod.scene_groups(dataset.train["id"].astype(str).tolist())
    if groups is not None:
        info, warning = folds_mod.group_report(groups, flags["n_folds"], "chip ids naming their scene")
        print(info)
        if warning:
            print("warning: " + warning)
    try:
        fold = folds_mod.assign_folds(chip_strata(train_infos, flags["stratify_bins"]), flags["n_folds"], flags["seed"],
                                      groups)
    except ValueError as e:
        raise DataError(f"cannot assign folds: {e}") from e
    jobs = plan_jobs(dataset, fold, flags["seed"])
    chips = chips_table(dataset, train_infos, test_infos, fold, groups)
    target = target_summary(dataset, target_stats)
    target["stats"]["above_400"] = int(sum(i.target_stats[0]["above_400"] for i in train_infos))
    with staging_dir(out_dir) as tmp:
        files, counts = write_shards(jobs, tmp, records.parse_shard_size(flags["shard_size"]), workers, progress,
                                     temporal_chips.load_task, _encode, "chip")
        fileio.atomic_write_text(os.path.join(tmp, CHIPS_CSV), chips.to_csv(index=False))
        folds_csv = chips[chips["split"] == "train"][["id", "fold", "group"]]
        fileio.atomic_write_text(os.path.join(tmp, records.FOLDS_CSV), folds_csv.to_csv(index=False))
        manifest = build_manifest(dataset, shape, files, counts, stats.table(), target, flags, fp)
        fileio.atomic_write_json(os.path.join(tmp, records.MANIFEST), manifest)
    manifest["dir"] = out_dir
    n_files = sum(len(p["files"]) for p in manifest["folds"]) + len(manifest["test"]["files"])
    sensors = dataset.train["spec"].iloc[0].sensors
    print(f"wrote {manifest['n_examples']} training chips ({manifest['n_folds']} folds) and "
          f"{manifest['test']['n_examples']} test chips [T, H, W, C] = {list(shape)} "
          f"({month_summary(chips, sensors, shape[0])}) in {n_files} shards to {out_dir}")
    return manifest


def create_temporal_tfrecords(layout, data_dir=None, out_dir=None, *, train_csv=None, test_csv=None, id_col="id",
                              image_col="image", target_col="target", bands=None, missing_value=None, n_folds=5,
                              seed=42, stratify_bins=3, shard_size="150MB", workers=None, skip_bad=False,
                              overwrite=False, progress=True, allow_outside=False):
    """Convert a temporal layout into a TFRecord directory (temporal_records format); return its manifest.

    ``out_dir`` defaults to ``<data dir>/tfrec``. A directory holding a manifest with the same input
    fingerprint is kept (unless ``overwrite``).
    """
    check_flags(layout, n_folds, None, stratify_bins, shard_size, skip_bad, temporal_layouts.LAYOUTS, "temporal",
                "chips")
    workers = images.default_workers() if not workers else int(workers)
    dataset = temporal_layouts.read_layout(layout, data_dir, train_csv, test_csv, id_col, image_col, target_col,
                                           bands, missing_value)
    if not allow_outside:
        items = []
        for table in (dataset.train, dataset.test):
            for row in table.itertuples():
                files = [f for group in row.spec.files for f in (group if isinstance(group, tuple) else (group,))]
                items += [(f"{row.source} ({row.id})", f) for f in (*files, row.spec.target)]
        problems = tables.outside_problems(items, dataset.root)
        if problems:
            raise DataError(f"{len(problems)} file(s) of the dataset are outside its folder", problems)
    out_dir = out_dir or os.path.join(data_dir or os.path.dirname(os.path.abspath(train_csv)), "tfrec")
    flags = {"layout": layout, "n_folds": n_folds, "seed": seed, "shard_size": str(shard_size),
             "stratify_bins": stratify_bins, "id_col": id_col, "image_col": image_col, "target_col": target_col,
             "bands": list(dataset.bands), "missing_value": missing_value}
    fp = fingerprint(dataset, flags)
    return write_unless_current(out_dir, fp, overwrite,
                                lambda: convert_temporal_dataset(dataset, out_dir, flags, fp, workers, progress))


def convert_from_flags(layout, flags):
    """create_tfrecords.py with a temporal layout: ``flags`` are its command line's (after the
    dispatcher's checks); returns the manifest."""
    bands = [b.strip() for b in flags["bands"].split(",") if b.strip()] if flags["bands"] else None
    return create_temporal_tfrecords(
        layout, flags["data_dir"], flags["out_dir"], train_csv=flags["train_csv"], test_csv=flags["test_csv"],
        id_col=flags["id_col"] or "id", image_col=flags["image_col"] or "image",
        target_col=flags["target_col"] or "target", bands=bands, missing_value=flags["missing_value"],
        n_folds=flags["n_folds"], seed=flags["seed"], stratify_bins=flags["stratify_bins"],
        shard_size=flags["shard_size"], workers=flags["workers"], skip_bad=flags["skip_bad"],
        overwrite=flags["overwrite"], progress=flags["progress"], allow_outside=flags["allow_outside"])
