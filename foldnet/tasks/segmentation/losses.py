"""Segmentation losses and Keras metrics, exact under a distribution strategy.

Target layout (what ``seg_data`` feeds and every function here reads):
``y_true`` is float32 ``[B, H, W, 2 or 3]``: channel 0 the 0/1 mask,
channel 1 the valid flag (0: the pixel counts nowhere: missing data,
padding), optional channel 2 the tile's group (location) index, constant
over the tile. ``y_pred`` is the model's sigmoid ``[B, H, W, 1]``.

Losses (``p`` prediction, ``t`` truth, sums over valid pixels; ``s`` the
smoothing constant, default 1)::

    dice     1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)
    jaccard  1 - (sum(p t) + s) / (sum(p) + sum(t) - sum(p t) + s)
    focal    mean of -(1 - p_t)^gamma log(p_t), p_t = p if t else 1 - p
    bce      focal with gamma = 0
    dice2    mean over c in {background, positive} of
             [sum(t_c) > 0] (1 - (2 sum(p_c t_c) + s) / max(sum(p_c) + sum(t_c) + s, 1e-7)),
             p_1 = p, p_0 = 1 - p (the 2-class softmax of one sigmoid), t_0 = 1 - t:
             segmentation_models_pytorch's DiceLoss(mode="multiclass"), the Kelp Wanted
             2nd place's loss with ``smooth: 0`` (always pooled over the batch)

``dice`` and ``jaccard`` are pooled over all pixels of the global batch, or
with ``per_image`` computed per image and averaged over the images that have
a valid pixel. ``focal``/``bce`` average over all valid pixels of the
global batch. An empty mask with an empty prediction has loss 0 (the
smoothing), a batch without any valid pixel has loss 0 (never NaN).

Global, not per-replica: each term's sums are all-reduced over the replicas
(``ReplicaContext.all_reduce``, whose gradient is again an all-reduce), so
every replica computes the loss of the whole global batch. Keras divides
each replica's loss by the replica count and sums the gradients: the result
is the single-device loss and gradient (tests/test_seg_losses.py checks this
with 2 replicas).

Combinations come from a spec (YAML ``loss:``), e.g. ``{jaccard: 1.0,
focal: 0.1, per_image: true, gamma: 2}``; a term may also be a dict
``{weight, per_image, gamma, smooth}`` overriding the shared options.

Metrics (``make_metrics``): pooled Dice and IoU of the thresholded prediction
(positive where ``p >= threshold``), and the location-weighted IoU (per
group sum I / sum U, then the mean over the groups seen; a group with U = 0
counts 1.0), as ``foldnet.tasks.segmentation.metrics`` defines them. Their sums are Keras
metric variables, so they accumulate across batches and replicas.
"""
import math

import tensorflow as tf

from foldnet.core.errors import ConfigError
from foldnet.models.ops import global_sum, safe_div
from foldnet.tasks.segmentation.settings import DEFAULT_THRESHOLD

keras = tf.keras

TERMS = ("dice", "jaccard", "focal", "bce", "dice2")
OPTIONS = {"per_image": False, "gamma": 2.0, "smooth": 1.0}
_PROB_EPS = 1e-7


def split_target(y_true, y_pred):
    """(truth [B, H, W], valid [B, H, W], prob [B, H, W]) as float32."""
    y_true = tf.cast(y_true, tf.float32)
    truth, valid = y_true[..., 0], y_true[..., 1]
    prob = tf.cast(y_pred, tf.float32)
    if prob.shape.rank == 4:
        prob = prob[..., 0]
    return truth * valid, valid, prob


def overlap_loss(y_true, y_pred, kind="dice", per_image=False, smooth=1.0):
    """Soft Dice or Jaccard loss (see module doc)."""
    truth, valid, prob = split_target(y_true, y_pred)
    prob = prob * valid
    axes = [1, 2]
    inter = tf.reduce_sum(prob * truth, axes)
    total = tf.reduce_sum(prob, axes) + tf.reduce_sum(truth, axes)
    if kind == "dice":
        num, den = 2.0 * inter, total
    elif kind == "jaccard":
        num, den = inter, total - inter
    else:
        raise ValueError(f"unknown overlap loss {kind!r}")
    if per_image:
        has_valid = tf.cast(tf.reduce_sum(valid, axes) > 0, tf.float32)
        losses = (1.0 - (num + smooth) / (den + smooth)) * has_valid
        loss_sum, n_images = global_sum([tf.reduce_sum(losses), tf.reduce_sum(has_valid)])
        return safe_div(loss_sum, n_images)
    num, den = global_sum([tf.reduce_sum(num), tf.reduce_sum(den)])
    return 1.0 - (num + smooth) / (den + smooth)


