"""tf.data pipelines over temporal records (``temporal_records``), core TF ops only.

Per chip: parse -> normalise (min-max by ``norm`` per band, clipped to
[0, 1]; missing values and missing months 0) -> months reduction
(``temporal_input``) -> month dropout (training) -> paired augmentation of
all months and the target (training) -> padding to a multiple of 32 (image
0, target -1) -> batch. Elements are ``({"image": [B, T', Hp, Wp, C],
"months": [B, T']}, target [B, Hp, Wp, 1])``; ``months`` is 1 for a month
with data that was not dropped; the target is -1 where unknown (padding,
test chips, no-data labels).

``temporal_input``:

* ``"all"`` (default): every month, T' = T.
* ``"month:K"``: month K only (T' = 1); a chip without data in month K takes
  its nearest month with data (the earlier one on a tie).
* ``"mean"``: the mean over the months with data, per value over the values
  present (T' = 1, months = 1): the baselines of the demo.

Month dropout (``month_dropout`` p): each month with data is dropped with
probability p (its image zeroed, months 0); if that drops all of them, the
one with the largest draw is kept, so at least one month always remains.
With ``month_dropout_chips`` q < 1 only a share q of the chips (one draw per
chip) has months dropped; the others keep all of them, as at test time (the
1st place: q 0.5, p 0.3).

``month_needs`` (``month_need_index``): a sensor name such as ``S2`` makes
a month present only when that sensor's image of the month is usable
(``sensor_months`` of the records); other months are masked and zeroed like
dropped ones, in training, validation and prediction alike.

Augmentation (``augment``: ``rviews.paired_augment`` options: flips,
90-degree turns, a small rotation/zoom/shift): one transform per chip
applied to every month and to the target (image bilinear, target nearest so
no value is invented; pixels from outside mirrored).

Prediction (``predict_dataset``) expands every chip to its TTA views
(``rviews.TTA_VIEWS``, identity first) so one predict covers them; the
returned ``merge`` maps predictions back to the identity frame and crops the
padding: float32 ``[n_views, n, H, W]``.
"""

import numpy as np
import tensorflow as tf

from foldnet.core.errors import ConfigError
from foldnet.io import tfdata
from foldnet.raster import spectral
from foldnet.raster import views as rviews
from foldnet.raster.spectral import PAD_MULTIPLE
from foldnet.tasks.temporal.records import NO_TARGET, parse_example, unpack_bits

AUTOTUNE = tf.data.AUTOTUNE
TEMPORAL_INPUTS = ("all", "mean", "month:K")
DEFAULT_AUGMENT = {"flip": True, "rot90": True}


# ---------------------------------------------------------------- options


