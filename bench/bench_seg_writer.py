"""Segmentation converter throughput vs. reading the same TIFF tiles, on the same cores.

    python bench/bench_seg_writer.py [--n_places 25] [--acquisitions 4] [--size 350]

Builds synthetic Kelp Wanted tiles (foldnet.tasks.segmentation.demo_data: 350x350x7 int16,
the real size) in a temporary directory, then measures in one run, for 1
worker and for all workers:

* converter: ``create_seg_tfrecords("kelp", ...)`` end to end (metadata,
  fingerprint, inspection pass, near-duplicate grouping, folds, second read,
  Example protos, shards, tiles.csv, manifest), tiles/s;
* tile work: the converter's per-tile work alone in the same worker setup
  (inspection: read, checks, properties, exact band histograms, embedding;
  then the second read), nothing sent back, nothing written, tiles/s: the
  ceiling of this design;
* one read: one ``tifffile.imread`` of every tile and mask, tiles/s: the
  ceiling of any converter that reads the TIFFs.

The converter reads every tile twice by design (check everything before
writing anything, without holding the dataset in memory) and computes the
statistics on the way, so "one read" is far out of its reach. Prints a Markdown table and writes it to
bench/out/seg_writer.md.
"""
import argparse
import os
import shutil
import tempfile
import time

import common  # noqa: E402  (first: puts the repo on sys.path; no TensorFlow)

from foldnet.io import images

OUT = os.path.join(common.OUT_DIR, "seg_writer.md")


def read_task(paths):
    """Worker: read a tile's TIFFs; returns only a size."""
    import tifffile

    return sum(tifffile.imread(p).size for p in paths)


def work_task(spec):
    """Worker: the converter's tile work without its transfers: inspect, then read again."""
    from foldnet.raster import tiff as seg_tiles

    ok, _ = seg_tiles.inspect_task(spec)
    return ok and seg_tiles.load_task(spec)[0]


def time_map(fn, items, workers):
    start = time.perf_counter()
    for _ in images.map_images(fn, items, workers, desc="", progress=False):
        pass
    return len(items) / (time.perf_counter() - start)


def time_converter(data_dir, out_dir, workers):
    from foldnet.tasks.segmentation.convert import create_seg_tfrecords

    start = time.perf_counter()
    m = create_seg_tfrecords("kelp", data_dir, out_dir, n_folds=5, workers=workers, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return (m["n_examples"] + m["test"]["n_examples"]) / seconds, size


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_places", type=int, default=25)
    p.add_argument("--acquisitions", type=int, default=4)
    p.add_argument("--size", type=int, default=350)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    from foldnet.tasks.segmentation.convert import tile_specs
    from foldnet.tasks.segmentation.demo_data import build_kelp_dataset
    from foldnet.tasks.segmentation.layouts import read_kelp

    tmp = tempfile.mkdtemp(prefix="bench-seg-writer-")
    try:
        data = os.path.join(tmp, "kelp")
        build_kelp_dataset(data, n_places=a.n_places, acquisitions=a.acquisitions, size=a.size)
        ds = read_kelp(data)
        tiles = [tuple(r.files) + (r.mask,) for r in ds.train.itertuples()] + [tuple(r.files) for r in ds.test.itertuples()]
        specs = tile_specs(ds, ds.train) + tile_specs(ds, ds.test)
        rows = []
        for workers in sorted({1, images.default_workers()}):
            conv, read, work, size = [], [], [], 0
            for _ in range(a.reps):  # interleaved
                rate, size = time_converter(data, os.path.join(tmp, "tfrec"), workers)
                conv.append(rate)
                read.append(time_map(read_task, tiles, workers))
                work.append(time_map(work_task, specs, workers))
            c, r, w = (sorted(x)[len(x) // 2] for x in (conv, read, work))
            rows.append(f"| {workers} | {len(tiles)} | {c:.1f} | {w:.1f} | {c / w:.2f} | {r:.1f} | {c / r:.3f} "
                        f"| {size / 1e6:.0f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join([
        f"# Segmentation converter ({a.size}x{a.size}x7 int16 Kelp tiles), {common.machine()}", "",
        "| workers | tiles | converter tiles/s | tile work tiles/s | converter/tile work | one read tiles/s "
        "| converter/one read | shards MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, ""])
    common.write_out(text, path=OUT)


if __name__ == "__main__":
    main()
