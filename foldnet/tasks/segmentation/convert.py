"""Segmentation layouts -> sharded TFRecords by fold + folds.csv + tiles.csv + manifest.

Called by ``create_tfrecords.py --layout kelp|cloud|seg`` (or when the data
directory is recognised as Kelp Wanted / On Cloud N). Two passes over the
tiles, both in worker processes (foldnet.raster.tiff, tifffile, no TensorFlow):

1. inspect every tile: all problems of the input (unreadable TIFF, wrong
   band count, mask shape != image shape, non-binary mask, all-missing tile,
   tile shapes or dtypes that differ from the rest) are collected and raised
   as one DataError before anything is written. The same pass computes the
   per-tile properties, the band statistics of the training tiles and the
   embeddings for near-duplicate grouping.
2. folds (grouped by a column and/or near-duplicates, stratified on tile
   properties), then read again and write the shards into a temporary
   directory that replaces ``out_dir`` when complete (manifest.json last).

Band statistics (training tiles, pixels where the band is not missing):
min / max / mean / std are exact (float64 sums). The 1% / 99% quantiles are
exact for integer bands of up to 16 bits (a histogram of every value: the
smallest value whose cumulative share reaches q). For other dtypes they come
from a uniform sample of up to ``seg_tiles.FLOAT_SAMPLE`` pixels per tile and
band, weighted by the tile's pixel count; with n sampled pixels the rank
error is about sqrt(q (1 - q) / n), e.g. 0.0022 (0.22 percentile points) for
q = 0.01 and n = 2048 from a single tile, less with more tiles.
"""
import os
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pandas as pd

from foldnet.core import fileio, report
from foldnet.core.cli import say
from foldnet.core.errors import DataError
from foldnet.io import folds as folds_mod
from foldnet.io import images
from foldnet.io import tables as csv_tables
from foldnet.io.convert import input_fingerprint, manifest_common, staging_dir, write_unless_current
from foldnet.raster import submission as seg_submission
from foldnet.raster import tiff as seg_tiles
from foldnet.raster.convert import BandStats, check_flags, write_shards
from foldnet.tasks.segmentation import layouts as seg_layouts

TILES_CSV = "tiles.csv"


class SegJob(NamedTuple):
    split: str  # "train-fold{K}" or "test"
    spec: seg_tiles.TileSpec
    group: str


# ---------------------------------------------------------------- pass 1: inspection


def tile_specs(dataset, table):
    return [seg_tiles.TileSpec(str(r.id), tuple(r.files), r.mask, dataset.bands, seed=i)
            for i, r in enumerate(table.itertuples())]


def inspect_tiles(dataset, workers, progress):
    """(train infos, test infos); one DataError naming every bad tile."""
    train_specs, test_specs = tile_specs(dataset, dataset.train), tile_specs(dataset, dataset.test)
    results = list(images.map_images(seg_tiles.inspect_task, train_specs + test_specs, workers,
                                     desc="checking tiles", progress=progress))
    problems, shapes = [], {}
    for spec, (ok, info) in zip(train_specs + test_specs, results):
        where = f"{'train' if spec.mask_file is not None else 'test'} tile {spec.id} " \
                f"({', '.join(os.path.relpath(f, dataset.root) for f in spec.band_files)})"
        if not ok:
            problems.append(f"{where}: {info}")
            continue
        problems += [f"{where}: {p}" for p in info.problems]
        if not info.problems:
            shapes.setdefault((info.shape, info.dtype), []).append(spec.id)
    if len(shapes) > 1:
        common = max(shapes, key=lambda k: len(shapes[k]))
        for (shape, dtype), ids in sorted(shapes.items(), key=lambda kv: -len(kv[1])):
            if (shape, dtype) != common:
                problems.append(f"{len(ids)} tile(s) are {list(shape)} {dtype}, most are {list(common[0])} "
                                f"{common[1]}: {report.preview(ids)}")
    if problems:
        raise DataError(f"bad tiles: {len(problems)} problem(s); nothing was written", problems)
    infos = [info for _, info in results]
    return infos[:len(train_specs)], infos[len(train_specs):]


# ---------------------------------------------------------------- folds


