"""Read and inspect one multispectral tile (bands + mask) with tifffile.

Runs in the worker processes of the segmentation converter (through
``images.map_images``), so this module must never import TensorFlow.

A tile is described by a ``TileSpec``: its band files (one multi-band TIFF,
or one single-band TIFF per band), its mask file (None for test tiles) and
the layout's band semantics (``Bands``). ``inspect_task`` reads a tile once
and returns everything the converter needs before it writes anything: the
problems of the tile, its shape, per-tile properties (positive / missing /
cloud / water / DEM-missing shares), partial band statistics and a small
embedding for near-duplicate grouping. ``load_task`` reads it again for
writing: (image [H, W, C], mask [H, W] uint8 or None, valid [H, W] bool).
"""
import functools
import math
import os
from typing import NamedTuple

import numpy as np

EMBED_SIZE = 16  # embedding: each chosen band block-averaged to EMBED_SIZE x EMBED_SIZE
FLOAT_SAMPLE = 2048  # float bands: pixels per tile and band kept for the quantile sample


class Bands(NamedTuple):
    """Band semantics of a layout."""

    names: tuple  # one name per band, in file order
    missing_value: object  # value marking a missing pixel (None: nothing is missing)
    valid_bands: tuple  # indices of the bands whose missing values make a pixel invalid
    qa: int = -1  # index of a QA cloud band (0 = clear), -1 if none
    dem: int = -1  # index of a DEM band (<= 0 is water), -1 if none
    embed_bands: tuple = ()  # indices of the bands of the near-duplicate embedding (empty: valid_bands)


class TileSpec(NamedTuple):
    id: str
    band_files: tuple  # one multi-band file, or one file per band
    mask_file: object  # None for a test tile
    bands: Bands
    seed: int = 0  # seeds the float quantile sample


class TileInfo(NamedTuple):
    problems: list  # messages; the tile is unusable if non-empty
    shape: tuple  # (H, W, C) as read
    dtype: str
    props: dict  # positive_share (None for test), missing_share, and layout extras
    stats: list  # training tiles, per band: dict(count, missing, sum, sumsq, min, max, values, counts)
    embedding: object  # training tiles: float32 unit vector (zeros if the chosen bands are flat or missing)


class BadTile(Exception):
    pass


# Largest TIFF read, in values (pixels x bands), checked on its header before any pixel is read: a header
# claiming 100000 x 100000 x 7 ended in an out-of-memory error naming no file. 2**28 values are 1 GiB of
# float32, ~300 real Kelp Wanted tiles (350 x 350 x 7) in one file.
MAX_TIFF_VALUES = 2**28


def read_tiff(path, max_values=MAX_TIFF_VALUES):
    """The array of a TIFF file (first series). Raises BadTile (also for a header claiming more than
    ``max_values`` values)."""
    import tifffile

    name = os.path.basename(path)
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(tif.series[0].shape) if tif.series else ()
            n_values = math.prod(int(n) for n in shape)
            if max_values and n_values > max_values:
                raise BadTile(f"TIFF {name}: its header claims {'x'.join(map(str, shape))} = {n_values:,} values, "
                              f"more than the {max_values:,} this tool reads from one file; refused before reading")
            arr = tif.asarray()
    except FileNotFoundError as e:
        raise BadTile(f"file not found: {name}") from e
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as e:  # tifffile's errors
        raise BadTile(f"cannot read TIFF {name} ({type(e).__name__}: {e})") from e
    if arr.size == 0:  # tifffile logs a corrupt header and returns an empty array
        raise BadTile(f"cannot read TIFF {name} (no image data)")
    return arr


def read_bands(band_files, n_bands):
    """[H, W, C] of one multi-band TIFF (pixel- or band-interleaved) or of one TIFF per band."""
    if len(band_files) == 1:
        arr = read_tiff(band_files[0])
        if arr.ndim == 2:
            arr = arr[:, :, None]
        elif arr.ndim == 3 and arr.shape[-1] != n_bands and arr.shape[0] == n_bands:
            arr = np.moveaxis(arr, 0, -1)  # band-interleaved (planar) file
        elif arr.ndim != 3:
            raise BadTile(f"{band_files[0]}: {arr.ndim}-D array {arr.shape}, expected [H, W, bands]")
        return arr
    planes = [read_tiff(p) for p in band_files]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1 or any(p.ndim != 2 for p in planes):
        raise BadTile("band files differ in shape or are not single-band: "
                      + ", ".join(f"{f} {p.shape}" for f, p in zip(band_files, planes)))
    dtypes = {p.dtype for p in planes}
    if len(dtypes) > 1:
        raise BadTile(f"band files differ in dtype: {sorted(str(d) for d in dtypes)}")
    return np.stack(planes, axis=-1)


