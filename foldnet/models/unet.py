"""UNet decoder over the registered backbones (segmentation task).

``build_unet(arch, n_channels, dim)``: float32 features ``[B, H, W,
n_channels]`` -> float32 sigmoid probabilities ``[B, H, W, 1]`` (also under a
mixed precision policy). H and W must be multiples of the encoder's output
stride (32 for the EfficientNets, 8 for ``tiny``); ``spectral.pad_to_multiple``
pads tiles to 32.

Encoder
    Any backbone of ``foldnet.models.backbones``' registry that returns a feature map
    (``efficientnet_b0`` .. ``efficientnet_b7`` of the efficientnet package,
    the kecam EfficientNet V1/V2 entries, ``kecam:efficientnet.EfficientNetV2B0``,
    ...), or ``tiny``: a small conv-BN-ReLU encoder (widths 16-32-64,
    strides 2-4-8) for tests and the CPU demo. Skip connections are picked by
    feature-map stride: for each stride 2, 4, 8, 16 the *last* layer whose
    output has exactly H/stride rows (on EfficientNet the expand activation
    just before each downsampling block, e.g. ``block2a_expand_activation``).

    ``arch_options: {encoder_taps: stages}`` taps the output of the last
    block of each stage instead (``stage_layers``; timm ``features_only``:
    ``block1a_project_bn`` / ``blockNx_add`` on the efficientnet package,
    ``stack_N_blockM_output`` on kecam EfficientNets).

Input channels
    Any number. With pretrained weights and ``n_channels != 3``, the
    3-channel backbone is built with its weights and copied into the
    n-channel one; the first convolution's kernel (the one weight whose
    shape differs) is adapted (``stem``): by default (``adapted``) its mean
    over the 3 input channels, repeated on the n channels and scaled by 3 / n,
    so a pixel with the same value in every channel gives the pretrained
    response; ``cyclic``: channel i takes RGB kernel i mod 3, times 3 / n
    (timm); ``fresh``: the stem keeps its random initialisation. The backbone's input
    normalisation (ImageNet mean/std on [0, 1] values) is applied to every
    channel with the mean of its 3 channel constants.

Decoder
    From the deepest map up: 2x nearest upsampling, concatenation with the
    skip of that stride, two 3x3 conv-BN-ReLU; after the last skip, up to
    stride 1 the same without skip; then a 3x3 conv to one logit and a
    float32 sigmoid. ``decoder_filters`` lists widths from deep to shallow
    (one per stage); a shallow encoder takes the last entries.
    ``decoder_norm: none``: conv (with bias) + ReLU without BatchNorm;
    ``decoder_attention: scse``: ``scse`` on each concatenation with a skip
    and after each block; ``head_kernel: 1``: a 1x1 logit conv.
    ``pixel_skip: N``: a per-pixel path from the (normalised) input, two 1x1
    conv-ReLU layers of N filters (``pixel_path``), concatenated with the last
    decoder map before the head.

All UNet-level ``arch_options`` keys: ``foldnet.models.unet_options``.
"""
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from foldnet.core import fileio
from foldnet.models import backbones as models
from foldnet.models import unet_options

keras = tf.keras
layers = keras.layers

TINY = "tiny"
DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)


def _tiny_encoder(input_shape, widths=(16, 32, 64), bn_momentum=0.9):
    inputs = keras.Input(input_shape)
    x = inputs
    for k, width in enumerate(widths):
        x = models.conv_bn(x, width, 3, 2, bn_momentum, f"enc{k}_down")
        x = models.conv_bn(x, width, 3, 1, bn_momentum, f"enc{k}_conv")
    return keras.Model(inputs, x, name="tiny_encoder")


