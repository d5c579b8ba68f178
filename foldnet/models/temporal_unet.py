"""Temporal UNet: T monthly images -> one map (The BioMassters 1st place design).

``build_temporal_unet(arch, n_months, shape_hw_padded, n_channels)``: Keras
inputs ``image`` float32 ``[B, T, Hp, Wp, C]`` and ``months`` float32 ``[B, T]``
(1 = the month is present, 0 = missing or dropped) -> float32 ``[B, Hp, Wp, 1]``
in target units, also under a mixed precision policy.

Shared encoder
    The T months are folded into the batch (``[B * T, Hp, Wp, C]``) and go
    through one encoder: ``unet.feature_extractor`` over any backbone of the
    ``models`` registry or ``tiny`` (input channels adapted as ``unet``
    does, the backbone's input normalisation applied). Absent months
    (``months == 0``) are zeroed before the encoder, so their pixels never
    reach the output, not even through BatchNorm batch statistics.

Masked attention pooling (``MonthAttention``), at every encoder scale
    For each feature map ``f`` ``[B, T, h, w, d]`` a per-pixel score
    ``s = Dense(1)(GELU(LayerNorm(Dense(hidden)(f))))`` (hidden = d unless
    ``attention_hidden``), a softmax of the scores over the months whose flag
    is 1 (absent months get weight exactly 0; a chip with a single present
    month takes it as is) and the weighted sum over months -> ``[B, h, w, d]``.
    Scores and softmax are float32. A chip with no present month gets zero
    features (never NaN); the data layer refuses such chips anyway.

Decoder and head
    ``unet.decode`` over the pooled maps (``decoder_filters``, deep to
    shallow), a 3x3 conv to one channel, times ``output_scale`` (the target's
    typical size, so that a fresh network starts on the right scale), then
    the non-negativity ``nonneg``: ``softplus`` (default), ``relu`` or
    ``none``; computed in float32. The UNet-level ``arch_options`` of
    ``unet_options`` (encoder_taps, decoder_attention, decoder_norm,
    head_kernel, stem, pixel_skip) apply as in ``unet``: with ``encoder_taps: stages``
    the attention pooling runs on the stage outputs; ``pixel_skip: N`` runs
    ``unet.pixel_path`` on every month (folded in the batch) and pools it over
    the months with its own masked attention, then joins the last decoder map.

``n_months`` may be 1 (the single-month and mean-of-months baselines).
"""
import re

import tensorflow as tf

from foldnet.models import backbones as models
from foldnet.models import unet, unet_options

keras = tf.keras
layers = keras.layers

NONNEG = ("softplus", "relu", "none")
DEFAULT_DECODER_FILTERS = unet.DEFAULT_DECODER_FILTERS
_MASKED_SCORE = -1e9


@keras.utils.register_keras_serializable(package="foldnet")
class FoldMonths(layers.Layer):
    """``[image [B, T, H, W, C], months [B, T]]`` -> ``[B * T, H, W, C]``, absent months zeroed."""

    def call(self, inputs):
        image, months = inputs
        present = tf.cast(months > 0, image.dtype)[:, :, None, None, None]
        image = image * present
        shape = tf.shape(image)
        return tf.reshape(image, tf.concat([[-1], shape[2:]], 0))


