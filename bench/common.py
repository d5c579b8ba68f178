"""Helpers shared by the bench/bench_*.py scripts.

* realistic photos: random crops/flips of scikit-learn's bundled sample
  photographs, resized, optional sensor noise, saved as JPEG quality 90
  (``make_photo`` runs in spawned worker processes: this module must not
  import TensorFlow);
* ``photo_tfrecords``: such photos in a temp dir, converted with foldnet's
  ``create_tfrecords`` (generic layout);
* ``interleaved``: alternate repetitions of several measurements, medians;
* ``iterate_rate``: images/s of a tf.data pipeline; ``patched``: swap a function in;
* ``cpu_flags`` / ``machine``: one line about the machine for the tables;
* ``write_out``: write a Markdown report to bench/out/NAME.md and print it.

Machines are noisy and shared: the scripts report ratios of quantities
measured in the same run, interleaved where possible.
"""
import contextlib
import gc
import os
import platform
import statistics
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(BENCH_DIR, "out")
ROOT = os.path.dirname(BENCH_DIR)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import foldnet  # noqa: E402,F401  (selects Keras 2; does not import TensorFlow)
from foldnet.io import images  # noqa: E402

# ---------------------------------------------------------------- photos

def sample_photos():
    """scikit-learn's sample photographs (427x640 RGB uint8 arrays)."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(img) for img in load_sample_images().images]


_NOISE = {}


def _noise(side, sigma):
    """A per-process field of Gaussian noise, cropped at random offsets per photo."""
    key = (side, sigma)
    if key not in _NOISE:
        _NOISE[key] = np.random.default_rng(0).normal(0, sigma, (side, side, 3)).round().astype(np.int16)
    return _NOISE[key]


def make_photo(args):
    """Worker: a random crop/flip of ``photo`` resized to ``size`` (w, h) or its
    transpose (portrait, 30 %), plus Gaussian noise of ``sigma`` (0: none),
    saved as JPEG quality 90 at ``path``. Returns the file size in bytes."""
    from PIL import Image

    photo, seed, path, size, sigma = args
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    size = tuple(size) if rng.random() < 0.7 else tuple(size)[::-1]  # landscape or portrait
    img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC)
    if sigma:
        oy, ox = rng.integers(0, 64, 2)
        pixels = np.asarray(img, dtype=np.int16) + _noise(max(size) + 64, sigma)[oy:oy + size[1], ox:ox + size[0]]
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    img.save(path, quality=90)
    return os.path.getsize(path)


def build_photo_dataset(root, n, workers, size, sigma, n_classes=10):
    """``n`` photos in ``root``/images and a generic-layout ``root``/train.csv
    (id, label: class{i % n_classes}). Returns the total JPEG bytes."""
    import pandas as pd

    os.makedirs(os.path.join(root, "images"))
    photos = sample_photos()
    ids = [f"img{i:05d}" for i in range(n)]
    tasks = [(photos[i % len(photos)], i, os.path.join(root, "images", f"{image_id}.jpg"), size, sigma)
             for i, image_id in enumerate(ids)]
    sizes = list(images.map_images(make_photo, tasks, workers, desc="making photos"))
    labels = [f"class{i % n_classes}" for i in range(n)]
    pd.DataFrame({"image_id": ids, "label": labels}).to_csv(os.path.join(root, "train.csv"), index=False)
    return sum(sizes)


def photo_tfrecords(root, n, size=(640, 480), sigma=2, n_classes=10, n_folds=5, workers=None):
    """Photos (see ``build_photo_dataset``) converted by ``create_tfrecords`` into
    ``root``/tfrec. Returns (manifest, all training shard paths, mean JPEG bytes)."""
    from foldnet.io import records
    from foldnet.tasks.classification.convert import create_tfrecords

    workers = workers or images.default_workers()
    total = build_photo_dataset(root, n, workers, size, sigma, n_classes)
    manifest = create_tfrecords(data_dir=root, out_dir=os.path.join(root, "tfrec"), train_csv="train.csv",
                                n_folds=n_folds, workers=workers, overwrite=True, progress=False)
    return manifest, records.fold_files(manifest, range(n_folds)), total / n


# ---------------------------------------------------------------- timing

def interleaved(measures, reps):
    """Run ``measures`` ({name: fn() -> value}) in turn, ``reps`` rounds (A B C A B C ...).

    Returns {name: [values]} in round order; take medians or per-round ratios.
    """
    out = {name: [] for name in measures}
    for r in range(reps):
        for name, fn in measures.items():
            out[name].append(fn())
            print(f"  round {r + 1}/{reps} {name}: {out[name][-1]:.2f}", file=sys.stderr, flush=True)
    return out


def median(values):
    return float(statistics.median(values))


def median_ratio(num, den):
    """Median of the per-round ratios num[i] / den[i] (rounds measured back to back)."""
    return median([a / b for a, b in zip(num, den)])


def iterate_rate(ds, batch, warm, n):
    """Images/s of ``n`` batches of ``batch`` from a new iterator over ``ds`` after ``warm`` batches."""
    it = iter(ds)
    for _ in range(warm):
        next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    gc.collect()
    return n * batch / elapsed


@contextlib.contextmanager
def patched(module, name, value):
    """Temporarily replace ``module.name`` by ``value`` (prototypes swapped in while a dataset is built)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def rate(n_items, fn):
    """Items per second of one call ``fn()`` that processes ``n_items``."""
    start = time.perf_counter()
    fn()
    return n_items / (time.perf_counter() - start)


# ---------------------------------------------------------------- reports

def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags) or "none"


def machine():
    """``"2 cores, x86_64"``: cores this process may use and the processor."""
    return f"{images.default_workers()} cores, {platform.processor() or platform.machine()}"


def write_out(text, name=None, path=None):
    """Write ``text`` to ``path`` (default bench/out/NAME.md) atomically, print it; return the path."""
    from foldnet.core import fileio

    path = path or os.path.join(OUT_DIR, f"{name}.md")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.atomic_write_text(path, text)
    print(text)
    return path
