"""Read and inspect one temporal chip (T monthly images + target) with tifffile; no TensorFlow.

Runs in the worker processes of the temporal converter (``images.map_images``).
A chip is a ``ChipSpec``:

* ``kind="biomassters"``: ``files`` holds, per month, one path (or None when
  the file is absent) per sensor of ``sensors`` (BioMassters: S1 [H, W, 4]
  float32 with -9999 = no data, S2 [H, W, 11] uint16); the bands of the month
  are the sensors' bands concatenated in that order. A sensor file that is
  absent makes its bands missing for that month.
* ``kind="stack"``: ``files`` is one path of a [T, H, W, C] array (a TIFF or a
  ``.npy``); ``missing_value`` (and NaN) marks a missing value.

A month is present when any of its values is. ``inspect_task`` reads a chip
once and returns its problems, shape, properties and partial statistics;
``load_task`` reads it again for writing.
"""
import functools
import os
from typing import NamedTuple

import numpy as np

from foldnet.raster.tiff import BadTile, band_partials, outcome, read_tiff


class Sensor(NamedTuple):
    name: str  # "S1"
    bands: tuple  # band names in file order
    missing_value: object  # value of a missing pixel (None: only an absent file is missing)


class ChipSpec(NamedTuple):
    id: str
    kind: str  # "biomassters" | "stack"
    files: tuple  # biomassters: per month a tuple of paths (None = absent) per sensor; stack: (path,)
    target: object  # path of the target TIFF, None for a test chip
    sensors: tuple  # biomassters: Sensor per file of a month; stack: one Sensor (all bands)
    n_months: int
    seed: int = 0


class ChipInfo(NamedTuple):
    problems: list
    shape: tuple  # (T, H, W, C)
    props: dict  # n_months_present, missing_share, target_mean (train)
    stats: list  # training chips: partial statistics per band (seg_tiles.band_partials + missing)
    target_stats: list  # training chips: partial statistics of the target (one entry)


def _channels_last(arr, n_bands, name):
    if arr.ndim == 2 and n_bands == 1:
        return arr[:, :, None]
    if arr.ndim == 3 and arr.shape[-1] != n_bands and arr.shape[0] == n_bands:
        return np.moveaxis(arr, 0, -1)  # band-interleaved (planar) file
    if arr.ndim != 3 or arr.shape[-1] != n_bands:
        raise BadTile(f"{name}: array of shape {arr.shape}, expected [H, W, {n_bands}]")
    return arr


def _missing(arr, missing_value):
    miss = ~np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else np.zeros(arr.shape, bool)
    if missing_value is not None:
        miss |= arr == missing_value
    return miss


def _read_target(path):
    t = read_tiff(path)
    if t.ndim == 3 and 1 in (t.shape[0], t.shape[-1]):
        t = t.reshape(t.shape[:2] if t.shape[-1] == 1 else t.shape[1:])
    if t.ndim != 2:
        raise BadTile(f"{os.path.basename(path)}: target of shape {t.shape}, expected [H, W]")
    return t


def _read_biomassters(spec):
    """(image float32 [T, H, W, C], valid bool, problems)."""
    problems, planes, shape = [], [], None
    n_bands = sum(len(s.bands) for s in spec.sensors)
    for month, paths in enumerate(spec.files):
        parts = []
        for sensor, path in zip(spec.sensors, paths):
            if path is None:
                parts.append(None)
                continue
            try:
                arr = _channels_last(read_tiff(path), len(sensor.bands), os.path.basename(path))
            except BadTile as e:
                problems.append(str(e))
                parts.append(None)
                continue
            if shape is None:
                shape = arr.shape[:2]
            if arr.shape[:2] != shape:
                problems.append(f"{os.path.basename(path)}: shape {list(arr.shape[:2])}, other months of the chip "
                                f"are {list(shape)}")
                parts.append(None)
                continue
            parts.append(arr)
        planes.append(parts)
    if shape is None:
        problems.append("no month has any data (no readable S1/S2 file)" if not problems else "no readable month")
        return None, None, problems
    image = np.zeros((spec.n_months,) + tuple(shape) + (n_bands,), np.float32)
    valid = np.zeros(image.shape, bool)
    for month, parts in enumerate(planes):
        start = 0
        for sensor, arr in zip(spec.sensors, parts):
            stop = start + len(sensor.bands)
            if arr is not None:
                ok = ~_missing(arr, sensor.missing_value)
                image[month, :, :, start:stop] = np.where(ok, arr, 0)
                valid[month, :, :, start:stop] = ok
            start = stop
    return image, valid, problems


