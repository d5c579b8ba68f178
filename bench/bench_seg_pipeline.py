"""Segmentation input pipeline and TTA (issue 9).

a) ``seg_data.train_dataset`` (parse, normalise, spectral indices with
   land/cloud masking, paired augmentation, padding, batching) against the
   ceiling of a bare parse of the same records (read + ``parse_example``:
   the raw bands decoded, nothing computed), tiles/s, interleaved rounds.
b) TTA: all views predicted in one pass (``tta_dataset`` + one
   ``predict`` + ``merge_tta``) against one pass per view (a dataset and a
   ``predict`` per view, then the same merge), tiles/s, with the tiny UNet.

Synthetic Kelp-like tiles (7 int16 bands, 350x350 by default), written as
seg records in a temp dir. Results: bench/out/seg_pipeline.md.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import tensorflow as tf  # noqa: E402

from foldnet.models import unet
from foldnet.raster import spectral
from foldnet.raster import views as rviews
from foldnet.tasks.segmentation import data as seg_data
from foldnet.tasks.segmentation import records as seg_records

BANDS = ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"]
PARSE_FEATURES = "ceiling 2: read + parse + features (7 bands + 10 indices, padded)"
INDICES = ["NDVI", "NDWI", "GNDVI", "MNDWI", "NDMI", "EVI", "SAVI", "MSAVI", "CIG", "FAI"]


def write_tiles(root, n, size, n_files=4, seed=0):
    rng = np.random.default_rng(seed)
    files = [os.path.join(root, f"train-{k}.tfrec") for k in range(n_files)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        image = rng.normal(8000, 1500, (size, size, 7)).astype(np.int16)
        image[..., 5] = (rng.random((size, size)) < 0.1).astype(np.int16)
        image[..., 6] = np.where(xx < size // 4, 30, -1)
        cy, cx = rng.integers(0, size, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 10) ** 2).astype(np.uint8)
        valid = rng.random((size, size)) > 0.01
        image[~valid, 0] = -32768
        writers[i % n_files].write(seg_records.make_example(f"t{i}", image, mask, valid, f"g{i % 5}"))
    for w in writers:
        w.close()
    stats = [{"band": b, "min": 0.0, "max": 16000.0, "q01": 4500.0, "q99": 11500.0, "mean": 8000.0, "std": 1500.0,
              "missing_share": 0.0} for b in BANDS]
    manifest = {"image": {"shape": [size, size, 7], "dtype": "int16", "missing_value": -32768, "bands": BANDS},
                "band_stats": stats}
    return files, manifest


def bare_parse(files, manifest, batch_size):
    shape, dtype = manifest["image"]["shape"], manifest["image"]["dtype"]
    ds = seg_data.tfdata.read_records(files, deterministic=False).repeat()
    ds = ds.map(lambda s: seg_records.parse_example(s, shape, dtype), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def parse_features(files, manifest, features, batch_size):
    """The second ceiling: read + parse + the features (padded), nothing else."""
    parse = seg_data.record_parser(features)
    ds = seg_data.tfdata.read_records(files, deterministic=False).repeat()
    def make(serialized):
        ex = parse(serialized)
        return features(ex["image"], ex["valid"], 32)

    ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def kelp_features(manifest):
    return spectral.Features(manifest, indices=INDICES, reflectance_scale=2.75e-5, reflectance_offset=-0.2)


def pipeline_part(files, manifest, batch_size, n_batches, reps):
    full = kelp_features(manifest)
    bands_only = spectral.Features(manifest)
    aug = {"flip": True, "rot90": True, "scale": 0.1, "rotate": 10, "shift": 0.05}
    # a negligible affine map forces the resampling path: features first, one composed warp of the
    # 17 channels, padding after: how flips/rot90 ran before they moved the raw bands
    warp_path = {"flip": True, "rot90": True, "scale": 1e-6}
    measures = {
        "ceiling: read + parse only": lambda: bare_parse(files, manifest, batch_size),
        PARSE_FEATURES: lambda: parse_features(files, manifest, full, batch_size),
        "train_dataset: 7 bands + 10 indices, flips/rot90 + affine": lambda: seg_data.train_dataset(
            files, full, batch_size, augment=aug),
        "train_dataset: 7 bands + 10 indices, flips/rot90": lambda: seg_data.train_dataset(files, full, batch_size),
        "train_dataset: 7 bands + 10 indices, flips/rot90 through the warp (the previous path)": lambda: (
            seg_data.train_dataset(files, full, batch_size, augment=warp_path)),
        "train_dataset: 7 bands + 10 indices, no augmentation": lambda: seg_data.train_dataset(
            files, full, batch_size, augment={"flip": False, "rot90": False}),
        "train_dataset: 7 bands only, flips/rot90": lambda: seg_data.train_dataset(files, bands_only, batch_size),
    }
    got = common.interleaved({k: (lambda f=f: common.iterate_rate(f(), batch_size, 1, n_batches)) for k, f in measures.items()},
                             reps)
    ceiling, with_features = got["ceiling: read + parse only"], got[PARSE_FEATURES]
    return [f"| {k} | {common.median(v):.1f} | {common.median_ratio(v, ceiling):.2f} | "
            f"{common.median_ratio(v, with_features):.2f} |" for k, v in got.items()]


def tta_part(files, features, views, batch_size, reps):
    size = features.shape[0]
    padded = size + sum(spectral.padding_for(size))
    model = unet.build_unet("tiny", features.n_channels, padded)
    n = sum(1 for _ in seg_data.tfdata.read_records(files, deterministic=True))

    def one_pass():
        start = time.perf_counter()
        pred = model.predict(seg_data.tta_dataset(files, features, batch_size, views), verbose=0)
        rviews.merge_tta(pred, views, size, size).numpy()
        return n / (time.perf_counter() - start)

    def per_view():
        start = time.perf_counter()
        maps = []
        for v in views:
            ds = seg_data.tta_dataset(files, features, batch_size, ["identity"]).map(
                lambda x, v=v: rviews.apply_view(x, v))
            maps.append(model.predict(ds, verbose=0))
        stacked = np.stack(maps, 1).reshape((-1,) + maps[0].shape[1:])
        rviews.merge_tta(stacked, views, size, size).numpy()
        return n / (time.perf_counter() - start)

    def features_alone():  # read + features + views, no model
        start = time.perf_counter()
        for _ in seg_data.tta_dataset(files, features, batch_size, ["identity"]):
            pass
        return n / (time.perf_counter() - start)

    views_in_memory = np.concatenate(list(seg_data.tta_dataset(files, features, batch_size, ["identity"])))

    def model_alone():  # views/s on in-memory inputs
        start = time.perf_counter()
        model.predict(views_in_memory, batch_size=batch_size, verbose=0)
        return n / (time.perf_counter() - start)

    one_pass(), per_view(), model_alone()  # warm-up
    got = common.interleaved({"one pass": one_pass, "per view": per_view, "features": features_alone,
                              "model": model_alone}, reps)
    f, m, t = common.median(got["features"]), common.median(got["model"]), len(views)
    expected = t * (1 / f + 1 / m) / (1 / f + t / m)
    return (f"| {t} ({', '.join(views)}) | {common.median(got['one pass']):.1f} | "
            f"{common.median(got['per view']):.1f} | {common.median_ratio(got['one pass'], got['per view']):.2f} | "
            f"{expected:.2f} | {f:.1f} | {m:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_tiles", type=int, default=64, help="synthetic tiles written")
    p.add_argument("--size", type=int, default=350, help="tile side (px)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--n_batches", type=int, default=12, help="batches timed per pipeline measurement")
    p.add_argument("--tta_tiles", type=int, default=16, help="tiles predicted in the TTA part")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    p.add_argument("--part", choices=("all", "pipeline", "tta"), default="all", help="what to measure")
    p.add_argument("--out", default=None, help="Markdown output (default bench/out/seg_pipeline.md)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows, tta_rows = ["| (not measured) | | | |"], ["| (not measured) | | | | | | |"]
        files, manifest = write_tiles(tmp, args.n_tiles if args.part != "tta" else 1, args.size)
        features = kelp_features(manifest)
        if args.part != "tta":
            rows = pipeline_part(files, manifest, args.batch_size, args.n_batches, args.reps)
        if args.part != "pipeline":
            tta_dir = os.path.join(tmp, "tta")
            os.makedirs(tta_dir)
            tta_files, _ = write_tiles(tta_dir, args.tta_tiles, args.size, n_files=1, seed=1)
            tta_rows = [tta_part(tta_files, features, views, args.batch_size, args.reps)
                        for views in (["identity", "flip_lr"], ["identity", "flip_lr", "flip_ud", "rot90"])]
    text = "\n".join([
        "# Segmentation input pipeline and TTA", "",
        f"{common.machine()} ({common.cpu_flags()}); {args.n_tiles} synthetic tiles {args.size}x{args.size}x7 int16 "
        f"in 4 shards, batch {args.batch_size}, {args.n_batches} batches per measurement, "
        f"medians of {args.reps} interleaved rounds.", "",
        "## a) train_dataset vs the bare parse of the same records", "",
        "| pipeline | tiles/s | / parse | / parse + features |", "|---|---:|---:|---:|", *rows, "",
        f"## b) TTA on {args.tta_tiles} tiles, tiny UNet on {features.n_channels} channels, padded to "
        f"{args.size + sum(spectral.padding_for(args.size))}", "",
        "| views | one pass tiles/s | per-view passes tiles/s | speed-up | expected from the parts | "
        "features alone tiles/s | model alone views/s |",
        "|---|---:|---:|---:|---:|---:|---:|", *tta_rows, "",
    ])
    common.write_out(text, "seg_pipeline", args.out)


if __name__ == "__main__":
    main()
