"""Shard writer throughput vs. the bare image-work ceiling on the same cores.

    python bench/bench_writer.py [--n 1500] [--workers N]

Builds ``--n`` phone-sized JPEGs (random crops/flips of scikit-learn's sample
photographs, upscaled to 1600x1200 or 1200x1600 with a little sensor noise,
quality 90) in a temporary
directory, then measures in one run, for 1 worker and for all workers, with and
without ``--max_side 512``:

* writer: ``create_tfrecords`` end to end (CSV, fingerprint, folds, workers,
  Example protos, TFRecord files, manifest), images/s;
* ceiling: the image work alone in the same worker setup: a full PIL decode
  (without max_side) or decode + resize + JPEG encode (with max_side), images/s.

Machines are noisy: compare the ratio writer/ceiling, not absolute rates.
Prints a Markdown table and writes it to bench/out/writer.md.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import common  # noqa: E402  (first: puts the repo on sys.path; no TensorFlow)
from PIL import Image

from foldnet.io import images

# Spawned workers re-import this file: TensorFlow and the converter are imported
# in run() only, so workers stay as light as the real CLI's.

PHOTO_SIZE = (1600, 1200)
NOISE_SIGMA = 4  # sensor noise: phone-photo file sizes
OUT = os.path.join(common.OUT_DIR, "writer.md")


def build_dataset(root, n, workers):
    """Phone-sized photos (common.make_photo: crop/flip, upscale, noise, quality 90) and train.csv."""
    return common.build_photo_dataset(root, n, workers, PHOTO_SIZE, NOISE_SIGMA)


def ceiling_task(args):
    """Worker: the image work alone; returns only a size, so no bytes travel back."""
    path, max_side = args
    if max_side is None:
        img = Image.open(path)
        img.load()
        return img.width * img.height
    return len(images.load_image(path, max_side=max_side, jpeg_quality=95).data)


def time_ceiling(paths, workers, max_side):
    start = time.perf_counter()
    for _ in images.map_images(ceiling_task, [(p, max_side) for p in paths], workers, desc="", progress=False):
        pass
    return len(paths) / (time.perf_counter() - start)


def time_writer(root, out_dir, workers, max_side):
    from foldnet.tasks.classification.convert import create_tfrecords

    start = time.perf_counter()
    m = create_tfrecords(data_dir=root, out_dir=out_dir, train_csv="train.csv", n_folds=5, workers=workers,
                         max_side=max_side, overwrite=True, progress=False)
    elapsed = time.perf_counter() - start
    shard_bytes = sum(os.path.getsize(os.path.join(out_dir, f)) for part in m["folds"] for f in part["files"])
    return m["n_examples"] / elapsed, shard_bytes


def run(n, all_workers, keep):

    root = tempfile.mkdtemp(prefix="bench-writer-")
    try:
        t0 = time.perf_counter()
        total = build_dataset(root, n, all_workers)
        print(f"built {n} JPEGs ({total / n / 1e6:.2f} MB each) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        paths = sorted(os.path.join(root, "images", f) for f in os.listdir(os.path.join(root, "images")))
        rows = []
        for max_side in (None, 512):
            for workers in sorted({1, all_workers}):
                ceiling = time_ceiling(paths, workers, max_side)
                writer, shard_bytes = time_writer(root, os.path.join(root, "tfrec"), workers, max_side)
                rows.append((workers, max_side, writer, ceiling, shard_bytes))
                print(f"workers={workers} max_side={max_side}: writer {writer:.1f} img/s, "
                      f"ceiling {ceiling:.1f} img/s", file=sys.stderr)
        return table(rows, n, total)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def table(rows, n, total):
    lines = [
        f"Shard writer throughput: {n} JPEGs of about {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} "
        f"({total / n / 1e6:.2f} MB each), {platform.processor() or platform.machine()}, "
        f"{images.default_workers()} cores available, one run.",
        "",
        "| workers | --max_side | writer img/s | ceiling img/s | writer/ceiling | shards MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, max_side, writer, ceiling, shard_bytes in rows:
        lines.append(f"| {workers} | {max_side or '-'} | {writer:.1f} | {ceiling:.1f} | {writer / ceiling:.2f} | "
                     f"{shard_bytes / 1e6:.0f} |")
    lines += [
        "",
        "Ceiling: the image work alone with the same workers, no bytes sent back, no TFRecord written — "
        "a full PIL decode without --max_side (the writer decodes every image to validate it); "
        "decode (JPEG draft scaling) + resize + JPEG encode with it. "
        "Writer: create_tfrecords end to end (CSV, fingerprint, folds, Example protos, shards, manifest).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1500, help="number of photos")
    p.add_argument("--workers", type=int, default=images.default_workers(), help="'all workers' setting")
    p.add_argument("--keep", action="store_true", help="keep the temporary dataset")
    args = p.parse_args(argv)
    md = run(args.n, args.workers, args.keep)
    common.write_out(md, path=OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