def parse_temporal_input(value, n_months):
    """("all", None) | ("mean", None) | ("month", K); ConfigError for anything else."""
    text = str(value or "all").strip().lower()
    if text in ("all", "mean"):
        return text, None
    if text.startswith("month:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            k = -1
        if 0 <= k < n_months:
            return "month", k
    raise ConfigError(f"temporal_input {value!r}: use all, mean or month:K with K in 0..{n_months - 1}")


def n_input_months(temporal_input, n_months):
    """T': the number of months the model sees."""
    return n_months if parse_temporal_input(temporal_input, n_months)[0] == "all" else 1


def _opt(cfg, key, default):
    try:
        value = cfg[key]
    except KeyError:
        return default
    return default if value is None else value


def options(cfg):
    """Keyword arguments of the pipelines from run settings (a config.Config or a dict): temporal_input,
    month_dropout (train), augment (train: aug_number >= 1 flips, >= 3 also 90-degree turns; aug_rotate
    degrees; aug_crop_scale zoom and shift; map_aug the paired affine / photometric / elastic / cutout maps on
    the [0, 1] bands), norm (``band_norm``: {band: [lo, hi]} overriding the manifest)."""
    aug = cfg.aug if hasattr(cfg, "aug") else None
    number = aug.number if aug else _opt(cfg, "aug_number", 3)
    crop = aug.crop_scale if aug else _opt(cfg, "aug_crop_scale", 0.0)
    rotate = aug.rotate if aug else _opt(cfg, "aug_rotate", 0.0)
    return {"temporal_input": _opt(cfg, "temporal_input", "all"), "norm": _opt(cfg, "band_norm", None),
            "month_dropout": float(_opt(cfg, "month_dropout", 0.0)),
            "month_dropout_chips": float(_opt(cfg, "month_dropout_chips", 1.0)),
            "month_needs": _opt(cfg, "month_needs", "any"),
            "augment": {"flip": number >= 1, "rot90": number >= 3, "rotate": float(rotate), "scale": float(crop),
                        "shift": float(crop) / 2, "map_aug": dict(_opt(cfg, "map_aug", None) or {})}}


# ---------------------------------------------------------------- per chip


def normalise(image, valid, lo, hi):
    """float32 [..., C]: clip((x - lo) / (hi - lo), 0, 1) per band; 0 where not valid."""
    scale = 1.0 / np.maximum(hi - lo, 1e-6)
    x = tf.minimum(tf.maximum((image - lo) * scale, 0.0), 1.0)
    return tf.where(valid, x, 0.0)


def _unpack_normalise(image, packed, lo, hi, index=None, kept=None):
    """(normalised image, valid) of a parsed chip: the bit-packed mask unpacked, ``normalise`` and (with
    ``index``) ``move_pixels`` and (with ``kept`` [T]) the months dropped, in one XLA-compiled function
    (``_Chip``): fusing the elementwise passes gives ~1.4x the chips/s of the plain ops on CPU
    (bench/bench_temporal_pipeline.py)."""
    valid = tf.reshape(unpack_bits(packed, int(np.prod(image.shape))), image.shape)
    if kept is not None:
        valid &= kept[:, tf.newaxis, tf.newaxis, tf.newaxis] > 0
    x = normalise(image, valid, lo, hi)
    if index is not None:
        x, valid = move_pixels(x, index), move_pixels(valid, index)
    return x, valid


def month_need_index(spec, month_needs):
    """Column of ``sensor_months`` a month needs to be present (``month_needs`` a storage group / sensor of
    the records), or None for ``any`` (any value present) and for records without per-sensor presence.
    ConfigError for a name the records do not have."""
    if month_needs in (None, "", "any"):
        return None
    if not spec.groups:
        return None
    if month_needs not in spec.group_names:
        raise ConfigError(f"month_needs {month_needs!r}: use any or a sensor of the records "
                          f"({', '.join(spec.group_names)})")
    return spec.group_names.index(month_needs)


def nearest_present(months, k):
    """Index of the month with data nearest to ``k`` (the earlier one on a tie); ``k`` if none has data."""
    n = months.shape[0]
    distance = tf.abs(tf.range(n) - k) * 2 + tf.cast(tf.range(n) > k, tf.int32)  # tie -> earlier month
    distance = tf.where(months > 0, distance, 10 * n)
    return tf.cast(tf.argmin(distance), tf.int32)


def reduce_months(x, valid, months, mode, k=None):
    """(x [T', H, W, C], months [T']) for ``parse_temporal_input``'s mode."""
    if mode == "all":
        return x, months
    if mode == "month":
        i = nearest_present(months, k)
        return x[i][tf.newaxis], tf.ones([1], tf.float32)
    w = tf.cast(valid, tf.float32)
    mean = tf.reduce_sum(x * w, 0) / tf.maximum(tf.reduce_sum(w, 0), 1.0)
    return mean[tf.newaxis], tf.ones([1], tf.float32)


def kept_months(months, rate, seed=None, chips=1.0):
    """float32 [T]: each month with data kept with probability 1 - ``rate``; if none would be, the one with
    the largest draw (so at least one month with data always remains); months without data stay 0.
    ``chips``: probability that this chip has months dropped at all (else every month is kept)."""
    if not rate or not chips:
        return months
    draw = tf.random.uniform(tf.shape(months), seed=seed)
    present = months > 0
    keep = present & (draw >= rate)
    if chips < 1:
        keep |= present & (tf.random.uniform([], seed=seed) >= chips)
    fallback = tf.equal(tf.range(tf.shape(months)[0]), tf.argmax(tf.where(present, draw, -1.0), output_type=tf.int32))
    return tf.cast(tf.where(tf.reduce_any(keep), keep, fallback & present), tf.float32)


def drop_months(x, months, rate, seed=None, chips=1.0):
    """Drop each month with data with probability ``rate`` (image zeroed, months 0), keeping at least one
    (``kept_months``), on a share ``chips`` of the chips. The training pipeline zeroes the image inside
    the compiled normalisation instead."""
    kept = kept_months(months, rate, seed, chips)
    return x * kept[:, tf.newaxis, tf.newaxis, tf.newaxis], kept


def flip_turn_index(height, width, flip=True, rot90=True):
    """Random flips (each with probability 1/2) and 90-degree turn (k uniform in 0..3, square chips only)
    as one source-pixel index per output pixel: int32 [H * W] (``tf.gather`` of the flattened pixels
    applies it to every month and to the target alike; exact, no resampling)."""
    matrix = rviews.random_flip_turn(height, width, flip, rot90 and height == width)
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    src_x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    src_y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    return tf.reshape(tf.cast(tf.round(src_y), tf.int32) * width + tf.cast(tf.round(src_x), tf.int32), [-1])


def move_pixels(x, index):
    """``x`` [..., H, W, C] with its pixels taken from ``index`` (``flip_turn_index``)."""
    shape = x.shape
    flat = tf.reshape(x, [-1, shape[-3] * shape[-2], shape[-1]])
    return tf.reshape(tf.gather(flat, index, axis=1), shape)


def augment_pair(x, target, options):
    """The same random ``rviews.paired_augment`` transform of every month of ``x`` [T, H, W, C] and of
    ``target`` [H, W] (image bilinear, target nearest; -1 stays -1). The training pipeline applies flips
    and 90-degree turns alone with ``flip_turn_index`` instead (inside the compiled normalisation)."""
    t, h, w, c = x.shape
    flat = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [h, w, t * c])
    known = tf.cast(target >= 0, tf.float32)
    flat, target, known = rviews.paired_augment(flat, target, known, **options)
    x = tf.transpose(tf.reshape(flat, [h, w, t, c]), [2, 0, 1, 3])
    return x, tf.where(known > 0.5, target, NO_TARGET)