@keras.utils.register_keras_serializable(package="foldnet")
class MonthAttention(layers.Layer):
    """Masked attention pooling over months (see module doc):
    ``[features [B * T, h, w, d], months [B, T]]`` -> ``[B, h, w, d]``."""

    def __init__(self, n_months, hidden=None, **kwargs):
        super().__init__(**kwargs)
        self.n_months = int(n_months)
        self.hidden = None if hidden is None else int(hidden)

    def build(self, input_shape):
        depth = int(input_shape[0][-1])
        self.project = layers.Dense(self.hidden or depth, name="project")
        self.norm = layers.LayerNormalization(name="norm")
        self.score = layers.Dense(1, name="score")
        super().build(input_shape)

    def month_weights(self, features, months):
        """(features as [B, T, h, w, d], float32 attention weights [B, T, h, w, 1]: per pixel, summing to 1
        over the present months, 0 for masked ones)."""
        shape = tf.shape(features)
        x = tf.reshape(features, tf.concat([[-1, self.n_months], shape[1:]], 0))  # [B, T, h, w, d]
        hidden = tf.nn.gelu(self.norm(self.project(x)))
        scores = tf.cast(self.score(hidden), tf.float32)  # [B, T, h, w, 1]
        present = tf.cast(months > 0, tf.bool)[:, :, None, None, None]
        scores = tf.where(present, scores, _MASKED_SCORE)
        return x, tf.nn.softmax(scores, axis=1) * tf.cast(present, tf.float32)

    def call(self, inputs):
        x, weights = self.month_weights(*inputs)
        return tf.reduce_sum(tf.cast(weights, x.dtype) * x, axis=1)

    def get_config(self):
        return {**super().get_config(), "n_months": self.n_months, "hidden": self.hidden}


def build_temporal_unet(arch, n_months, shape_hw_padded, n_channels, weights="none",
                        decoder_filters=DEFAULT_DECODER_FILTERS, nonneg="softplus", output_scale=1.0,
                        attention_hidden=None, normalize=True, options=None, name=None):
    """Build the temporal UNet (see module doc).

    arch: ``tiny`` or a backbone of ``models``; weights: "none", a named
    pretrained set (adapted to ``n_channels``) or a .h5 file (a checkpoint of
    this model, or backbone weights by layer name); shape_hw_padded: (Hp, Wp),
    multiples of the encoder's stride; options: the UNet-level keys of ``unet_options``, the rest
    backbone builder options; normalize: False feeds the input straight into the backbone.
    """
    if isinstance(n_months, bool) or not isinstance(n_months, int) or n_months < 1:
        raise ValueError(f"n_months must be a positive int, got {n_months!r}")
    if nonneg not in NONNEG:
        raise ValueError(f"nonneg must be one of {', '.join(NONNEG)}, got {nonneg!r}")
    unet.check_channels(n_channels)
    height, width = (int(s) for s in shape_hw_padded)
    input_shape = (height, width, n_channels)
    ours, options = unet_options.split(options)
    extractor, backbone, affine, path, filters = unet.feature_extractor(arch, input_shape, weights, options,
                                                                        decoder_filters, ours["encoder_taps"],
                                                                        ours["stem"])
    image = keras.Input((n_months, *input_shape), dtype="float32", name="image")
    months = keras.Input((n_months,), dtype="float32", name="months")
    x = FoldMonths(name="fold_months")([image, months])
    if normalize and affine is not None:
        x = models.PixelAffine(*unet.channel_affine(affine, n_channels), name="input_norm")(x)
    folded = x
    features = extractor(x)
    features = features if isinstance(features, (list, tuple)) else [features]
    pooled = [MonthAttention(n_months, attention_hidden, name=f"month_attention{k}")([f, months])
              for k, f in enumerate(features)]
    x = unet.decode(pooled, filters, ours["decoder_attention"], ours["decoder_norm"])
    if ours["pixel_skip"]:
        pixels = unet.pixel_path(folded, ours["pixel_skip"])
        pixels = MonthAttention(n_months, attention_hidden, name="month_attention_pixels")([pixels, months])
        x = layers.Concatenate(name="pixel_skip_concat")([x, pixels])
    x = unet.head_conv(ours["head_kernel"], "regression")(x)
    x = layers.Activation("linear", dtype="float32", name="regression_float32")(x)
    if float(output_scale) != 1.0:
        x = layers.Rescaling(float(output_scale), dtype="float32", name="output_scale")(x)
    if nonneg != "none":
        x = layers.Activation(nonneg, dtype="float32", name=f"nonneg_{nonneg}")(x)
    model = keras.Model({"image": image, "months": months}, x,
                        name=name or re.sub(r"[^A-Za-z0-9_]", "_", f"temporal_unet_{arch}"))
    if path is not None:
        models.load_weights_file(model, backbone, path)
    return model