def skip_layers(backbone, height):
    """{stride: layer name}: for strides 2, 4, ... the last layer of ``backbone`` (zero paddings
    aside) whose output has ``height / stride`` rows; the deepest stride is the backbone's output."""
    found = {}
    for layer in backbone.layers:
        if isinstance(layer, layers.ZeroPadding2D):  # a padded map is not a feature (2x2 + 1 = 4x4)
            continue
        try:
            shape = layer.output.shape
        except AttributeError:  # a layer used at several places has no single output
            continue
        if shape.rank != 4 or not shape[1]:
            continue
        stride = height // shape[1]
        if stride >= 2 and stride * shape[1] == height and stride & (stride - 1) == 0:
            found[stride] = layer.name
    rows = backbone.output.shape[1]
    if backbone.output.shape.rank != 4 or not rows or height % rows or (height // rows) & (height // rows - 1):
        raise ValueError(f"backbone {backbone.name} must end in a feature map whose stride divides H = {height} "
                         f"(output shape {backbone.output.shape}); H and W must be multiples of the encoder's "
                         "stride (32 for EfficientNets, 8 for tiny): pad with spectral.pad_to_multiple")
    deepest = height // rows
    found[deepest] = backbone.output_names[0]
    return {s: n for s, n in sorted(found.items()) if s <= deepest}


# The output of the last block of a stage: efficientnet package (block1a has no residual add),
# kecam EfficientNet V1/V2, foldnet's own ResNets / small_cnn, and the tiny encoder.
STAGE_OUTPUT = re.compile(r"^(block\d+[a-z]+_(add|project_bn)|stack_?\d+_block\d+_output|stem_relu"
                          r"|(layer|stage)\d+_block\d+_out|enc\d+_conv_relu)$")


def stage_layers(backbone, height):
    """{stride: layer name}: for strides 2, 4, ... the last *stage output* (``STAGE_OUTPUT``) whose
    output has ``height / stride`` rows: the block outputs timm's ``features_only`` gives
    (efficientnet_b5: 24, 40, 64, 176, 512 channels), not the expand activations and the 1x1
    head conv of ``skip_layers``."""
    expand = skip_layers(backbone, height)
    deepest = max(expand)
    found = {}
    for layer in backbone.layers:
        if not STAGE_OUTPUT.match(layer.name):
            continue
        shape = layer.output.shape
        if shape.rank == 4 and shape[1] and height % shape[1] == 0:
            found[height // shape[1]] = layer.name
    missing = [s for s in expand if s not in found]
    if missing:
        raise ValueError(f"encoder_taps stages: backbone {backbone.name} has no recognised stage output at "
                         f"stride(s) {missing} (known: efficientnet package, kecam EfficientNets, resnet18/34, "
                         "small_cnn, tiny); use encoder_taps expand")
    return {s: found[s] for s in sorted(expand) if s <= deepest}


def adapt_stem_kernel(kernel, n_channels):
    """A ``[kh, kw, 3, out]`` kernel for ``n_channels`` inputs: mean over the 3, repeated, times 3 / n."""
    kernel = np.asarray(kernel)
    mean = kernel.mean(axis=2, keepdims=True)
    return np.repeat(mean, n_channels, axis=2) * (kernel.shape[2] / n_channels)


def cyclic_stem_kernel(kernel, n_channels):
    """timm's ``adapt_input_conv`` for a ``[kh, kw, 3, out]`` kernel: one channel takes the sum of
    the 3; otherwise input channel i takes the kernel of channel i mod 3, all times 3 / n."""
    kernel = np.asarray(kernel)
    if n_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    return kernel[:, :, np.arange(n_channels) % kernel.shape[2], :] * (kernel.shape[2] / n_channels)


STEMS = {"adapted": adapt_stem_kernel, "cyclic": cyclic_stem_kernel, "fresh": None}


def transfer_weights(source, target, stem="adapted"):
    """Copy every weight of ``source`` (a 3-channel backbone) into ``target`` (the same backbone
    with other input channels), adapting input-channel-mismatched conv kernels by ``stem``
    (``STEMS``; ``fresh`` keeps ``target``'s own initial kernel). Weighted layers are paired in
    order. Returns the names of the adapted layers."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    src = [layer for layer in source.layers if layer.weights]
    dst = [layer for layer in target.layers if layer.weights]
    if len(src) != len(dst):
        raise ValueError(f"cannot transfer weights: {len(src)} weighted layers in {source.name}, "
                         f"{len(dst)} in {target.name}")
    adapted = []
    for a, b in zip(src, dst):
        new = []
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            if wa.shape == wb.shape:
                new.append(wa)
            elif wa.ndim == 4 and wa.shape[:2] == wb.shape[:2] and wa.shape[3] == wb.shape[3]:
                new.append(wb if STEMS[stem] is None else STEMS[stem](wa, wb.shape[2]).astype(wb.dtype))
                adapted.append(b.name)
            else:
                raise ValueError(f"cannot transfer weights of layer {a.name}: shape {wa.shape} -> {wb.shape}")
        b.set_weights(new)
    return adapted


def channel_affine(affine, n_channels):
    """The backbone's 3-channel input affine (matrix [3, 3], bias [3]) for ``n_channels``."""
    matrix, bias = (np.asarray(a, np.float64) for a in affine)
    if n_channels == 3:
        return matrix, bias
    if not np.allclose(matrix, np.diag(np.diag(matrix))):
        raise ValueError("a non-diagonal input normalisation cannot be spread over other channel counts")
    return np.eye(n_channels) * np.diag(matrix).mean(), np.full(n_channels, bias.mean())


def _encoder(arch, input_shape, weights, options, stem="adapted"):
    """(backbone, input affine or None, named weights used, weights file or None)."""
    if arch == TINY:
        path = None
        if weights not in (None, "none", ""):
            path = os.fspath(weights)
            if not (path.endswith((".h5", ".hdf5")) or os.sep in path or fileio.is_remote(path)):
                raise ValueError("the tiny UNet has no pretrained weights; use weights none or a .h5 file")
        return _tiny_encoder(input_shape, **(options or {})), None, None, path
    spec = models.get_architecture(arch)
    named, path = models.parse_weights(spec, weights, 3)
    height, width, n_channels = input_shape
    with warnings.catch_warnings():
        # tf.keras.applications / keras_applications warn for every channel count but 1 and 3
        warnings.filterwarnings("ignore", message=models.CHANNELS_WARNING)
        if named is not None and n_channels != 3:
            pretrained, affine = spec.build((height, width, 3), named, **(options or {}))
            backbone, _ = spec.build(input_shape, None, **(options or {}))
            transfer_weights(pretrained, backbone, stem)
            del pretrained
        else:
            backbone, affine = spec.build(input_shape, named, **(options or {}))
    return backbone, affine, named, path


def _conv_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _block(x, filters, name, norm="batch"):
    if norm == "none":
        return _conv_relu(_conv_relu(x, filters, f"{name}_1"), filters, f"{name}_2")
    x = models.conv_bn(x, filters, 3, 1, 0.9, f"{name}_1")
    return models.conv_bn(x, filters, 3, 1, 0.9, f"{name}_2")


def scse(x, name, reduction=16):
    """Concurrent spatial and channel squeeze-excitation (Roy et al. 2018; smp's ``SCSEModule``):
    ``x * cSE + x * sSE`` with cSE = sigmoid(conv1x1(relu(conv1x1(GAP(x))))) (C -> C // reduction
    -> C) and sSE = sigmoid(conv1x1(x) -> 1 channel)."""
    channels = int(x.shape[-1])
    c = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    c = layers.Conv2D(max(channels // reduction, 1), 1, activation="relu", name=f"{name}_cse_reduce")(c)
    c = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_cse_expand")(c)
    s = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_sse")(x)
    return layers.Add(name=f"{name}_add")([layers.Multiply(name=f"{name}_cse_mul")([x, c]),
                                           layers.Multiply(name=f"{name}_sse_mul")([x, s])])


def feature_extractor(arch, input_shape, weights="none", options=None, decoder_filters=DEFAULT_DECODER_FILTERS,
                      encoder_taps="expand", stem="adapted"):
    """The encoder side of a UNet over ``arch`` for ``input_shape`` (H, W, C).

    Returns ``(extractor, backbone, affine, path, filters)``: ``extractor`` a Keras
    model from the backbone's input to its feature maps, deepest first, then one
    skip per shallower power-of-two stride (``skip_layers``); ``affine`` the
    backbone's input normalisation (None for ``tiny``), ``path`` a weights file
    to load after the full model is built (``models.load_weights_file``), or None;
    ``filters`` the decoder widths used (the last entries of ``decoder_filters``,
    one per stride halving). ``encoder_taps``: ``expand`` (``skip_layers``) or ``stages``
    (``stage_layers``); ``stem``: see ``transfer_weights``.
    """
    height, width, _ = input_shape
    if encoder_taps not in unet_options.CHOICES["encoder_taps"]:
        raise ValueError(f"encoder_taps must be one of {unet_options.CHOICES['encoder_taps']}, got {encoder_taps!r}")
    backbone, affine, _, path = _encoder(arch, input_shape, weights, options, stem)
    skips = (stage_layers if encoder_taps == "stages" else skip_layers)(backbone, height)
    deepest = max(skips)
    if height % deepest or width % deepest:
        raise ValueError(f"UNet over {arch!r} needs H and W multiples of {deepest}, got {height}x{width} "
                         "(pad with spectral.pad_to_multiple)")
    n_stages = int(np.log2(deepest))
    filters = tuple(decoder_filters)
    if len(filters) < n_stages:
        raise ValueError(f"decoder_filters needs {n_stages} widths for an encoder of stride {deepest}, got {filters}")
    filters = filters[len(filters) - n_stages:]
    names = [skips[s] for s in sorted(skips, reverse=True)]
    extractor = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names],
                            name=f"{backbone.name}_features")
    return extractor, backbone, affine, path, filters


def decode(features, filters, attention="none", norm="batch"):
    """The UNet decoder: ``features`` deepest first (as ``feature_extractor`` gives them) -> the
    last decoder map at stride 1 (``filters[-1]`` channels). ``attention``: ``none`` or ``scse``
    (on each concatenation with a skip, and after each block); ``norm``: ``batch`` or ``none``."""
    if attention not in unet_options.CHOICES["decoder_attention"]:
        raise ValueError(f"decoder_attention must be one of {unet_options.CHOICES['decoder_attention']}, "
                         f"got {attention!r}")
    if norm not in unet_options.CHOICES["decoder_norm"]:
        raise ValueError(f"decoder_norm must be one of {unet_options.CHOICES['decoder_norm']}, got {norm!r}")
    x, skip_maps = features[0], list(features[1:])
    for stage, width_ in enumerate(filters):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"decoder{stage}_up")(x)
        if stage < len(skip_maps):
            x = layers.Concatenate(name=f"decoder{stage}_concat")([x, skip_maps[stage]])
            if attention == "scse":
                x = scse(x, f"decoder{stage}_attention1")
        x = _block(x, width_, f"decoder{stage}", norm)
        if attention == "scse":
            x = scse(x, f"decoder{stage}_attention2")
    return x


def pixel_path(x, filters, name="pixel_skip"):
    """The ``pixel_skip`` path: two 1x1 conv (with bias) + ReLU layers of ``filters`` channels on
    ``x`` (no spatial context: what a per-pixel model sees), at the input's resolution."""
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"pixel_skip must be a positive int, got {filters!r}")
    x = layers.Conv2D(filters, 1, activation="relu", name=f"{name}_conv1")(x)
    return layers.Conv2D(filters, 1, activation="relu", name=f"{name}_conv2")(x)