def missing_of(image, bands):
    """[H, W, C] bool: the pixel of that band is missing."""
    if bands.missing_value is None:
        return np.zeros(image.shape, bool)
    if np.issubdtype(image.dtype, np.floating):
        return np.isnan(image) | (image == bands.missing_value)
    return image == bands.missing_value


def valid_of(missing, bands):
    """[H, W] bool: no band of ``bands.valid_bands`` is missing."""
    return ~missing[:, :, list(bands.valid_bands)].any(axis=-1)


def read_tile(spec):
    """(image [H, W, C], mask [H, W] or None) as read."""
    image = read_bands(spec.band_files, len(spec.bands.names))
    mask = None
    if spec.mask_file is not None:
        mask = read_tiff(spec.mask_file)
        if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
            mask = mask.reshape(mask.shape[:2] if mask.shape[-1] == 1 else mask.shape[1:])
    return image, mask


def load_tile(spec):
    """(image [H, W, C], mask [H, W] or None, valid bool [H, W]) of a tile that passed inspection."""
    image, mask = read_tile(spec)
    return image, mask, valid_of(missing_of(image, spec.bands), spec.bands)


def mask_problems(mask, shape):
    problems = []
    if mask.shape != tuple(shape[:2]):
        problems.append(f"mask shape {mask.shape} != image shape {tuple(shape[:2])}")
    elif not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        problems.append(f"mask dtype {mask.dtype} is not an integer type")
    else:
        values = np.unique(mask)
        bad = values[(values != 0) & (values != 1)]
        if len(bad):
            problems.append(f"mask is not binary: values {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''}")
    return problems


def _exact_ints(dtype):
    return np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize <= 2


def _partial_of_hist(hist, low):
    """Partial statistics from one band's dense histogram (index = value - low), kept sparse."""
    levels = np.flatnonzero(hist)
    n = int(hist.sum())
    out = {"count": n, "sum": 0.0, "sumsq": 0.0, "min": None, "max": None, "values": None, "counts": None}
    if n == 0:
        return out
    counts = hist[levels]
    vals = (levels + low).astype(np.float64)
    out.update(sum=float(np.dot(vals, counts)), sumsq=float(np.dot(vals * vals, counts)), min=float(vals[0]),
               max=float(vals[-1]), values=levels + low, counts=counts)
    return out


def band_partials(image, missing, bands, rng):
    """Per band: partial statistics of the values that are not missing.

    Integer bands of up to 16 bits: an exact histogram of every value, counted
    for all bands in one pass (no sort), from which the sums follow exactly.
    Other dtypes: exact sums, and a uniform sample of FLOAT_SAMPLE values
    weighted by the band's count for the quantiles.
    """
    c = image.shape[-1]
    if _exact_ints(image.dtype):
        info = np.iinfo(image.dtype)
        low, span = int(info.min), int(info.max) - int(info.min) + 1
        if image.dtype == np.int16:  # value - low as uint16 without widening: flip the sign bit
            shifted = image.view(np.uint16) ^ np.uint16(0x8000)
        else:
            shifted = image.astype(np.int32) - low if low else image
        planes = np.ascontiguousarray(np.moveaxis(shifted, -1, 0)).reshape(c, -1)
        hist = np.stack([np.bincount(planes[b], minlength=span) for b in range(c)])
        mv = bands.missing_value
        if mv is not None and float(mv).is_integer() and info.min <= mv <= info.max:
            hist[:, int(mv) - low] = 0  # the missing value's bin holds exactly the missing pixels
        return [_partial_of_hist(hist[b], low) for b in range(c)]
    out = []
    for b in range(c):
        values = image[:, :, b][~missing[:, :, b]]
        n = int(values.size)
        part = {"count": n, "sum": 0.0, "sumsq": 0.0, "min": None, "max": None, "values": None, "counts": None}
        if n:
            v64 = values.astype(np.float64)
            take = v64 if n <= FLOAT_SAMPLE else rng.choice(v64, FLOAT_SAMPLE, replace=False)
            part.update(sum=float(v64.sum()), sumsq=float(np.dot(v64, v64)), min=float(v64.min()),
                        max=float(v64.max()), values=take, counts=np.full(len(take), n / len(take)))
        out.append(part)
    return out


