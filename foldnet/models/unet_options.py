"""The UNet-level keys of ``arch_options`` (segmentation and temporal UNets), their defaults
and allowed values. Pure Python (no TensorFlow): the engine's config checks them before any
model is built; ``unet`` and ``temporal_unet`` split them off the backbone builder's options.

==================  =========================================================================
encoder_taps        ``expand`` (default; the taps of earlier runs: for each stride the last
                    layer at that resolution, on EfficientNets the expand activation before
                    each downsampling block, and the backbone output) | ``stages`` (the
                    output of the last block of each stage, what timm ``features_only``
                    gives: efficientnet_b5 24, 40, 64, 176, 512 channels; kecam
                    EfficientNetV2-L 32, 64, 96, 224, 640)
decoder_attention   ``none`` (default) | ``scse``: spatial and channel squeeze-excitation
                    (reduction 16) on each concatenation with a skip and after each decoder
                    block, as segmentation_models_pytorch's decoder with ``attention_type="scse"``
decoder_norm        ``batch`` (default; conv without bias, BatchNorm, ReLU) | ``none`` (conv
                    with bias, ReLU)
head_kernel         3 (default) | 1: kernel of the last conv to one channel
stem                ``adapted`` (default: mean of the pretrained RGB kernels, repeated, x 3/n) |
                    ``cyclic`` (timm ``adapt_input_conv``: input channel i takes the kernel of
                    RGB channel i mod 3, x 3/n; one channel: the sum) | ``fresh`` (the stem
                    keeps its random initialisation). Only used when pretrained weights are
                    loaded into a backbone with n != 3 input channels.
pixel_skip          0 (default: off) | N >= 1: a per-pixel path from the model's input (two
                    1x1 conv-ReLU layers of N filters, no spatial context) concatenated with
                    the last decoder map at full resolution, before the head. The temporal
                    UNet runs it on every month and pools the months with its masked attention.
                    What a per-pixel model (gradient boosting) sees, kept sharp beside the
                    decoder's upsampled context.
==================  =========================================================================
"""
import math

CHOICES = {
    "encoder_taps": ("expand", "stages"),
    "decoder_attention": ("none", "scse"),
    "decoder_norm": ("batch", "none"),
    "head_kernel": (3, 1),
    "stem": ("adapted", "cyclic", "fresh"),
}
DEFAULTS = {"encoder_taps": "expand", "decoder_attention": "none", "decoder_norm": "batch", "head_kernel": 3,
            "stem": "adapted", "pixel_skip": 0}
MAX_PIXEL_SKIP = 4096


def split(options):
    """(UNet options with defaults filled in, the remaining backbone options or None)."""
    rest = dict(options or {})
    ours = {k: rest.pop(k, default) for k, default in DEFAULTS.items()}
    return ours, rest or None


def problems(options):
    """One line per bad UNet-level key of ``options`` (the others are the backbone builder's)."""
    out = []
    for key, allowed in CHOICES.items():
        if options and key in options:
            value = options[key]
            if isinstance(value, bool) or value not in allowed:
                out.append(f"arch_options.{key}={value!r}: choose one of {', '.join(str(a) for a in allowed)}")
    if options and "pixel_skip" in options:
        value = options["pixel_skip"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PIXEL_SKIP:
            out.append(f"arch_options.pixel_skip={value!r}: 0 (off) or a number of filters from 1 to {MAX_PIXEL_SKIP}")
    filters = (options or {}).get("decoder_filters")
    if filters is not None:
        ok = isinstance(filters, (list, tuple)) and filters and all(
            not isinstance(f, bool) and isinstance(f, (int, float)) and math.isfinite(f) and f >= 1
            and float(f).is_integer() for f in filters)
        if not ok:
            out.append(f"arch_options.decoder_filters={filters!r}: a list of positive integer widths, deep to shallow")
    return out