def fold_groups(dataset, infos, group_duplicates):
    """(groups for the fold split or None, group name per training tile, n near-duplicate-grouped tiles).

    Groups: the layout's group column (location, AOI); else the scenes the tile ids name
    (``folds.scene_groups``: tiles cut from larger scenes); joined with near-duplicate clusters."""
    named = dataset.train["group"].astype(str).to_numpy()
    has_named = bool((named != "").any())
    clusters, n_grouped = None, 0
    if group_duplicates is not None:
        clusters = folds_mod.duplicate_groups(np.stack([i.embedding for i in infos]), group_duplicates,
                                              seg_layouts.MAX_GROUP_SIZE.get(dataset.layout))
        n_grouped = folds_mod.n_grouped(clusters)
    if has_named and clusters is not None:
        merged = folds_mod.merge_groups(named, clusters)
        return merged, named, n_grouped
    if has_named:
        return named, named, 0
    scenes = folds_mod.scene_groups(dataset.train["id"].astype(str).tolist())
    if scenes is not None and clusters is not None:
        return folds_mod.merge_groups(scenes, clusters), scenes, n_grouped
    if scenes is not None:
        return scenes, scenes, 0
    if clusters is not None:
        names = np.array([f"aoi{c}" for c in np.unique(clusters, return_inverse=True)[1]])
        return clusters, names, n_grouped
    return None, np.array([""] * len(infos)), 0


def tile_strata(props, bins):
    """Stratum per training tile: has-positive, plus ``bins`` quantile bins of the cloud and water shares
    when the layout has them (e.g. "1-c2-w0")."""
    props = pd.DataFrame(props)
    parts = [np.where(props["positive_share"].to_numpy(float) > 0, "1", "0")]
    for col, tag in (("cloud_share", "c"), ("water_share", "w")):
        if col in props and bins > 1:
            parts.append(np.char.add(tag, folds_mod.quantile_bins(props[col].to_numpy(float), bins).astype(str)))
    return folds_mod.combined_strata(parts)


# ---------------------------------------------------------------- pass 2: writing


def plan_jobs(dataset, fold, group_names, seed):
    """Jobs in write order: each fold's tiles shuffled (seeded), then the test tiles."""
    rng = np.random.default_rng(seed)
    train_specs, test_specs = tile_specs(dataset, dataset.train), tile_specs(dataset, dataset.test)
    jobs = []
    for k in range(int(fold.max()) + 1):
        jobs += [SegJob(f"train-fold{k}", train_specs[r], str(group_names[r]))
                 for r in rng.permutation(np.flatnonzero(fold == k))]
    jobs += [SegJob("test", s, str(g)) for s, g in zip(test_specs, dataset.test["group"])]
    return jobs


def write_tile_shards(jobs, out_dir, limit, workers, progress):
    """raster.convert.write_shards of segmentation tiles (seg_records examples)."""
    from foldnet.tasks.segmentation import records as seg_records

    def encode(job, value):
        image, mask, valid = value
        return seg_records.make_example(job.spec.id, image, mask, valid, job.group)

    return write_shards(jobs, out_dir, limit, workers, progress, seg_tiles.load_task, encode, "tile")


def tiles_table(dataset, train_infos, test_infos, fold, group_names):
    """tiles.csv: id, split, fold (-1 for test), group, positive_share (empty for test), missing_share, extras."""
    rows = []
    for r, info in enumerate(train_infos):
        rows.append({"id": dataset.train["id"].iloc[r], "split": "train", "fold": int(fold[r]),
                     "group": group_names[r], **info.props})
    for r, info in enumerate(test_infos):
        rows.append({"id": dataset.test["id"].iloc[r], "split": "test", "fold": -1,
                     "group": dataset.test["group"].iloc[r], **info.props})
    return pd.DataFrame(rows)


def fingerprint(dataset, flags):
    """convert.input_fingerprint over every band and mask file of every tile (names, sizes, mtimes),
    the CSV contents and ``flags``."""
    entries = [(r.id, path) for table in (dataset.train, dataset.test) for r in table.itertuples()
               for path in tuple(r.files) + ((r.mask,) if r.mask is not None else ())]
    files = pd.DataFrame(entries, columns=["id", "path"])
    return input_fingerprint(SimpleNamespace(csv_files=dataset.csv_files, root=dataset.root, train=files,
                                             test=files.iloc[:0]), flags)