def flat_signature(value, size):
    """A fixed pseudo-random vector of ``size`` values with standard deviation 1, the same for the
    same ``value`` (seeded by its float64 bytes): the embedding part of a flat (constant) thumbnail,
    so that two flat tiles of the same constant (e.g. all-water DEMs of 0) have cosine 1 and flat
    tiles of different constants, or a flat and a textured tile, are almost orthogonal."""
    seed = int.from_bytes(np.float64(round(float(value), 6)).tobytes(), "little")
    v = np.random.default_rng(seed).standard_normal(size)
    v -= v.mean()
    return v / v.std()


def embedding(image, missing, bands):
    """Unit-norm float32 vector: each embedding band block-averaged to EMBED_SIZE^2 (missing pixels
    take the band's mean), mean-centred and scaled to standard deviation 1 per band; a flat band
    (constant thumbnail) is ``flat_signature`` of its constant. Zeros where a band is all missing."""
    chosen = list(bands.embed_bands or bands.valid_bands)
    h, w = image.shape[:2]
    ys = np.linspace(0, h, EMBED_SIZE + 1).astype(int)
    xs = np.linspace(0, w, EMBED_SIZE + 1).astype(int)
    parts = []
    for b in chosen:
        band = image[:, :, b].astype(np.float64)
        ok = ~missing[:, :, b]
        if not ok.any():
            parts.append(np.zeros(EMBED_SIZE * EMBED_SIZE))
            continue
        band = np.where(ok, band, band[ok].mean())
        # block means through cumulative sums (any H, W >= EMBED_SIZE or smaller)
        cs = np.pad(band, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        sums = cs[ys[1:]][:, xs[1:]] - cs[ys[:-1]][:, xs[1:]] - cs[ys[1:]][:, xs[:-1]] + cs[ys[:-1]][:, xs[:-1]]
        area = np.maximum(np.outer(np.diff(ys), np.diff(xs)), 1)
        small = (sums / area).ravel()
        small_mean = float(small.mean())
        small -= small_mean
        std = small.std()
        parts.append(small / std if std > 1e-9 * max(1.0, abs(small_mean)) else flat_signature(small_mean, small.size))
    v = np.concatenate(parts).astype(np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def inspect_tile(spec):
    """TileInfo of one tile (problems listed, not raised, except unreadable files)."""
    bands = spec.bands
    image, mask = read_tile(spec)
    problems = []
    if image.shape[-1] != len(bands.names):
        problems.append(f"{image.shape[-1]} bands, expected {len(bands.names)} ({', '.join(bands.names)})")
        return TileInfo(problems, image.shape, str(image.dtype), {}, [], None)
    if mask is not None:
        problems += mask_problems(mask, image.shape)
    missing = missing_of(image, bands)
    valid = valid_of(missing, bands)
    if not valid.any():
        problems.append("all pixels missing (every pixel has a missing value in a band)")
    n_pix = valid.size
    props = {"positive_share": None if mask is None or problems else float(np.count_nonzero(mask)) / n_pix,
             "missing_share": 1.0 - float(np.count_nonzero(valid)) / n_pix}
    if bands.qa >= 0:
        props["cloud_share"] = float(np.count_nonzero(image[:, :, bands.qa] != 0)) / n_pix
    if bands.dem >= 0:
        dem, dem_missing = image[:, :, bands.dem], missing[:, :, bands.dem]
        props["water_share"] = float(np.count_nonzero((dem <= 0) & ~dem_missing)) / n_pix
        props["dem_missing_share"] = float(np.count_nonzero(dem_missing)) / n_pix
        # the Kelp Wanted winner's DEM shares (its eda.py, raw comparisons: -32768 counts as < 0)
        props["dem_nonpositive_share"] = float(np.count_nonzero((dem <= 0) | dem_missing)) / n_pix
        props["dem_negative_share"] = float(np.count_nonzero((dem < 0) | dem_missing)) / n_pix
        props["dem_zero_share"] = float(np.count_nonzero((dem == 0) & ~dem_missing)) / n_pix
    if mask is None:  # test tile: band statistics and grouping use training tiles only
        return TileInfo(problems, image.shape, str(image.dtype), props, [], None)
    rng = np.random.default_rng(spec.seed)
    stats = band_partials(image, missing, bands, rng)
    for b, part in enumerate(stats):
        part["missing"] = int(missing[:, :, b].size - part["count"])
    return TileInfo(problems, image.shape, str(image.dtype), props, stats, embedding(image, missing, bands))


# ---------------------------------------------------------------- worker entry points


def outcome(fn, spec):
    """(True, fn(spec)) or (False, reason) when the tile cannot be read."""
    try:
        return True, fn(spec)
    except BadTile as e:
        return False, str(e)


# (True, TileInfo) or (False, reason)
inspect_task = functools.partial(outcome, inspect_tile)
# (True, (image, mask, valid)) or (False, reason)
load_task = functools.partial(outcome, load_tile)
