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
``water_share``, ``missing_share``, ... and the derived ``has_positive`` and
``qa_ok``), or ``1 - x_ik`` for a term ``1-<property>``;
e.g. ``{has_positive: 2, positive_share: 5, cloud_share: -1}``. With
``minmax: true`` (the Kelp Wanted winner's form) ``w_i = sum_k coef_k x_ik``
min-max scaled to [0, 1] over all training tiles. Tiles above
``max_positive_share`` get weight 0. It is
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
import os

import numpy as np
import tensorflow as tf

from foldnet.core.errors import ConfigError, DataError
from foldnet.io import tfdata
from foldnet.raster import spectral
from foldnet.raster.views import apply_view, check_views, invert_tta, paired_augment
from foldnet.tasks.segmentation import records as seg_records

AUTOTUNE = tf.data.AUTOTUNE


# ---------------------------------------------------------------- sampler


SAMPLER_OPTIONS = ("minmax",)
# 1e-10: the winner's guard in the min-max of its weights (datamodule._calculate_image_weights)
MINMAX_EPS = 1e-10


def tile_weights(tiles, terms, floor=0.01):
    """Sampling weight of every row of ``tiles`` (a tiles.csv DataFrame): see module doc.

    A term ``1-name`` takes ``1 - name``. ``minmax: true`` gives the Kelp Wanted winner's form:
    ``w = sum_k coef_k x_k`` min-max scaled over the rows, ``(w - min) / (max - min + 1e-10)``
    (no intercept, no floor: the lowest row gets 0 and is never drawn).
    Raises ConfigError naming unknown terms, DataError naming tiles with a missing value.
    """
    terms = dict(terms)
    minmax = terms.pop("minmax", False)
    if not isinstance(minmax, bool):
        raise ConfigError(f"sampler option minmax must be true or false, got {minmax!r}")
    derived = {"has_positive": lambda t: (t["positive_share"] > 0).astype(float)}
    if "cloud_share" in tiles.columns:
        derived["qa_ok"] = lambda t: (t["cloud_share"] == 0).astype(float)
    names = {k: k[2:] if k.startswith("1-") else k for k in terms}
    unknown = [k for k, n in names.items() if n not in tiles.columns and n not in derived]
    if unknown:
        known = sorted(set(tiles.columns) - {"id", "fold", "group", "split"}) + sorted(derived)
        raise ConfigError(f"sampler terms {unknown} are not tile properties (or 1-<property>); known: "
                          f"{', '.join(known)}; options: {', '.join(SAMPLER_OPTIONS)}")
    weights = np.zeros(len(tiles)) if minmax else np.ones(len(tiles))
    problems = []
    for term, coef in terms.items():
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not np.isfinite(coef):
            raise ConfigError(f"sampler term {term}: coefficient must be a finite number, got {coef!r}")
        name = names[term]
        values = np.asarray(tiles[name] if name in tiles.columns else derived[name](tiles), np.float64)
        bad = ~np.isfinite(values)
        problems += [f"tile {tid}: no value of {name}" for tid in tiles["id"][bad]]
        values = np.where(bad, 0.0, values)
        weights += float(coef) * (1.0 - values if term.startswith("1-") else values)
    if problems:
        raise DataError("tiles.csv has tiles without a sampler property", problems)
    if minmax:
        low = weights.min() if len(weights) else 0.0
        return (weights - low) / ((weights.max() - low if len(weights) else 0.0) + MINMAX_EPS)
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


def sampler_weights(tiles, folds, terms, floor=0.01, max_positive_share=1.0):
    """(ids, weights) of the tiles of ``folds`` for ``train_dataset``'s sampler (``tile_weights``).

    The weights are computed over every training tile of tiles.csv (all folds: the min-max of
    ``minmax`` spans them, as the winner's spans its whole metadata table), then the tiles of
    ``folds`` are picked. Tiles whose positive_share exceeds ``max_positive_share`` are left out
    before (weight 0: never drawn; the winner drops tiles with more than 40 % kelp).
    Raises ConfigError when no tile of ``folds`` can be drawn.
    """
    train = tiles[tiles["fold"] >= 0].reset_index(drop=True)
    kept = ~(train["positive_share"].to_numpy(np.float64) > float(max_positive_share))
    weights = np.zeros(len(train))
    weights[kept] = tile_weights(train[kept].reset_index(drop=True), terms or {}, floor)
    pick = train["fold"].isin(list(folds)).to_numpy()
    if not (weights[pick] > 0).any():
        raise ConfigError(f"the sampler gives every training tile of folds {sorted(folds)} weight 0 "
                          f"({int((~kept[pick]).sum())} of {int(pick.sum())} above max_positive_share "
                          f"{max_positive_share})")
    return train["id"][pick].astype(str).tolist(), weights[pick]


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


def record_parser(features):
    return lambda s: seg_records.parse_example(s, features.shape, features.dtype)


# Host memory bounds of one training pipeline (bench/bench_seg_memory.py): the shuffle buffer holds
# serialized raw tiles up to SHUFFLE_BUDGET_MB, one finished batch is prefetched, and tf.data's
# autotuner may buffer up to AUTOTUNE_RAM_MB.
SHUFFLE_BUDGET_MB = 128
PREFETCH_BATCHES = 1
AUTOTUNE_RAM_MB = 1024


def tile_mb(features):
    """MB of one serialized tile (raw bands + mask + valid), what the shuffle buffer holds."""
    height, width, channels = features.shape
    return height * width * (channels * np.dtype(features.dtype).itemsize + 2) / 2 ** 20


def shuffle_tiles(requested, features, budget_mb=None):
    """The shuffle buffer in tiles: ``requested``, at most ``budget_mb`` (default SHUFFLE_BUDGET_MB) of
    serialized tiles, at least 16."""
    budget_mb = SHUFFLE_BUDGET_MB if budget_mb is None else budget_mb
    return int(max(min(int(requested), budget_mb // tile_mb(features)), min(int(requested), 16)))


def train_dataset(files, features, batch_size, tile_ids=None, weights=None, augment=None, cache=False,
                  shuffle_buffer=256, pad_multiple=spectral.PAD_MULTIPLE, group_index=None, seed=None, n_workers=1):
    """Endless batches of (features [B, Hp, Wp, F], target [B, Hp, Wp, 2|3]) for training.

    features: a ``spectral.Features``. tile_ids, weights: the weighted sampler
    (``tile_weights`` of the training tiles; None: every tile alike).
    augment: keyword arguments of ``paired_augment`` (None: flips and rot90).
    group_index: {group: index} adds the group channel to the target.
    shuffle_buffer: tiles, capped at SHUFFLE_BUDGET_MB of serialized tiles (``shuffle_tiles``).
    """
    augment = {"flip": True, "rot90": True} if augment is None else dict(augment)
    files = list(files)
    parse = record_parser(features)
    groups = _group_table(group_index) if group_index else None
    ds = tfdata.read_records(files, deterministic=False)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_tiles(shuffle_buffer, features), seed=seed).repeat()
    ds = ds.map(tfdata.plain(parse), num_parallel_calls=AUTOTUNE, deterministic=False)
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
    # So do the value maps of map_aug (photometric, elastic, cutout): they act on the features' range.
    map_aug = augment.get("map_aug") or {}
    raw_first = not (augment.get("scale") or augment.get("rotate") or augment.get("shift")
                     or any(map_aug.get(k) for k in ("p", "photometric_p", "elastic_p", "cutout_p")))
    binary = map_aug.get("target_interp") == "bilinear"

    def make(ex):
        image, mask, valid = ex["image"], ex["mask"], ex["valid"]
        if raw_first:
            image, mask, valid = paired_augment(image, mask, valid, **augment)
            x = features(image, valid, pad_multiple)
        else:
            x, mask, valid = paired_augment(features(image, valid), mask, valid, value_range=features.value_range,
                                            **augment)
            mask = tf.cast(mask > 0.5, tf.float32) if binary else mask  # a bilinear mask, binarised
            x = spectral.pad_to_multiple(x, pad_multiple, "REFLECT") if pad_multiple else x
        return x, _pad_target(_target(mask, valid, _group_of(ex, groups)), pad_multiple)

    ds = ds.map(tfdata.plain(make), num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(PREFETCH_BATCHES)
    if AUTOTUNE_RAM_MB:
        opts = tf.data.Options()
        opts.autotune.ram_budget = int(AUTOTUNE_RAM_MB * 2 ** 20)
        ds = ds.with_options(opts)
    return tfdata.with_options(ds, shard_by_data=len(files) < n_workers)


def eval_dataset(files, features, batch_size, pad_multiple=spectral.PAD_MULTIPLE, group_index=None, cache=False):
    """Batches of (features, target) in file order (validation during fit)."""
    parse = record_parser(features)
    groups = _group_table(group_index) if group_index else None

    def make(serialized):
        ex = parse(serialized)
        x = features(ex["image"], ex["valid"], pad_multiple)
        return x, _pad_target(_target(ex["mask"], ex["valid"], _group_of(ex, groups)), pad_multiple)

    ds = tfdata.read_records(files, deterministic=True).map(tfdata.plain(make), num_parallel_calls=AUTOTUNE).batch(batch_size)
    return (ds.cache() if cache else ds).prefetch(AUTOTUNE)


def tta_dataset(files, features, batch_size, views=("identity",), pad_multiple=spectral.PAD_MULTIPLE):
    """Batches of features ``[b * T, Hp, Wp, F]`` in file order, tile i's T views at rows
    i*T .. i*T+T-1 (identity first): all TTA views predicted in one pass; ``merge_tta``
    undoes them."""
    height, width = features.shape[:2]
    views = check_views(views, height, width)
    parse = record_parser(features)

    def make(serialized):
        ex = parse(serialized)
        x = features(ex["image"], ex["valid"], pad_multiple)
        return tf.stack([apply_view(x, v) for v in views])

    ds = tfdata.read_records(files, deterministic=True).map(tfdata.plain(make), num_parallel_calls=AUTOTUNE).batch(batch_size)
    ds = ds.map(lambda v: tf.reshape(v, [-1] + v.shape[2:].as_list()))
    return ds.prefetch(AUTOTUNE)


def predict_maps(model, files, features, batch_size, views=("identity",), pad_multiple=spectral.PAD_MULTIPLE):
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
    parse = record_parser(features)
    ids, groups, masks, valids = [], [], [], []
    ds = tfdata.read_records(files, deterministic=True).map(
        tfdata.plain(lambda s: {k: v for k, v in parse(s).items()
                                if k != "image" and (with_maps or k not in ("mask", "valid"))}),
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


# ---------------------------------------------------------------- index statistics


INDEX_QUANTILES = (0.01, 0.99)


def stats_indices(bands):
    """The distinct indices (canonical names, no aliases) computable from ``bands``."""
    roles = spectral.band_roles(bands)
    return [n for n, i in spectral.INDICES.items() if n == i.name and all(b in roles for b in i.bands)]


def index_stats(files, features, quantiles=INDEX_QUANTILES):
    """{index: {min, max, q01, q99, n_tiles}} of ``features.indices`` over EVERY tile of ``files``,
    as the Kelp Wanted 2nd-place solution computes them (its calculate_band_stats.py) after the
    masking of ``features`` (``mask_indices``): per tile the linear-interpolated 1% / 99% quantiles
    of the kept, finite values, then their mean over the tiles that have any; min / max over all kept
    finite values. An index with ``fixed`` statistics (DEMWM) gets its range (the winner forces 0..1).
    An index no tile keeps a value of is left out.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = list(features.indices)
    parse = record_parser(features)

    @tf.function(jit_compile=True, autograph=False)
    def planes_of(image, valid):
        planes, oks = features.raw_indices(image, valid)
        return tf.stack(planes, 0), tf.stack(oks, 0)

    def raw(serialized):
        ex = parse(serialized)
        return planes_of(ex["image"], ex["valid"])

    def tile_stats(values, oks):
        """[(q01, q99, min, max) or None] per index of one tile (numpy releases the GIL: threads)."""
        out = []
        for k in range(len(names)):
            v = values[k][oks[k]]
            v = v[np.isfinite(v)]
            out.append((*np.quantile(v, quantiles), float(v.min()), float(v.max())) if v.size else None)
        return out

    qs = {n: [] for n in names}
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    ds = tfdata.read_records(files, deterministic=True).map(tfdata.plain(raw), num_parallel_calls=AUTOTUNE).prefetch(2)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for per_tile in pool.map(lambda t: tile_stats(*t), ds.as_numpy_iterator()):
            for n, st in zip(names, per_tile):
                if st is not None:
                    qs[n].append(st[:2])
                    low[n], high[n] = min(low[n], st[2]), max(high[n], st[3])
    out = {}
    for n in names:
        index = spectral.INDICES[n]
        if index.fixed:
            lo, hi = index.range
            out[n] = {"min": lo, "max": hi, "q01": lo, "q99": hi, "n_tiles": len(qs[n])}
        elif qs[n]:
            q01, q99 = np.mean(np.stack(qs[n]), axis=0)
            out[n] = {"min": low[n], "max": high[n], "q01": float(q01), "q99": float(q99), "n_tiles": len(qs[n])}
    return out


def manifest_index_stats(manifest, names, mask_indices):
    """{name: stats} of the indices ``names`` whose statistics the manifest holds (``index_stats``, the
    converter's) for the same ``mask_indices``; {} for an older manifest (then index ranges are fitted)."""
    stored = manifest.get("index_stats") or {}
    if not stored or bool(stored.get("mask_indices")) != bool(mask_indices):
        return {}
    table = stored.get("stats") or {}
    return {n: table[spectral.INDICES[n].name] for n in names
            if n in spectral.INDICES and spectral.INDICES[n].name in table}


def fit_index_ranges(files, features, n_tiles=64, quantiles=(0.01, 0.99)):
    """{index: (low, high)}: the quantiles of every index without a natural range over the
    kept (unmasked, not missing) pixels of the first ``n_tiles`` tiles of ``files``.

    Pass it as ``spectral.Features(..., index_ranges=...)``.
    """
    names = [n for n in features.indices if not spectral.INDICES[n].natural and n not in features.index_stats]
    if not names:
        return {}
    parse = record_parser(features)
    values = {n: [] for n in names}
    position = [features.indices.index(n) for n in names]

    def raw(serialized):
        ex = parse(serialized)
        planes, oks = features.raw_indices(ex["image"], ex["valid"])
        return tf.stack([planes[k] for k in position], -1), tf.stack([oks[k] for k in position], -1)

    for idx, ok in tfdata.read_records(files, deterministic=True).take(n_tiles).map(tfdata.plain(raw)).as_numpy_iterator():
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