def build_manifest(dataset, shape, dtype, files, counts, band_stats, exact, positive_share, flags, fp, n_grouped):
    b = dataset.bands
    return {
        **manifest_common("segmentation", dataset.layout, flags["n_folds"], files, counts, TILES_CSV),
        "image": {"shape": list(shape), "dtype": dtype, "missing_value": b.missing_value, "bands": list(b.names),
                  "valid_bands": [b.names[i] for i in b.valid_bands],
                  "qa_band": b.names[b.qa] if b.qa >= 0 else None,
                  "dem_band": b.names[b.dem] if b.dem >= 0 else None},
        "band_stats": band_stats,
        "quantiles": "exact" if exact else f"sampled ({seg_tiles.FLOAT_SAMPLE} pixels per tile and band)",
        "positive_share": positive_share,
        "submission_naming": seg_submission.naming_pattern(dataset.naming),
        "flags": flags,
        "fingerprint": fp,
        "skipped": [],
        "n_grouped": n_grouped,
    }


# ---------------------------------------------------------------- entry point


def create_seg_tfrecords(layout, data_dir=None, out_dir=None, *, train_csv=None, test_csv=None, id_col="id",
                         image_col="image", mask_col="mask", group_col=None, bands=None, missing_value=None,
                         n_folds=5, seed=42, group_duplicates="default", stratify_bins=3, shard_size="150MB",
                         workers=None, skip_bad=False, overwrite=False, progress=True, fold_method="stratified",
                         allow_outside=False):
    """Convert a segmentation layout into a TFRecord directory (seg_records format); return its manifest.

    ``group_duplicates``: cosine-similarity threshold of near-duplicate
    grouping ("default": 0.97 for kelp, off otherwise; None: off).
    ``fold_method``: ``stratified`` (stratified group K-fold) or ``round_robin``
    (``folds.round_robin_folds`` over the groups, e.g. On Cloud N's locations).
    ``out_dir`` defaults to ``<data dir>/tfrec``. A directory holding a
    manifest with the same input fingerprint is kept (unless ``overwrite``).
    """
    if group_duplicates == "default":
        group_duplicates = seg_layouts.DEFAULT_GROUP_DUPLICATES.get(layout)
    check_flags(layout, n_folds, group_duplicates, stratify_bins, shard_size, skip_bad, seg_layouts.LAYOUTS,
                "segmentation", "tiles")
    workers = images.default_workers() if not workers else int(workers)
    dataset = seg_layouts.read_layout(layout, data_dir, train_csv, test_csv, id_col, image_col, mask_col, group_col,
                                      bands, missing_value)
    if not allow_outside:
        items = [(f"{row.source} ({row.id})", f) for table in (dataset.train, dataset.test)
                 for row in table.itertuples() for f in (*row.files, getattr(row, "mask", None))]
        problems = csv_tables.outside_problems(items, dataset.root)
        if problems:
            raise DataError(f"{len(problems)} file(s) of the dataset are outside its folder", problems)
    out_dir = out_dir or os.path.join(data_dir or os.path.dirname(os.path.abspath(train_csv)), "tfrec")
    flags = {"layout": layout, "n_folds": n_folds, "seed": seed, "shard_size": str(shard_size),
             "group_duplicates": group_duplicates, "group_col": group_col, "stratify_bins": stratify_bins,
             "id_col": id_col, "image_col": image_col, "mask_col": mask_col, "bands": list(dataset.bands.names),
             "missing_value": dataset.bands.missing_value, "index_stats": 1}  # 1: the manifest has index_stats
    if fold_method != "stratified":  # only then: directories converted before the option stay current
        flags["fold_method"] = fold_method
    fp = fingerprint(dataset, flags)
    return write_unless_current(out_dir, fp, overwrite,
                                lambda: convert_seg_dataset(dataset, out_dir, flags, fp, workers, progress))


