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

A month is present when any of its values is. Per sensor, a month is
present when its file is there, has a valid value and is not blank: a
sensor with a ``cloud_band`` (BioMassters S2: CLP, the 11th band, 0..100
cloud probability in valid pixels) is blank when every other band is 0
everywhere or the cloud band is >= ``cloud_nodata`` (254) everywhere; a
blank month's bands are marked not valid (stored as 0, like an absent file).
``inspect_task`` reads a chip
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
    dtype: str = "float32"  # storage dtype of its bands in the records (temporal records.STORAGE_DTYPES)
    cloud_band: object = None  # index of a cloud-probability band (blank months: see module doc)
    cloud_nodata: float = 254.0


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


def is_blank(arr, sensor):
    """Whether a month's array of ``sensor`` (with a cloud band) holds no usable view: every other band
    0 everywhere, or the cloud band >= ``cloud_nodata`` everywhere."""
    if sensor.cloud_band is None:
        return False
    others = np.delete(arr, sensor.cloud_band, axis=-1)
    return bool(not others.any() or (arr[..., sensor.cloud_band] >= sensor.cloud_nodata).all())


def _read_biomassters(spec):
    """(image float32 [T, H, W, C], valid bool, sensor_months uint8 [T, S], blank uint8 [T, S], problems)."""
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
        return None, None, None, None, problems
    image = np.zeros((spec.n_months,) + tuple(shape) + (n_bands,), np.float32)
    valid = np.zeros(image.shape, bool)
    present = np.zeros((spec.n_months, len(spec.sensors)), np.uint8)
    blank = np.zeros_like(present)
    for month, parts in enumerate(planes):
        start = 0
        for s, (sensor, arr) in enumerate(zip(spec.sensors, parts)):
            stop = start + len(sensor.bands)
            if arr is not None and is_blank(arr, sensor):
                blank[month, s] = 1
            elif arr is not None:
                ok = ~_missing(arr, sensor.missing_value)
                image[month, :, :, start:stop] = np.where(ok, arr, 0)
                valid[month, :, :, start:stop] = ok
                present[month, s] = ok.any()
            start = stop
    return image, valid, present, blank, problems


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
        return None, None, None, None, problems
    valid = ~_missing(arr, sensor.missing_value)
    present = valid.reshape(valid.shape[0], -1).any(axis=1).astype(np.uint8)[:, None]
    return np.where(valid, arr, 0).astype(np.float32), valid, present, np.zeros_like(present), []


class Chip(NamedTuple):
    """A chip as read: image float32 [T, H, W, C], valid bool [T, H, W, C], months uint8 [T] (any value
    present), sensor_months uint8 [T, S] (per sensor: usable data), blank uint8 [T, S] (file there but
    blank), target [H, W] or None."""
    image: np.ndarray
    valid: np.ndarray
    months: np.ndarray
    sensor_months: np.ndarray
    blank: np.ndarray
    target: object


def read_chip(spec):
    """(Chip or None when the chip is unusable, target or None, problems)."""
    reader = _read_biomassters if spec.kind == "biomassters" else _read_stack
    image, valid, present, blank, problems = reader(spec)
    target = None
    if spec.target is not None:
        try:
            target = _read_target(spec.target)
        except BadTile as e:
            problems.append(str(e))
    if image is None:
        return None, target, problems
    months = valid.reshape(valid.shape[0], -1).any(axis=1).astype(np.uint8)
    if not months.any():
        problems.append("no month has any data (every value is missing)")
    if target is not None and target.shape != image.shape[1:3]:
        problems.append(f"target {os.path.basename(spec.target)} shape {list(target.shape)} != image shape "
                        f"{list(image.shape[1:3])}")
    return Chip(image, valid, months, present, blank, target), target, problems


def target_valid(target):
    t = np.asarray(target, np.float64)
    return np.isfinite(t) & (t >= 0)


def inspect_chip(spec):
    """ChipInfo of one chip (problems listed, not raised)."""
    chip, target, problems = read_chip(spec)
    if chip is None or problems:
        return ChipInfo(problems, None if chip is None else chip.image.shape, {}, [], [])
    image, valid = chip.image, chip.valid
    props = {"n_months_present": int(chip.months.sum())}
    for s, sensor in enumerate(spec.sensors):
        props[f"months_{sensor.name}"] = int(chip.sensor_months[:, s].sum())
        props[f"blank_{sensor.name}"] = int(chip.blank[:, s].sum())
    props["missing_share"] = 1.0 - float(valid.mean())
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
    """The ``Chip`` of a chip that passed inspection."""
    chip, _, problems = read_chip(spec)
    if problems:
        raise BadTile("; ".join(problems))
    return chip


# (True, ChipInfo) or (False, reason); (True, Chip) or (False, reason)
inspect_task = functools.partial(outcome, inspect_chip)
load_task = functools.partial(outcome, load_chip)
