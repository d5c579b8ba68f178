"""TFRecord example format, the shard writer and the manifest (Contract 1 of DESIGN.md).

Readers use ``FEATURES`` / ``parse_example`` and find files through the
manifest: ``load_manifest(dir)``, ``fold_files(manifest, folds)``,
``test_files(manifest)``, ``load_label_map(manifest)``.

Writing: worker processes (foldnet.io.images, no TensorFlow) read, validate and
re-encode images; this process serialises tf.train.Example protos and writes
them with tf.io.TFRecordWriter (its C++ CRC32C is far faster than Python).
"""

import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from foldnet.core import fileio
from foldnet.core.errors import DataError
from foldnet.io import images

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABEL_MAP = "label_map.json"
FOLDS_CSV = "folds.csv"

FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "label_str": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized):
    """Parse one serialized example into a dict of tensors (keys of FEATURES)."""
    return tf.io.parse_single_example(serialized, FEATURES)


def bytes_feature(value):
    """A tf.train.Feature holding one bytes value."""
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def int_feature(value):
    """A tf.train.Feature holding one int64 value."""
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(image_id, image, label, label_str, height, width):
    """Serialized tf.train.Example with the FEATURES keys (label -1, label_str "" for test)."""
    feature = {
        "id": bytes_feature(str(image_id).encode("utf-8")),
        "image": bytes_feature(image),
        "label": int_feature(label),
        "label_str": bytes_feature(str(label_str).encode("utf-8")),
        "height": int_feature(height),
        "width": int_feature(width),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ---------------------------------------------------------------- shard writing

_SIZE_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ShardLimit(NamedTuple):
    examples: int = 0  # roll to a new shard after this many examples (0: no limit)
    bytes: int = 0  # roll before a shard would exceed this many bytes (0: no limit)


def parse_shard_size(text):
    """``"1000"`` -> 1000 examples per shard; ``"150MB"`` / ``"1.5GB"`` / ``"64MiB"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"bad shard size {text!r}: use a number of examples (1000) or a size (150MB)")
    if unit == "":
        if not m.group(1).isdigit():
            raise ValueError(f"bad shard size {text!r}: a number of examples must be an integer")
        return ShardLimit(examples=int(m.group(1)))
    return ShardLimit(bytes=int(float(m.group(1)) * _SIZE_UNITS[unit]))


class ShardWriter:
    """Writes records to ``{prefix}-000.tfrec``, ``-001``, ... in ``out_dir``,
    starting a new shard when ``limit`` is reached. At least one file is written."""

    _FRAMING = 16  # bytes of length + CRCs around each record

    def __init__(self, out_dir, prefix, limit):
        self.out_dir, self.prefix, self.limit = out_dir, prefix, limit
        self.files = []
        self.n_examples = 0
        self._writer = None
        self._count = 0
        self._bytes = 0
        self._open()

    def _open(self):
        if self._writer is not None:
            self._writer.close()
        name = f"{self.prefix}-{len(self.files):03d}.tfrec"
        self.files.append(name)
        self._writer = tf.io.TFRecordWriter(os.path.join(self.out_dir, name))
        self._count = self._bytes = 0

    def _full(self, size):
        if self._count == 0:
            return False
        if self.limit.examples and self._count >= self.limit.examples:
            return True
        return bool(self.limit.bytes) and self._bytes + size > self.limit.bytes

    def write(self, record):
        size = len(record) + self._FRAMING
        if self._full(size):
            self._open()
        self._writer.write(record)
        self._count += 1
        self._bytes += size
        self.n_examples += 1

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.files


class Job(NamedTuple):
    """One image to write into the shards of ``split`` ("train-fold0", "test")."""

    split: str
    id: str
    path: str
    label: int
    label_str: str


class WriteResult(NamedTuple):
    files: dict  # split -> [file names]
    counts: dict  # split -> number of examples written
    sizes: list  # (height, width) of every written image
    bad: list  # (Job, reason) of images that could not be read


def write_shards(jobs, out_dir, limit, workers, max_side=None, jpeg_quality=95, progress=True,
                 max_pixels=images.DEFAULT_MAX_PIXELS):
    """Write ``jobs`` (grouped by split, in order) into shards in ``out_dir``.

    Images are read and re-encoded by ``workers`` processes; bad images are
    returned, not raised. Every split of ``jobs`` gets at least one file.
    """
    writers = {}
    sizes, bad = [], []
    tasks = [(job.path, max_side, jpeg_quality, max_pixels) for job in jobs]
    results = images.map_images(images.encode_task, tasks, workers, desc="writing shards", progress=progress)
    for job, (ok, value) in zip(jobs, results):
        if job.split not in writers:
            writers[job.split] = ShardWriter(out_dir, job.split, limit)
        if not ok:
            bad.append((job, value))
            continue
        writers[job.split].write(make_example(job.id, value.data, job.label, job.label_str, value.height, value.width))
        sizes.append((value.height, value.width))
    files = {split: w.close() for split, w in writers.items()}
    counts = {split: w.n_examples for split, w in writers.items()}
    return WriteResult(files, counts, sizes, bad)


# ---------------------------------------------------------------- manifest


def image_stats(sizes):
    """{"height": {min, max, mean}, "width": {...}} of (height, width) pairs."""
    arr = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    stats = {}
    for k, name in enumerate(("height", "width")):
        col = arr[:, k]
        stats[name] = ({"min": int(col.min()), "max": int(col.max()), "mean": round(float(col.mean()), 2)}
                       if len(col) else {})
    return stats


def load_manifest(tfrec_dir):
    """The manifest of ``tfrec_dir`` with an added ``"dir"`` key.

    Raises DataError if the directory or its manifest is missing (conversion
    not run or not finished), the format is unknown, or a listed file is missing.
    """
    tfrec_dir = str(tfrec_dir).rstrip("/") or "/"
    path = fileio.join(tfrec_dir, MANIFEST)
    if not fileio.exists(tfrec_dir):
        raise DataError(f"TFRecord directory {tfrec_dir} does not exist: run create_tfrecords.py first")
    if not fileio.exists(path):
        raise DataError(f"{tfrec_dir} is incomplete: no {MANIFEST} (create_tfrecords.py did not finish; "
                        "run it again)")
    manifest = fileio.read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}; "
                        "re-run create_tfrecords.py")
    manifest["dir"] = tfrec_dir
    # label_map: classification; tiles_csv: segmentation (seg_records).
    listed = ([manifest[k] for k in ("label_map", "folds_csv", "tiles_csv") if manifest.get(k)]
              + [f for part in _parts(manifest) for f in part["files"]])
    missing = [f for f in listed if not fileio.exists(fileio.join(tfrec_dir, f))]
    if missing:
        raise DataError(f"{tfrec_dir} is incomplete: {len(missing)} file(s) listed in {MANIFEST} are missing",
                        missing)
    return manifest


def _parts(manifest):
    return list(manifest["folds"]) + [manifest["test"]]


def fold_files(manifest, folds):
    """Full paths of the shards of ``folds`` (an int or an iterable of ints), fold order."""
    folds = [folds] if isinstance(folds, (int, np.integer)) else list(folds)
    by_fold = {int(f["fold"]): f["files"] for f in manifest["folds"]}
    unknown = [f for f in folds if int(f) not in by_fold]
    if unknown:
        raise ValueError(f"no fold(s) {unknown} in {manifest['dir']} (folds 0..{manifest['n_folds'] - 1})")
    return [fileio.join(manifest["dir"], name) for f in folds for name in by_fold[int(f)]]


def test_files(manifest):
    """Full paths of the test shards (empty list if there is no test set)."""
    return [fileio.join(manifest["dir"], name) for name in manifest["test"]["files"]]


test_files.__test__ = False  # not a pytest test when imported into a test module


def manifest_at(tfrec_dir):
    """The manifest of ``tfrec_dir`` with ``dir`` (json only, no TF, no check of the listed files),
    or None if it has none. ``load_manifest`` is the checked reader for training."""
    path = fileio.join(str(tfrec_dir), MANIFEST)
    if not fileio.exists(path):
        return None
    manifest = fileio.read_json(path)
    manifest["dir"] = str(tfrec_dir)
    return manifest


def manifest_of_files(files):
    """The manifest (with ``dir``) of the TFRecord directory holding ``files`` (json only, no TF)."""
    manifest = manifest_at(os.path.dirname(str(files[0])))
    if manifest is None:
        raise DataError(f"{os.path.dirname(str(files[0]))}: no {MANIFEST} beside the records")
    return manifest