def two_class_dice_loss(y_true, y_pred, smooth=0.0):
    """The 2-class Dice loss (``dice2``, see module doc), pooled over the valid pixels of the global batch."""
    truth, valid, prob = split_target(y_true, y_pred)
    sums = []
    for p, t in ((prob * valid, truth), ((1.0 - prob) * valid, (1.0 - truth) * valid)):
        sums += [tf.reduce_sum(p * t), tf.reduce_sum(p) + tf.reduce_sum(t), tf.reduce_sum(t)]
    sums = global_sum(sums)
    losses = []
    for inter, card, present in (sums[:3], sums[3:]):
        score = (2.0 * inter + smooth) / tf.maximum(card + smooth, _PROB_EPS)
        losses.append((1.0 - score) * tf.cast(present > 0, tf.float32))
    return (losses[0] + losses[1]) / 2.0


def focal_loss(y_true, y_pred, gamma=2.0):
    """Mean focal loss over the valid pixels of the global batch (gamma 0: binary cross-entropy)."""
    truth, valid, prob = split_target(y_true, y_pred)
    prob = tf.clip_by_value(prob, _PROB_EPS, 1.0 - _PROB_EPS)
    p_t = tf.where(truth > 0.5, prob, 1.0 - prob)
    loss = -tf.math.log(p_t)
    if gamma:
        loss *= tf.pow(1.0 - p_t, float(gamma))
    total, count = global_sum([tf.reduce_sum(loss * valid), tf.reduce_sum(valid)])
    return safe_div(total, count)


