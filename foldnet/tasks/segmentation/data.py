"""tf.data pipelines over segmentation records (``seg_records``), core TF ops only.

Training (``train_dataset``): parallel interleaved reads -> optional cache
of the serialized tiles -> shuffle -> repeat -> weighted tile sampler
(optional) -> parse -> features (``spectral.Features``: normalisation,
indices, masking, missing fill) -> paired augmentation of image, mask and
valid mask -> padding to a multiple of 32 (padding is invalid) -> batch.
Endless: an epoch is ``steps_per_epoch(tiles_per_epoch, batch_size)`` steps.

Weighted tile sampler: tile i is drawn with probability proportional to
``w_i = max(1 + sum_k coef_k * x_ik, floor)``, ``x_ik`` the tile's value of
property k in ``tiles.csv`` (``positive_share``, ``cloud_share``,
``water_share``, ``missing_share``, ... and the derived ``has_positive``);
e.g. ``{has_positive: 2, positive_share: 5, cloud_share: -1}``. It is
streaming rejection sampling: the shuffled, repeated stream keeps tile i
with probability ``w_i / max(w)``, so draws follow the weights (with
replacement across passes) at a memory cost independent of the dataset;
the price is reading ``max(w) / mean(w)`` tiles per kept tile (parsing only:
rejected tiles are never decoded or augmented). ``cache=True`` keeps the
serialized tiles in memory so the extra reads cost nothing after the first
pass.

Targets are float32 ``[H, W, 2]`` (mask, valid) or ``[H, W, 3]`` with the
tile's group index (``group_index``) for the location-weighted IoU; see
``seg_losses``.

Evaluation (``eval_dataset``) and prediction (``tta_dataset``) read in file
order. ``tta_dataset`` expands every tile to its TTA views in one pass
(identity first); ``merge_tta`` applies each view's inverse transform to its
predicted map, averages, and crops the padding away.
"""
import math

import numpy as np
import tensorflow as tf

from foldnet.tasks.classification import data
from foldnet.tasks.segmentation import records as seg_records
from foldnet.raster import spectral
from foldnet.core.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE

TTA_VIEWS = ("identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270", "transpose")
_SQUARE_ONLY = ("rot90", "rot270", "transpose")
_INVERSE = {"identity": "identity", "flip_lr": "flip_lr", "flip_ud": "flip_ud", "rot90": "rot270",
            "rot180": "rot180", "rot270": "rot90", "transpose": "transpose"}


# ---------------------------------------------------------------- views (TTA) and their inverses


def apply_view(x, name):
    """View ``name`` of ``x`` [..., H, W, C] (the last three axes are rows, columns, channels)."""
    if name == "identity":
        return x
    if name == "flip_lr":
        return tf.reverse(x, [-2])
    if name == "flip_ud":
        return tf.reverse(x, [-3])
    if name in ("rot90", "rot180", "rot270"):
        return tf.image.rot90(x, k={"rot90": 1, "rot180": 2, "rot270": 3}[name])
    if name == "transpose":
        rank = x.shape.rank
        return tf.transpose(x, list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1])
    raise ValueError(f"unknown TTA view {name!r}; views: {', '.join(TTA_VIEWS)}")