def head_conv(kernel, name):
    """The last conv to one channel (``head_kernel`` 3 or 1)."""
    if kernel not in unet_options.CHOICES["head_kernel"]:
        raise ValueError(f"head_kernel must be one of {unet_options.CHOICES['head_kernel']}, got {kernel!r}")
    return layers.Conv2D(1, kernel, padding="same", name=name)


def arch_problems(arch):
    """[] if ``arch`` is ``tiny`` or a backbone of the registry, else [the registry's message]."""
    if arch == TINY:
        return []
    try:
        models.get_architecture(arch)
    except ValueError as e:
        return [str(e)]
    return []


def _positive_ints(value):
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536 for v in value)


# Options of the tiny encoder (``_tiny_encoder``'s keyword arguments).
TINY_OPTIONS = ("widths", "bn_momentum")


def options_problems(arch, options):
    """Problems of a UNet's ``arch_options`` that can be known before a model is built: the decoder's
    and the tiny encoder's widths (non-empty lists of positive integers), the tiny encoder's keys."""
    options = dict(options or {})
    problems = []
    if "decoder_filters" in options and not _positive_ints(options["decoder_filters"]):
        problems.append(f"arch_options: decoder_filters must be a list of positive integers, got "
                        f"{options['decoder_filters']!r}")
    if arch == TINY:
        # the UNet's own options (unet_options: taps, decoder attention/norm, head, stem) are checked there
        unknown = sorted(set(options) - set(TINY_OPTIONS) - {"decoder_filters"} - set(unet_options.DEFAULTS), key=str)
        if unknown:
            problems.append(f"arch_options: unknown option(s) {unknown} of the tiny UNet "
                            f"(it takes {', '.join(TINY_OPTIONS)}, decoder_filters)")
        if "widths" in options and not _positive_ints(options["widths"]):
            problems.append(f"arch_options: widths must be a list of positive integers, got {options['widths']!r}")
        momentum = options.get("bn_momentum", 0.9)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            problems.append(f"arch_options: bn_momentum must be a number in [0, 1), got {momentum!r}")
    return problems