def _pad(x, target, multiple):
    if not multiple or not any(spectral.padding_for(n, multiple) != (0, 0) for n in x.shape[-3:-1]):
        return x, target
    return (spectral.pad_to_multiple(x, multiple, "CONSTANT", 0),
            spectral.pad_to_multiple(target, multiple, "CONSTANT", NO_TARGET))


class _Chip:
    """Parse + normalise + reduce for one spec and options."""

    def __init__(self, spec, temporal_input="all", norm=None, month_needs="any"):
        self.spec = spec
        self.mode, self.k = parse_temporal_input(temporal_input, spec.n_months)
        self.need = month_need_index(spec, month_needs)
        self.lo, self.hi = spec.norm_arrays(norm)
        self._core = tf.function(lambda image, packed: _unpack_normalise(image, packed, self.lo, self.hi),
                                 jit_compile=True, autograph=False)
        self._train = tf.function(lambda image, packed, index, kept: _unpack_normalise(
            image, packed, self.lo, self.hi, index, kept), jit_compile=True, autograph=False)

    def __call__(self, serialized, index=None, dropout=0.0, seed=None, dropout_chips=1.0):
        """(x [T', H, W, C], months [T'], target [H, W]). Training: ``index`` moves the pixels
        (``flip_turn_index``) and ``dropout`` drops months (``kept_months``; with temporal_input "all") on a
        share ``dropout_chips`` of the chips."""
        ex = parse_example(serialized, self.spec.n_months, self.spec.shape, self.spec.n_channels, packed=True,
                           groups=self.spec.groups)
        target, months = ex["target"], ex["months"]
        if self.need is not None:
            months = months * ex["sensor_months"][:, self.need]
        if index is not None:
            target = move_pixels(target[..., tf.newaxis], index)[..., 0]
        if self.mode == "all" and (index is not None or dropout or self.need is not None):
            months = kept_months(months, dropout, seed, dropout_chips)
            index = tf.range(int(np.prod(self.spec.shape))) if index is None else index
            x, _ = self._train(ex["image"], ex["valid"], index, months)
            return x, months, target
        x, valid = self._core(ex["image"], ex["valid"])
        x, months = reduce_months(x, valid, months, self.mode, self.k)
        if index is not None:  # one month left: move it after the reduction
            x = move_pixels(x, index)
        return x, months, target


# ---------------------------------------------------------------- pipelines


