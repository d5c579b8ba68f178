"""Masked RMSE loss and Keras metrics of the temporal regression task, exact under a strategy.

``y_true`` float32 ``[B, H, W, 1]`` (or ``[B, H, W]``) in target units; a
pixel is *valid* when ``0 <= y_true <= cap`` (``cap`` None: no upper bound).
Negative targets mean unknown (padding, nodata, test chips); targets above
the cap are ignored as the 1st place of The BioMassters did (cap 400).
``y_pred`` the model's ``[B, H, W, 1]``.

Loss ``rmse`` (the competition's metric, per chip): for each chip with at
least one valid pixel ``sqrt(mean over its valid pixels of (p - t)^2)``,
then the mean over those chips; a chip without a valid pixel contributes
nothing and a batch without any has loss 0 (never NaN; the gradient of the
square root at 0 is taken as 0). ``pooled_rmse``: one RMSE over all valid
pixels of the global batch.

Global, not per-replica: the sums are all-reduced over the replicas
(``seg_losses.global_sum``), so every replica computes the loss of the whole
global batch and Keras' division by the replica count plus its gradient sum
give the single-device loss and gradient (as ``seg_losses``).

Metrics: ``ChipRMSE`` (mean of the per-chip RMSEs of every chip seen with a
valid pixel) and ``PooledRMSE`` (RMSE over every valid pixel seen); their
sums are Keras metric variables, so they accumulate across batches and
replicas. Both use the same cap as the loss.
"""
import tensorflow as tf

from foldnet.core.errors import ConfigError
from foldnet.models.ops import global_sum, safe_div

keras = tf.keras

LOSSES = ("rmse", "pooled_rmse")
DEFAULT_LOSS = "rmse"


def valid_errors(y_true, y_pred, cap=None):
    """(squared errors [B, H*W], valid flags [B, H*W]) as float32; invalid pixels have error 0."""
    truth = tf.cast(y_true, tf.float32)
    pred = tf.cast(y_pred, tf.float32)
    n = tf.shape(truth)[0]
    truth, pred = tf.reshape(truth, [n, -1]), tf.reshape(pred, [n, -1])
    valid = truth >= 0.0
    if cap is not None:
        valid = tf.logical_and(valid, truth <= float(cap))
    valid = tf.cast(valid, tf.float32)
    return tf.square(pred - truth) * valid, valid


def _sqrt0(x):
    """sqrt with value and gradient 0 at 0 (x >= 0)."""
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, 1.0)), 0.0)


def chip_rmse_terms(y_true, y_pred, cap=None):
    """(RMSE per chip [B], has-a-valid-pixel flag per chip [B])."""
    sq, valid = valid_errors(y_true, y_pred, cap)
    count = tf.reduce_sum(valid, 1)
    return _sqrt0(safe_div(tf.reduce_sum(sq, 1), count)), tf.cast(count > 0, tf.float32)


def rmse_loss(y_true, y_pred, cap=None, per_chip=True):
    """Masked RMSE of the global batch: mean of per-chip RMSEs, or pooled (see module doc)."""
    if per_chip:
        rmse, has = chip_rmse_terms(y_true, y_pred, cap)
        total, n_chips = global_sum([tf.reduce_sum(rmse * has), tf.reduce_sum(has)])
        return safe_div(total, n_chips)
    sq, valid = valid_errors(y_true, y_pred, cap)
    total, count = global_sum([tf.reduce_sum(sq), tf.reduce_sum(valid)])
    return _sqrt0(safe_div(total, count))


def check_loss(name):
    """ConfigError unless ``name`` (None = the default) is a loss of this module."""
    if name not in (None, *LOSSES):
        raise ConfigError(f"temporal regression loss {name!r}: choose {' or '.join(LOSSES)}")
    return name or DEFAULT_LOSS


@keras.utils.register_keras_serializable(package="foldnet")
class MaskedRMSE(keras.losses.Loss):
    """``rmse`` or ``pooled_rmse`` with a cap (see module doc); a global-batch scalar."""

    def __init__(self, cap=None, per_chip=True, name="masked_rmse", **kwargs):
        kwargs.setdefault("reduction", keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        super().__init__(name=name, **kwargs)
        self.cap = None if cap is None else float(cap)
        self.per_chip = bool(per_chip)

    def call(self, y_true, y_pred):
        return rmse_loss(y_true, y_pred, self.cap, self.per_chip)

    def get_config(self):
        return {**super().get_config(), "cap": self.cap, "per_chip": self.per_chip}


def make_loss(name=None, cap=None):
    """The Keras loss ``name`` (rmse, pooled_rmse; None = rmse) ignoring targets above ``cap``."""
    return MaskedRMSE(cap, per_chip=check_loss(name) == "rmse")


@keras.utils.register_keras_serializable(package="foldnet")
class ChipRMSE(keras.metrics.Metric):
    """Mean over every chip seen (with a valid pixel) of its masked RMSE."""

    def __init__(self, cap=None, name="chip_rmse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cap = None if cap is None else float(cap)
        self.total = self.add_weight("total", initializer="zeros")
        self.chips = self.add_weight("chips", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        rmse, has = chip_rmse_terms(y_true, y_pred, self.cap)
        self.total.assign_add(tf.reduce_sum(rmse * has))
        self.chips.assign_add(tf.reduce_sum(has))

    def result(self):
        return safe_div(self.total, self.chips)

    def reset_state(self):
        for v in (self.total, self.chips):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "cap": self.cap}


@keras.utils.register_keras_serializable(package="foldnet")
class PooledRMSE(keras.metrics.Metric):
    """RMSE over every valid pixel seen."""

    def __init__(self, cap=None, name="pooled_rmse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cap = None if cap is None else float(cap)
        self.total = self.add_weight("total", initializer="zeros")
        self.pixels = self.add_weight("pixels", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        sq, valid = valid_errors(y_true, y_pred, self.cap)
        self.total.assign_add(tf.reduce_sum(sq))
        self.pixels.assign_add(tf.reduce_sum(valid))

    def result(self):
        return tf.sqrt(safe_div(self.total, self.pixels))

    def reset_state(self):
        for v in (self.total, self.pixels):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "cap": self.cap}


def make_metrics(cap=None):
    """[ChipRMSE, PooledRMSE] at ``cap`` (logged as chip_rmse, pooled_rmse) and ChipRMSE over every known
    pixel whatever the cap (chip_rmse_uncapped: the competition's metric, the 1st place's checkpoint choice)."""
    return [ChipRMSE(cap), PooledRMSE(cap), ChipRMSE(None, name="chip_rmse_uncapped")]