def convert_seg_dataset(dataset, out_dir, flags, fp, workers, progress):
    from foldnet.io import records

    train_infos, test_infos = inspect_tiles(dataset, workers, progress)
    shape, dtype = train_infos[0].shape, train_infos[0].dtype
    stats = BandStats(dataset.bands.names)
    for info in train_infos:
        stats.add(info.stats, info.dtype)
    groups, group_names, n_grouped = fold_groups(dataset, train_infos, flags["group_duplicates"])
    if flags["group_duplicates"] is not None:
        say(f"near-duplicates: {n_grouped} tiles in clusters of 2 or more (threshold {flags['group_duplicates']})")
    if groups is not None:
        named = bool((dataset.train["group"].astype(str) != "").any())
        source = ("the group column" if named else "tile ids naming their scene"
                  if folds_mod.scene_groups(dataset.train["id"].astype(str).tolist()) is not None
                  else "near-duplicate clusters")
        info, warning = folds_mod.group_report(groups, flags["n_folds"], source)
        say(info)
        if warning:
            say("warning: " + warning)
    strata = tile_strata([i.props for i in train_infos], flags["stratify_bins"])
    try:
        if flags.get("fold_method") == "round_robin":
            if groups is None:
                raise ValueError("--fold_method round_robin deals groups to folds, and the tiles have no groups "
                                 "(give --group_col, or a layout with locations such as cloud)")
            fold = folds_mod.round_robin_folds(groups, flags["n_folds"], flags["seed"])
        else:
            fold = folds_mod.assign_folds(strata, flags["n_folds"], flags["seed"], groups)
    except ValueError as e:
        raise DataError(f"cannot assign folds: {e}") from e
    jobs = plan_jobs(dataset, fold, group_names, flags["seed"])
    tiles = tiles_table(dataset, train_infos, test_infos, fold, group_names)
    n_pixels = sum(int(np.prod(i.shape[:2])) for i in train_infos)
    positive = sum(i.props["positive_share"] * int(np.prod(i.shape[:2])) for i in train_infos) / n_pixels
    with staging_dir(out_dir) as tmp:
        files, counts = write_tile_shards(jobs, tmp, records.parse_shard_size(flags["shard_size"]), workers, progress)
        fileio.atomic_write_text(os.path.join(tmp, TILES_CSV), tiles.to_csv(index=False))
        folds_csv = tiles[tiles["split"] == "train"][["id", "fold", "group"]]
        fileio.atomic_write_text(os.path.join(tmp, records.FOLDS_CSV), folds_csv.to_csv(index=False))
        manifest = build_manifest(dataset, shape, dtype, files, counts, stats.table(), stats.exact, positive, flags,
                                  fp, n_grouped)
        train_files = [os.path.join(tmp, name) for split, names in sorted(files.items()) if split != "test"
                       for name in names]
        manifest["index_stats"] = spectral_index_stats(manifest, train_files)
        fileio.atomic_write_json(os.path.join(tmp, records.MANIFEST), manifest)
    manifest["dir"] = out_dir
    n_files = sum(len(p["files"]) for p in manifest["folds"]) + len(manifest["test"]["files"])
    print(f"wrote {manifest['n_examples']} training tiles ({manifest['n_folds']} folds, "
          f"{100 * positive:.2f}% positive pixels) and {manifest['test']['n_examples']} test tiles "
          f"{list(shape)} {dtype} in {n_files} shards to {out_dir}")
    return manifest


def spectral_index_stats(manifest, train_files):
    """The manifest's ``index_stats``: every index the bands allow, over every training tile, masked
    to clear water (QA clear, DEM present and <= 0) as the Kelp Wanted winner's statistics are
    (``seg_data.index_stats``). {} when the bands allow no index."""
    from foldnet.raster import spectral
    from foldnet.tasks.segmentation import data as seg_data

    names = seg_data.stats_indices(manifest["image"]["bands"])
    if not names:
        return {}
    features = spectral.Features(manifest, bands=[], indices=names, mask_indices=True, jit_compile=False)
    say(f"index statistics: {len(names)} indices over {manifest['n_examples']} training tiles")
    return {"mask_indices": True, "qa_clear": list(features.qa_clear),
            "quantiles": "mean over tiles of each tile's linear 1% / 99% quantiles; min / max over all tiles",
            "stats": seg_data.index_stats(train_files, features)}


def convert_from_flags(layout, flags):
    """create_tfrecords.py with a segmentation layout: ``flags`` are its command line's (after the
    dispatcher's checks); returns the manifest."""
    missing = flags["missing_value"]
    if missing is not None and float(missing).is_integer():
        missing = int(missing)
    bands = [b.strip() for b in flags["bands"].split(",") if b.strip()] if flags["bands"] else None
    return create_seg_tfrecords(
        layout, flags["data_dir"], flags["out_dir"], train_csv=flags["train_csv"], test_csv=flags["test_csv"],
        id_col=flags["id_col"] or "id", image_col=flags["image_col"] or "image",
        mask_col=flags["mask_col"] or "mask", group_col=flags["group_col"], bands=bands,
        missing_value=missing, n_folds=flags["n_folds"], seed=flags["seed"],
        group_duplicates="default" if flags["group_duplicates"] is None else flags["group_duplicates"],
        stratify_bins=flags["stratify_bins"], shard_size=flags["shard_size"], workers=flags["workers"],
        skip_bad=flags["skip_bad"], overwrite=flags["overwrite"], progress=flags["progress"],
        fold_method=flags.get("fold_method") or "stratified", allow_outside=flags["allow_outside"])