def train_dataset(files, spec, batch_size, *, temporal_input="all", norm=None, month_dropout=0.0, augment=None,
                  cache=False, shuffle_buffer=256, seed=None, drop_remainder=True, n_workers=1,
                  pad_multiple=PAD_MULTIPLE, month_dropout_chips=1.0, month_needs="any"):
    """Endless shuffled, augmented batches ``({"image", "months"}, target)`` for ``model.fit``.

    ``augment``: ``rviews.paired_augment`` options (None: flips and 90-degree turns; {}: none).
    ``month_dropout``: probability of dropping each month with data (``drop_months``), on a share
    ``month_dropout_chips`` of the chips. ``month_needs``: ``month_need_index``.
    """
    rate = float(month_dropout or 0.0)
    aug = dict(DEFAULT_AUGMENT if augment is None else augment)
    chip = _Chip(spec, temporal_input, norm, month_needs)
    files = list(files)
    ds = tfdata.read_records(files, deterministic=False)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()

    map_aug = aug.get("map_aug") or {}
    affine = any(aug.get(k) for k in ("rotate", "scale", "shift")) or any(
        map_aug.get(k) for k in ("p", "photometric_p", "elastic_p", "cutout_p"))
    turns = not affine and bool(aug.get("flip") or aug.get("rot90"))

    def make(serialized):
        index = flip_turn_index(*spec.shape, bool(aug.get("flip")), bool(aug.get("rot90"))) if turns else None
        x, months, target = chip(serialized, index, rate, seed, float(month_dropout_chips))
        if affine:
            x, target = augment_pair(x, target, aug)
        x, target = _pad(x, target[..., tf.newaxis], pad_multiple)
        return {"image": x, "months": months}, target

    ds = ds.map(tfdata.plain(make), num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
    return tfdata.with_options(ds, shard_by_data=len(files) < n_workers)


def eval_dataset(files, spec, batch_size, *, temporal_input="all", norm=None, cache=False, pad_multiple=PAD_MULTIPLE,
                 month_needs="any", **train_only):
    """Batches ``({"image", "months"}, target)`` in file order, no augmentation, no dropout
    (``train_only``: the training keys of ``options(cfg)``, ignored)."""
    chip = _Chip(spec, temporal_input, norm, month_needs)

    def make(serialized):
        x, months, target = chip(serialized)
        x, target = _pad(x, target[..., tf.newaxis], pad_multiple)
        return {"image": x, "months": months}, target

    ds = tfdata.read_records(files, deterministic=True).map(tfdata.plain(make), num_parallel_calls=AUTOTUNE).batch(batch_size)
    return (ds.cache() if cache else ds).prefetch(AUTOTUNE)


def predict_dataset(files, spec, batch_size, views=("identity",), *, temporal_input="all", norm=None,
                    pad_multiple=PAD_MULTIPLE, month_needs="any", **train_only):
    """(dataset, merge): batches ``{"image": [b * V, T', Hp, Wp, C], "months": [b * V, T']}`` in file order,
    chip i's V views at rows i*V .. i*V+V-1 (identity first); ``merge(predictions [n * V, Hp, Wp(, 1)])``
    -> float32 ``[V, n, H, W]``, every view mapped back to the identity frame, padding cropped."""
    height, width = spec.shape
    views = rviews.check_views(views, height, width)
    chip = _Chip(spec, temporal_input, norm, month_needs)

    def make(serialized):
        x, months, _ = chip(serialized)
        x, _ = _pad(x, tf.zeros([height, width, 1]), pad_multiple)
        return {"image": tf.stack([rviews.apply_view(x, v) for v in views]),
                "months": tf.tile(months[tf.newaxis], [len(views), 1])}

    def flatten(batch):
        return {k: tf.reshape(v, [-1] + v.shape[2:].as_list()) for k, v in batch.items()}

    ds = tfdata.read_records(files, deterministic=True).map(tfdata.plain(make), num_parallel_calls=AUTOTUNE).batch(batch_size)
    ds = ds.map(tfdata.plain(flatten)).prefetch(AUTOTUNE)

    def merge(predictions):
        return rviews.invert_tta(predictions, views, height, width, pad_multiple or 1).numpy()

    return ds, merge


def predict_maps(model, files, spec, batch_size, views=("identity",), **kwargs):
    """Predicted maps of every chip of ``files`` (file order), all views in one pass, each mapped back to
    the identity frame and cropped: float32 ``[V, n, H, W]`` (streams batch by batch)."""
    ds, merge = predict_dataset(files, spec, batch_size, views, **kwargs)
    out = [merge(model.predict_on_batch(batch)) for batch in ds]
    if not out:
        return np.zeros([len(views), 0] + list(spec.shape), np.float32)
    return np.concatenate(out, axis=1)


def read_ids_targets(files, spec):
    """(ids in file order, targets float32 [n, H, W], -1 where unknown and for test chips)."""
    def make(serialized):
        ex = parse_example(serialized, spec.n_months, spec.shape, spec.n_channels, with_image=False,
                           groups=spec.groups)
        return ex["id"], ex["target"]

    ids, targets = [], []
    for i, t in tfdata.read_records(files, deterministic=True).map(tfdata.plain(make), num_parallel_calls=AUTOTUNE).batch(256)\
            .as_numpy_iterator():
        ids += [x.decode("utf-8") for x in i]
        targets.append(t)
    return ids, (np.concatenate(targets) if targets else np.zeros([0] + list(spec.shape), np.float32))


def read_chips(files, spec):
    """Every parsed chip of ``files`` as numpy (tests, benches): dicts with id, image, valid, months, target."""
    ds = tfdata.read_records(files, deterministic=True).map(
        tfdata.plain(lambda s: parse_example(s, spec.n_months, spec.shape, spec.n_channels, groups=spec.groups)))
    return [{k: (v.decode("utf-8") if k == "id" else v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