def _read_stack(spec):
    (path,) = spec.files
    sensor = spec.sensors[0]
    name = os.path.basename(path)
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadTile(f"cannot read {name} ({type(e).__name__}: {e})") from e
    else:
        arr = read_tiff(path)
    if arr.ndim == 3 and len(sensor.bands) == 1:
        arr = arr[..., None]
    if arr.ndim != 4:
        return None, None, [f"{name}: array of shape {arr.shape}, expected [T, H, W, C]"]
    problems = []
    if arr.shape[0] != spec.n_months:
        problems.append(f"{name}: {arr.shape[0]} months, expected {spec.n_months}")
    if arr.shape[-1] != len(sensor.bands):
        problems.append(f"{name}: {arr.shape[-1]} bands, expected {len(sensor.bands)}")
    if problems:
        return None, None, problems
    valid = ~_missing(arr, sensor.missing_value)
    return np.where(valid, arr, 0).astype(np.float32), valid, []


def read_chip(spec):
    """(image float32 [T, H, W, C], valid bool [T, H, W, C], months uint8 [T], target [H, W] or None,
    problems). image/valid are None when the chip is unusable."""
    reader = _read_biomassters if spec.kind == "biomassters" else _read_stack
    image, valid, problems = reader(spec)
    target = None
    if spec.target is not None:
        try:
            target = _read_target(spec.target)
        except BadTile as e:
            problems.append(str(e))
    if image is None:
        return None, None, None, target, problems
    months = valid.reshape(valid.shape[0], -1).any(axis=1).astype(np.uint8)
    if not months.any():
        problems.append("no month has any data (every value is missing)")
    if target is not None and target.shape != image.shape[1:3]:
        problems.append(f"target {os.path.basename(spec.target)} shape {list(target.shape)} != image shape "
                        f"{list(image.shape[1:3])}")
    return image, valid, months, target, problems


def target_valid(target):
    t = np.asarray(target, np.float64)
    return np.isfinite(t) & (t >= 0)


def inspect_chip(spec):
    """ChipInfo of one chip (problems listed, not raised)."""
    image, valid, months, target, problems = read_chip(spec)
    if image is None or problems:
        return ChipInfo(problems, None if image is None else image.shape, {}, [], [])
    props = {"n_months_present": int(months.sum()), "missing_share": 1.0 - float(valid.mean())}
    if target is None:
        return ChipInfo(problems, image.shape, props, [], [])
    ok = target_valid(target)
    props["target_mean"] = float(target[ok].mean()) if ok.any() else None
    props["target_valid_share"] = float(ok.mean())
    rng = np.random.default_rng(spec.seed)
    t, h, w, c = image.shape
    flat = image.reshape(t * h, w, c)
    miss = ~valid.reshape(t * h, w, c)
    stats = band_partials(flat, miss, None, rng)
    for b, part in enumerate(stats):
        part["missing"] = int(miss[:, :, b].size - part["count"])
    tgt = np.asarray(target, np.float32)[:, :, None]
    target_stats = band_partials(tgt, ~ok[:, :, None], None, rng)
    target_stats[0]["missing"] = int((~ok).sum())
    target_stats[0]["above_400"] = int((tgt[ok[:, :, None]] > 400).sum())
    return ChipInfo(problems, image.shape, props, stats, target_stats)


def load_chip(spec):
    """(image, valid, months, target or None) of a chip that passed inspection."""
    image, valid, months, target, problems = read_chip(spec)
    if problems:
        raise BadTile("; ".join(problems))
    return image, valid, months, target


# (True, ChipInfo) or (False, reason); (True, (image, valid, months, target)) or (False, reason)
inspect_task = functools.partial(outcome, inspect_chip)
load_task = functools.partial(outcome, load_chip)