def check_channels(n_channels):
    if isinstance(n_channels, bool) or not isinstance(n_channels, int) or n_channels < 1:
        raise ValueError(f"n_channels must be a positive int, got {n_channels!r}")


def build_unet(arch, n_channels, dim, weights="none", decoder_filters=DEFAULT_DECODER_FILTERS, name=None,
               normalize=True, options=None):
    """Build a UNet: ``[B, H, W, n_channels]`` -> float32 sigmoid ``[B, H, W, 1]``.

    arch: ``tiny`` or a backbone of ``models`` (registered name, ``kecam:...``, ``keras:...``).
    dim: side (int) or (H, W).
    weights: "none", a named pretrained set of the backbone (adapted to
        ``n_channels``, see module doc) or a Keras .h5 file (a UNet checkpoint,
        or backbone weights loaded by layer name).
    normalize: apply the backbone's pretrained input normalisation (False: the input goes
        straight into the backbone).
    options: the UNet-level keys of ``unet_options`` (encoder_taps, decoder_attention,
        decoder_norm, head_kernel, stem, pixel_skip); the rest are keyword arguments of the
        backbone builder.
    """
    height, width = (dim, dim) if isinstance(dim, int) else (int(dim[0]), int(dim[1]))
    check_channels(n_channels)
    input_shape = (height, width, n_channels)
    ours, options = unet_options.split(options)
    extractor, backbone, affine, path, filters = feature_extractor(
        arch, input_shape, weights, options, decoder_filters, ours["encoder_taps"], ours["stem"])

    inputs = keras.Input(input_shape, dtype="float32", name="image")
    x = inputs
    if normalize and affine is not None:
        x = models.PixelAffine(*channel_affine(affine, n_channels), name="input_norm")(x)
    features = extractor(x)
    features = features if isinstance(features, (list, tuple)) else [features]
    pixels = pixel_path(x, ours["pixel_skip"]) if ours["pixel_skip"] else None
    x = decode(features, filters, ours["decoder_attention"], ours["decoder_norm"])
    if pixels is not None:
        x = layers.Concatenate(name="pixel_skip_concat")([x, pixels])
    x = head_conv(ours["head_kernel"], "logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name or re.sub(r"[^A-Za-z0-9_]", "_", f"unet_{arch}"))
    if path is not None:
        models.load_weights_file(model, backbone, path)
    return model