def parse_loss_spec(spec):
    """A spec (str term name, or dict as in the module doc) -> [(term, weight, options)].

    Raises ConfigError naming every unknown key or bad value.
    """
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"loss must be a term name or a mapping of terms to weights, got {spec!r}")
    shared = {**OPTIONS, **{k: v for k, v in spec.items() if k in OPTIONS}}
    terms, problems = [], []
    for key, value in spec.items():
        if key in OPTIONS:
            continue
        if key not in TERMS:
            problems.append(f"unknown loss term {key!r} (terms: {', '.join(TERMS)}; options: {', '.join(OPTIONS)})")
            continue
        options = dict(shared)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(OPTIONS) - {"weight"})
            if unknown:
                problems.append(f"loss term {key}: unknown option(s) {unknown}")
            options.update({k: v for k, v in value.items() if k in OPTIONS})
            value = value.get("weight", 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            problems.append(f"loss term {key}: weight must be a number >= 0, got {value!r}")
            continue
        if isinstance(options["gamma"], bool) or not isinstance(options["gamma"], (int, float)) \
                or not math.isfinite(options["gamma"]) or options["gamma"] < 0:
            problems.append(f"loss term {key}: gamma must be a number >= 0, got {options['gamma']!r}")
        if isinstance(options["smooth"], bool) or not isinstance(options["smooth"], (int, float)) \
                or not math.isfinite(options["smooth"]) or options["smooth"] < 0:
            problems.append(f"loss term {key}: smooth must be a number >= 0, got {options['smooth']!r}")
        if not isinstance(options["per_image"], bool):
            problems.append(f"loss term {key}: per_image must be true or false, got {options['per_image']!r}")
        elif key == "dice2" and options["per_image"]:
            problems.append("loss term dice2 is pooled over the batch: per_image is not supported")
        terms.append((key, float(value), options))
    if not terms and not problems:
        problems.append(f"loss {spec!r} has no term")
    if problems:
        raise ConfigError("bad loss spec: " + "; ".join(problems))
    return terms


def term_value(term, options, y_true, y_pred):
    if term in ("dice", "jaccard"):
        return overlap_loss(y_true, y_pred, term, options["per_image"], float(options["smooth"]))
    if term == "dice2":
        return two_class_dice_loss(y_true, y_pred, float(options["smooth"]))
    return focal_loss(y_true, y_pred, float(options["gamma"]) if term == "focal" else 0.0)


@keras.utils.register_keras_serializable(package="foldnet")
class SegLoss(keras.losses.Loss):
    """Weighted sum of the terms of a loss spec (see module doc); a global-batch scalar."""

    def __init__(self, spec="dice", name="seg_loss", **kwargs):
        kwargs.setdefault("reduction", keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        super().__init__(name=name, **kwargs)
        self.spec = spec
        self.terms = parse_loss_spec(spec)

    def call(self, y_true, y_pred):
        total = 0.0
        for term, weight, options in self.terms:
            if weight:
                total += weight * term_value(term, options, y_true, y_pred)
        return tf.convert_to_tensor(total, tf.float32)

    def get_config(self):
        return {**super().get_config(), "spec": self.spec}


def make_loss(spec):
    """The Keras loss of a spec, e.g. ``make_loss({"jaccard": 1.0, "focal": 0.1, "per_image": True})``."""
    return SegLoss(spec)


# ---------------------------------------------------------------- metrics


def _hard(y_true, y_pred, threshold):
    truth, valid, prob = split_target(y_true, y_pred)
    pred = tf.cast(prob >= threshold, tf.float32) * valid
    return truth, pred, valid


@keras.utils.register_keras_serializable(package="foldnet")
class PooledOverlap(keras.metrics.Metric):
    """Pooled Dice (``kind="dice"``) or IoU (``"iou"``) of ``p >= threshold`` over every valid
    pixel seen (all batches, all replicas); 1.0 when truth and prediction are both empty."""

    def __init__(self, kind="dice", threshold=DEFAULT_THRESHOLD, name=None, **kwargs):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be dice or iou, got {kind!r}")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.threshold = kind, float(threshold)
        self.tp = self.add_weight("tp", initializer="zeros")
        self.fp = self.add_weight("fp", initializer="zeros")
        self.fn = self.add_weight("fn", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred, _ = _hard(y_true, y_pred, self.threshold)
        tp = tf.reduce_sum(truth * pred)
        self.tp.assign_add(tp)
        self.fp.assign_add(tf.reduce_sum(pred) - tp)
        self.fn.assign_add(tf.reduce_sum(truth) - tp)

    def result(self):
        num = 2.0 * self.tp if self.kind == "dice" else self.tp
        den = num + self.fp + self.fn
        return tf.where(den > 0, num / tf.maximum(den, 1.0), 1.0)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "threshold": self.threshold}


@keras.utils.register_keras_serializable(package="foldnet")
class LocationIoU(keras.metrics.Metric):
    """Location-weighted IoU: per group sum(I) / sum(U), mean over the groups seen.

    The group index of a tile is ``y_true[b, 0, 0, 2]`` (``seg_data`` with
    ``group_index``), in ``[0, n_groups)``.
    """

    def __init__(self, n_groups, threshold=DEFAULT_THRESHOLD, name="location_iou", empty=1.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_groups, self.threshold, self.empty = int(n_groups), float(threshold), float(empty)
        self.inter = self.add_weight("inter", shape=[self.n_groups], initializer="zeros")
        self.union = self.add_weight("union", shape=[self.n_groups], initializer="zeros")
        self.tiles = self.add_weight("tiles", shape=[self.n_groups], initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred, _ = _hard(y_true, y_pred, self.threshold)
        group = tf.cast(tf.round(tf.cast(y_true, tf.float32)[:, 0, 0, 2]), tf.int32)
        inter = tf.reduce_sum(truth * pred, [1, 2])
        union = tf.reduce_sum(tf.maximum(truth, pred), [1, 2])
        self.inter.assign_add(tf.math.unsorted_segment_sum(inter, group, self.n_groups))
        self.union.assign_add(tf.math.unsorted_segment_sum(union, group, self.n_groups))
        self.tiles.assign_add(tf.math.unsorted_segment_sum(tf.ones_like(inter), group, self.n_groups))

    def result(self):
        seen = self.tiles > 0
        iou = tf.where(self.union > 0, self.inter / tf.maximum(self.union, 1.0), self.empty)
        n_seen = tf.reduce_sum(tf.cast(seen, tf.float32))
        return tf.where(n_seen > 0, tf.reduce_sum(tf.where(seen, iou, 0.0)) / tf.maximum(n_seen, 1.0), 1.0)

    def reset_state(self):
        for v in (self.inter, self.union, self.tiles):
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "n_groups": self.n_groups, "threshold": self.threshold, "empty": self.empty}


def make_metrics(names=("dice", "iou"), threshold=DEFAULT_THRESHOLD, n_groups=None, empty_location=1.0):
    """Keras metrics by name: dice, iou, location_iou (needs ``n_groups`` and a group channel; a location
    without true or predicted pixels scores ``empty_location``)."""
    out = []
    for name in names:
        if name in ("dice", "iou"):
            out.append(PooledOverlap(name, threshold))
        elif name == "location_iou":
            if not n_groups:
                raise ConfigError("metric location_iou needs the number of groups (locations) of the dataset")
            out.append(LocationIoU(n_groups, threshold, empty=empty_location))
        else:
            raise ConfigError(f"unknown segmentation metric {name!r} (dice, iou, location_iou)")
    return out