def check_views(names, height, width):
    names = list(names)
    unknown = [n for n in names if n not in TTA_VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {unknown}; views: {', '.join(TTA_VIEWS)}")
    if not names or names[0] != "identity":
        raise ConfigError(f"TTA views must start with identity, got {names}")
    if height != width and any(n in _SQUARE_ONLY for n in names):
        raise ConfigError(f"TTA views {[n for n in names if n in _SQUARE_ONLY]} need square tiles, got {height}x{width}")
    return names


def invert_tta(predictions, names, height=None, width=None, multiple=32):
    """Every TTA view's predicted map back in the original frame, padding cropped.

    predictions: ``[n * T, Hp, Wp]`` or ``[n * T, Hp, Wp, 1]`` as ``tta_dataset`` orders them
    (tile i at rows i*T .. i*T+T-1, identity first). names: the T view names.
    height, width: crop the padding back to this size (``spectral.crop_padding``).
    Returns float32 ``[T, n, H, W]`` (the task seam's ``outputs`` layout).
    """
    x = tf.convert_to_tensor(predictions, tf.float32)
    names = list(names)
    if x.shape.rank == 3:
        x = x[..., tf.newaxis]
    if x.shape.rank != 4 or x.shape[-1] != 1:
        raise ValueError(f"TTA predictions must be [n * T, H, W(, 1)] maps, got shape {x.shape}")
    x = tf.reshape(x, [-1, len(names)] + x.shape[1:].as_list())
    views = []
    for k, name in enumerate(names):
        view = apply_view(x[:, k], _INVERSE[name])
        if height is not None:
            view = spectral.crop_padding(view, height, width if width is not None else height, multiple)
        views.append(view[..., 0])
    return tf.stack(views)


def merge_tta(predictions, names, height=None, width=None, weights=None, multiple=32):
    """The (weighted) mean over views of ``invert_tta``: float32 ``[n, H, W]``."""
    views = invert_tta(predictions, names, height, width, multiple)
    w = np.ones(len(names)) if weights is None else np.asarray(weights, np.float64)
    w = tf.constant((w / w.sum()).astype(np.float32))
    return tf.tensordot(w, views, axes=1)


# ---------------------------------------------------------------- paired augmentation


def _random_affine(side_h, side_w, scale, rotate, shift):
    """8-parameter projective transform: zoom log-uniform in [1/(1+scale), 1+scale], rotation
    uniform in +-rotate degrees, shift uniform in +-shift of the side (output -> input)."""
    log_zoom = math.log1p(scale)
    zoom = tf.exp(tf.random.uniform([], -log_zoom, log_zoom)) if scale else tf.constant(1.0)
    theta = tf.random.uniform([], -1.0, 1.0) * math.radians(rotate)
    move = tf.random.uniform([2], -1.0, 1.0) * shift * tf.constant([side_w, side_h], tf.float32)
    cx, cy = (side_w - 1) / 2.0, (side_h - 1) / 2.0
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    ox, oy = cx + move[0], cy + move[1]
    return tf.stack([cos, -sin, cx - cos * ox + sin * oy, sin, cos, cy - sin * ox - cos * oy, 0.0, 0.0])[tf.newaxis]


def _reflect(index, size):
    """Mirror out-of-range integer indices back inside [0, size) (edge repeated: ``d c b a | a b c d``)."""
    index = tf.where(index < 0, -index - 1, index)
    index = tf.where(index >= size, 2 * size - index - 1, index)
    return tf.clip_by_value(index, 0, size - 1)


def warp(x, transform, nearest=False):
    """Resample ``x`` [H, W, C] through ``transform`` (8 parameters, output -> input pixel
    coordinates, as ``ImageProjectiveTransformV3`` takes them, affine part only), pixels from
    outside mirrored. Bilinear, or nearest (for masks).

    Gathers whole channel vectors at once (one index computation per pixel, not per
    channel value): several times faster than ImageProjectiveTransformV3 on many channels.
    """
    height, width, channels = x.shape
    t = tf.reshape(tf.cast(transform, tf.float32), [-1])
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    src_x = t[0] * cols + t[1] * rows + t[2]
    src_y = t[3] * cols + t[4] * rows + t[5]
    flat = tf.reshape(x, [height * width, channels])

    def at(iy, ix):
        return tf.gather(flat, tf.reshape(_reflect(iy, height) * width + _reflect(ix, width), [-1]))

    if nearest:
        out = at(tf.cast(tf.round(src_y), tf.int32), tf.cast(tf.round(src_x), tf.int32))
    else:
        x0, y0 = tf.floor(src_x), tf.floor(src_y)
        wx, wy = tf.reshape(src_x - x0, [-1, 1]), tf.reshape(src_y - y0, [-1, 1])
        ix, iy = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
        top = at(iy, ix) * (1.0 - wx) + at(iy, ix + 1) * wx
        bottom = at(iy + 1, ix) * (1.0 - wx) + at(iy + 1, ix + 1) * wx
        out = top * (1.0 - wy) + bottom * wy
    return tf.reshape(out, [height, width, channels])


_warp_compiled = tf.function(warp, jit_compile=True)


def _rotation_matrices(side):
    """Output -> input pixel maps (3x3) of ``tf.image.rot90`` by k = 0..3 on a square of ``side``."""
    r1 = np.array([[0.0, -1.0, side - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return np.stack([np.linalg.matrix_power(r1, k) for k in range(4)]).astype(np.float32)


def random_flip_turn(height, width, flip=True, rot90=True):
    """3x3 output -> input pixel map of random flips (left-right, up-down, each with probability 1/2) then a
    random k*90-degree turn (k uniform in 0..3; ``rot90`` only for square tiles)."""
    matrix = tf.eye(3)
    if flip:
        lr, ud = tf.random.uniform([]) < 0.5, tf.random.uniform([]) < 0.5
        sx, tx = tf.where(lr, -1.0, 1.0), tf.where(lr, width - 1.0, 0.0)
        sy, ty = tf.where(ud, -1.0, 1.0), tf.where(ud, height - 1.0, 0.0)
        matrix = tf.reshape(tf.stack([sx, 0.0, tx, 0.0, sy, ty, 0.0, 0.0, 1.0]), [3, 3])
    if rot90:
        k = tf.random.uniform([], 0, 4, tf.int32)
        matrix = matrix @ tf.gather(tf.constant(_rotation_matrices(height)), k)
    return matrix


def paired_augment(image, mask, valid, flip=True, rot90=True, scale=0.0, rotate=0.0, shift=0.0):
    """The same random geometric transform of ``image`` [H, W, C] (float), ``mask`` and ``valid`` [H, W].

    flip: left-right and up-down, each with probability 1/2. rot90: k*90 degrees,
    k uniform in 0..3 (square tiles only). scale/rotate/shift: one small affine
    map (0: off), bilinear for the image, nearest for mask and valid, pixels
    from outside mirrored. Returns (image, mask float32, valid float32); the image
    is float32, or keeps its dtype when there is no affine map (whole pixels move).

    Flips, rotation and affine map are composed into one pixel map, applied by one
    XLA-compiled ``warp`` (flips and 90-degree turns land on whole pixels, so they
    are exact, also under bilinear interpolation); without the affine map, the
    flips and turns are a transpose and reversals instead (``_apply_dihedral``).
    """
    affine = bool(scale or rotate or shift)
    image = tf.cast(image, tf.float32) if affine else tf.convert_to_tensor(image)
    height, width, _ = image.shape
    maps = tf.stack([tf.cast(mask, tf.float32), tf.cast(valid, tf.float32)], -1)
    rot90 = rot90 and height == width
    if not (flip or rot90 or affine):
        return image, maps[..., 0], maps[..., 1]
    matrix = random_flip_turn(height, width, flip, rot90)
    if affine:
        t = _random_affine(float(height), float(width), float(scale), float(rotate), float(shift))[0]
        matrix = matrix @ tf.reshape(tf.concat([t[:6], [0.0, 0.0, 1.0]], 0), [3, 3])
    if not affine:  # whole-pixel map: a transpose and reversals, no resampling
        maps = _apply_dihedral(maps, matrix)
        return _apply_dihedral(image, matrix), maps[..., 0], maps[..., 1]
    transform = tf.concat([tf.reshape(matrix[:2], [6]), [0.0, 0.0]], 0)[tf.newaxis]
    image = _warp_compiled(image, transform)
    maps = _warp_compiled(maps, transform, nearest=True)
    return image, maps[..., 0], maps[..., 1]


def _apply_dihedral(x, matrix):
    """``warp`` of ``x`` [H, W, C] through a 3x3 output -> input pixel map made of flips and
    90-degree turns only (entries 0 / +-1 and whole-pixel offsets), as a transpose and axis
    reversals: the same values without a gather (2-5x faster on many channels)."""
    transposed = tf.not_equal(matrix[0, 1], 0.0)  # the source column follows the output row
    x = tf.cond(transposed, lambda: tf.transpose(x, [1, 0, 2]), lambda: x)
    reverse_rows = tf.where(transposed, matrix[0, 1], matrix[1, 1]) < 0
    reverse_cols = tf.where(transposed, matrix[1, 0], matrix[0, 0]) < 0
    x = tf.cond(reverse_rows, lambda: tf.reverse(x, [0]), lambda: x)
    return tf.cond(reverse_cols, lambda: tf.reverse(x, [1]), lambda: x)


# ---------------------------------------------------------------- sampler


def tile_weights(tiles, terms, floor=0.01):
    """Sampling weight of every row of ``tiles`` (a tiles.csv DataFrame): see module doc.

    Raises ConfigError naming unknown terms, DataError naming tiles with a missing value.
    """
    derived = {"has_positive": lambda t: (t["positive_share"] > 0).astype(float)}
    unknown = [k for k in terms if k not in tiles.columns and k not in derived]
    if unknown:
        known = sorted(set(tiles.columns) - {"id", "fold", "group"}) + sorted(derived)
        raise ConfigError(f"sampler terms {unknown} are not tile properties; known: {', '.join(known)}")
    weights = np.ones(len(tiles))
    problems = []
    for term, coef in terms.items():
        if isinstance(coef, bool) or not isinstance(coef, (int, float)):
            raise ConfigError(f"sampler term {term}: coefficient must be a number, got {coef!r}")
        values = np.asarray(tiles[term] if term in tiles.columns else derived[term](tiles), np.float64)
        bad = ~np.isfinite(values)
        problems += [f"tile {tid}: no value of {term}" for tid in tiles["id"][bad]]
        weights += float(coef) * np.where(bad, 0.0, values)
    if problems:
        raise DataError("tiles.csv has tiles without a sampler property", problems)
    return np.maximum(weights, float(floor))


def read_tiles_csv(manifest):
    """The manifest's tiles.csv (``manifest["tiles_csv"]``, relative to ``manifest["dir"]``) as a DataFrame."""
    import io

    import pandas as pd

    from foldnet.core import fileio

    name = manifest.get("tiles_csv")
    if not name:
        raise DataError(f"manifest in {manifest.get('dir')} has no tiles_csv (not a segmentation TFRecord directory?)")
    path = fileio.join(manifest["dir"], name)
    tiles = pd.read_csv(io.StringIO(fileio.read_text(path)), dtype={"id": str, "group": str})
    if "group" in tiles.columns:
        tiles["group"] = tiles["group"].fillna("")
    return tiles


def sampler_weights(tiles, folds, terms, floor=0.01):
    """(ids, weights) of the tiles of ``folds`` for ``train_dataset``'s sampler (``tile_weights``)."""
    part = tiles[tiles["fold"].isin(list(folds))].reset_index(drop=True)
    return part["id"].astype(str).tolist(), tile_weights(part, terms, floor)


def group_index(tiles):
    """{group: index} over the sorted distinct groups of tiles.csv (the location-IoU channel)."""
    return {g: k for k, g in enumerate(sorted(set(tiles["group"].astype(str))))}


def steps_per_epoch(tiles_per_epoch, batch_size):
    """Training steps of an epoch of ``tiles_per_epoch`` tiles (at least 1)."""
    return max(int(tiles_per_epoch) // int(batch_size), 1)


def _acceptance_table(ids, weights):
    weights = np.asarray(weights, np.float64)
    keys = tf.constant([str(i) for i in ids])
    values = tf.constant((weights / weights.max()).astype(np.float32))
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1.0)


# ---------------------------------------------------------------- pipelines


def _group_table(group_index):
    keys = tf.constant([str(k) for k in group_index])
    values = tf.constant([int(v) for v in group_index.values()], tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def _target(mask, valid, group=None):
    maps = [tf.cast(mask, tf.float32) * tf.cast(valid, tf.float32), tf.cast(valid, tf.float32)]
    if group is not None:
        maps.append(tf.fill(tf.shape(maps[0]), tf.cast(group, tf.float32)))
    return tf.stack(maps, -1)


def _group_of(ex, table):
    if table is None:
        return None
    group = table.lookup(ex["group"])
    tf.debugging.assert_non_negative(group, message="a tile's group is not in group_index")
    return group


def _pad_target(target, multiple):
    return spectral.pad_to_multiple(target, multiple, "CONSTANT", 0) if multiple else target


def _parser(features):
    return lambda s: seg_records.parse_example(s, features.shape, features.dtype)


def train_dataset(files, features, batch_size, tile_ids=None, weights=None, augment=None, cache=False,
                  shuffle_buffer=256, pad_multiple=32, group_index=None, seed=None, n_workers=1):
    """Endless batches of (features [B, Hp, Wp, F], target [B, Hp, Wp, 2|3]) for training.

    features: a ``spectral.Features``. tile_ids, weights: the weighted sampler
    (``tile_weights`` of the training tiles; None: every tile alike).
    augment: keyword arguments of ``paired_augment`` (None: flips and rot90).
    group_index: {group: index} adds the group channel to the target.
    """
    augment = {"flip": True, "rot90": True} if augment is None else dict(augment)
    files = list(files)
    parse = _parser(features)
    groups = _group_table(group_index) if group_index else None
    ds = data._read(files, deterministic=False)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=False)
    if weights is not None:
        table = _acceptance_table(tile_ids, weights)

        def keep(ex):
            p = table.lookup(ex["id"])
            tf.debugging.assert_non_negative(p, message="a training tile is not in the sampler's tiles")
            return tf.random.uniform([], seed=seed) < p

        ds = ds.filter(keep)

    # Flips and 90-degree turns move whole pixels and the features are per pixel: they
    # commute, so the raw bands are moved before the features (fewer, smaller channels).
    # A resampling (affine) map does not commute: it moves the features.
    raw_first = not (augment.get("scale") or augment.get("rotate") or augment.get("shift"))

    def make(ex):
        image, mask, valid = ex["image"], ex["mask"], ex["valid"]
        if raw_first:
            image, mask, valid = paired_augment(image, mask, valid, **augment)
            x = features(image, valid, pad_multiple)
        else:
            x, mask, valid = paired_augment(features(image, valid), mask, valid, **augment)
            x = spectral.pad_to_multiple(x, pad_multiple, "REFLECT") if pad_multiple else x
        return x, _pad_target(_target(mask, valid, _group_of(ex, groups)), pad_multiple)

    ds = ds.map(make, num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    return data._with_options(ds, shard_by_data=len(files) < n_workers)


def eval_dataset(files, features, batch_size, pad_multiple=32, group_index=None, cache=False):
    """Batches of (features, target) in file order (validation during fit)."""
    parse = _parser(features)
    groups = _group_table(group_index) if group_index else None

    def make(serialized):
        ex = parse(serialized)
        x = features(ex["image"], ex["valid"], pad_multiple)
        return x, _pad_target(_target(ex["mask"], ex["valid"], _group_of(ex, groups)), pad_multiple)

    ds = data._read(files, deterministic=True).map(make, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return (ds.cache() if cache else ds).prefetch(AUTOTUNE)


def tta_dataset(files, features, batch_size, views=("identity",), pad_multiple=32):
    """Batches of features ``[b * T, Hp, Wp, F]`` in file order, tile i's T views at rows
    i*T .. i*T+T-1 (identity first): all TTA views predicted in one pass; ``merge_tta``
    undoes them."""
    height, width = features.shape[:2]
    views = check_views(views, height, width)
    parse = _parser(features)

    def make(serialized):
        ex = parse(serialized)
        x = features(ex["image"], ex["valid"], pad_multiple)
        return tf.stack([apply_view(x, v) for v in views])

    ds = data._read(files, deterministic=True).map(make, num_parallel_calls=AUTOTUNE).batch(batch_size)
    ds = ds.map(lambda v: tf.reshape(v, [-1] + v.shape[2:].as_list()))
    return ds.prefetch(AUTOTUNE)


def predict_maps(model, files, features, batch_size, views=("identity",), pad_multiple=32):
    """Probability maps of every tile of ``files`` (file order), all views in one pass, each
    mapped back to the identity frame and cropped: float32 ``[T, n, H, W]``.

    Streams batch by batch (``predict_on_batch``); the maps of all tiles are kept.
    """
    height, width = features.shape[:2]
    views = check_views(views, height, width)
    out = []
    for batch in tta_dataset(files, features, batch_size, views, pad_multiple):
        pred = model.predict_on_batch(batch)
        out.append(invert_tta(pred, views, height, width, pad_multiple or 1).numpy())
    if not out:
        return np.zeros([len(views), 0, height, width], np.float32)
    return np.concatenate(out, axis=1)


def read_tiles(files, features, with_maps=True):
    """(ids, masks uint8 [n, H, W], valids uint8 [n, H, W], groups) of the records in file order
    (masks/valids None when ``with_maps`` is False)."""
    parse = _parser(features)
    ids, groups, masks, valids = [], [], [], []
    ds = data._read(files, deterministic=True).map(
        lambda s: {k: v for k, v in parse(s).items() if k != "image" and (with_maps or k not in ("mask", "valid"))},
        num_parallel_calls=AUTOTUNE)
    for batch in ds.batch(256).as_numpy_iterator():
        ids += [x.decode("utf-8") for x in batch["id"]]
        groups += [x.decode("utf-8") for x in batch["group"]]
        if with_maps:
            masks.append(batch["mask"])
            valids.append(batch["valid"])
    if not with_maps:
        return ids, None, None, groups
    h, w = features.shape[:2]
    empty = np.zeros([0, h, w], np.uint8)
    return ids, (np.concatenate(masks) if masks else empty), (np.concatenate(valids) if valids else empty), groups


def fit_index_ranges(files, features, n_tiles=64, quantiles=(0.01, 0.99)):
    """{index: (low, high)}: the quantiles of every index without a natural range over the
    kept (unmasked, not missing) pixels of the first ``n_tiles`` tiles of ``files``.

    Pass it as ``spectral.Features(..., index_ranges=...)``.
    """
    names = [n for n in features.indices if not spectral.INDICES[n].natural]
    if not names:
        return {}
    parse = _parser(features)
    values = {n: [] for n in names}
    position = [features.indices.index(n) for n in names]

    def raw(serialized):
        ex = parse(serialized)
        planes, oks = features.raw_indices(ex["image"], ex["valid"])
        return tf.stack([planes[k] for k in position], -1), tf.stack([oks[k] for k in position], -1)

    for idx, ok in data._read(files, deterministic=True).take(n_tiles).map(raw).as_numpy_iterator():
        for k, n in enumerate(names):
            values[n].append(idx[..., k][ok[..., k]])
    out = {}
    for n in names:
        v = np.concatenate(values[n]) if values[n] else np.zeros(0)
        if v.size:
            low, high = np.quantile(v, quantiles)
            out[n] = (float(low), float(high)) if high > low else spectral.INDICES[n].range
        else:
            out[n] = spectral.INDICES[n].range
    return out
