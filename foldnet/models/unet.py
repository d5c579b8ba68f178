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

Input channels
    Any number. With pretrained weights and ``n_channels != 3``, the
    3-channel backbone is built with its weights and copied into the
    n-channel one; the first convolution's kernel (the one weight whose
    shape differs) is adapted: its mean over the 3 input channels, repeated
    on the n channels and scaled by 3 / n, so a pixel with the same value in
    every channel gives the pretrained response. The backbone's input
    normalisation (ImageNet mean/std on [0, 1] values) is applied to every
    channel with the mean of its 3 channel constants.

Decoder
    From the deepest map up: 2x nearest upsampling, concatenation with the
    skip of that stride, two 3x3 conv-BN-ReLU; after the last skip, up to
    stride 1 the same without skip; then a 3x3 conv to one logit and a
    float32 sigmoid. ``decoder_filters`` lists widths from deep to shallow
    (one per stage); a shallow encoder takes the last entries.
"""
import os
import re

import numpy as np
import tensorflow as tf

from foldnet.core import fileio
from foldnet.models import backbones as models

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
    """{stride: layer name}: for strides 2, 4, ... the last layer of ``backbone`` whose output
    has ``height / stride`` rows; the deepest stride is the backbone's output."""
    found = {}
    for layer in backbone.layers:
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


def adapt_stem_kernel(kernel, n_channels):
    """A ``[kh, kw, 3, out]`` kernel for ``n_channels`` inputs: mean over the 3, repeated, times 3 / n."""
    kernel = np.asarray(kernel)
    mean = kernel.mean(axis=2, keepdims=True)
    return np.repeat(mean, n_channels, axis=2) * (kernel.shape[2] / n_channels)


def transfer_weights(source, target):
    """Copy every weight of ``source`` (a 3-channel backbone) into ``target`` (the same backbone
    with other input channels), adapting input-channel-mismatched conv kernels. Weighted
    layers are paired in order. Returns the names of the adapted layers."""
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
                new.append(adapt_stem_kernel(wa, wb.shape[2]).astype(wb.dtype))
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


def _encoder(arch, input_shape, weights, options):
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
    if named is not None and n_channels != 3:
        pretrained, affine = spec.build((height, width, 3), named, **(options or {}))
        backbone, _ = spec.build(input_shape, None, **(options or {}))
        transfer_weights(pretrained, backbone)
        del pretrained
    else:
        backbone, affine = spec.build(input_shape, named, **(options or {}))
    return backbone, affine, named, path


def _block(x, filters, name):
    x = models.conv_bn(x, filters, 3, 1, 0.9, f"{name}_1")
    return models.conv_bn(x, filters, 3, 1, 0.9, f"{name}_2")


def feature_extractor(arch, input_shape, weights="none", options=None, decoder_filters=DEFAULT_DECODER_FILTERS):
    """The encoder side of a UNet over ``arch`` for ``input_shape`` (H, W, C).

    Returns ``(extractor, backbone, affine, path, filters)``: ``extractor`` a Keras
    model from the backbone's input to its feature maps, deepest first, then one
    skip per shallower power-of-two stride (``skip_layers``); ``affine`` the
    backbone's input normalisation (None for ``tiny``), ``path`` a weights file
    to load after the full model is built (``models.load_weights_file``), or None;
    ``filters`` the decoder widths used (the last entries of ``decoder_filters``,
    one per stride halving).
    """
    height, width, _ = input_shape
    backbone, affine, _, path = _encoder(arch, input_shape, weights, options)
    skips = skip_layers(backbone, height)
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


def decode(features, filters):
    """The UNet decoder: ``features`` deepest first (as ``feature_extractor`` gives them) -> the
    last decoder map at stride 1 (``filters[-1]`` channels)."""
    x, skip_maps = features[0], list(features[1:])
    for stage, width_ in enumerate(filters):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"decoder{stage}_up")(x)
        if stage < len(skip_maps):
            x = layers.Concatenate(name=f"decoder{stage}_concat")([x, skip_maps[stage]])
        x = _block(x, width_, f"decoder{stage}")
    return x


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
        unknown = sorted(set(options) - set(TINY_OPTIONS) - {"decoder_filters"}, key=str)
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
    normalize: apply the backbone's pretrained input normalisation.
    options: extra keyword arguments for the backbone builder.
    """
    height, width = (dim, dim) if isinstance(dim, int) else (int(dim[0]), int(dim[1]))
    check_channels(n_channels)
    input_shape = (height, width, n_channels)
    extractor, backbone, affine, path, filters = feature_extractor(arch, input_shape, weights, options, decoder_filters)

    inputs = keras.Input(input_shape, dtype="float32", name="image")
    x = inputs
    if normalize and affine is not None:
        x = models.PixelAffine(*channel_affine(affine, n_channels), name="input_norm")(x)
    features = extractor(x)
    features = features if isinstance(features, (list, tuple)) else [features]
    x = decode(features, filters)
    x = layers.Conv2D(1, 3, padding="same", name="logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name or re.sub(r"[^A-Za-z0-9_]", "_", f"unet_{arch}"))
    if path is not None:
        models.load_weights_file(model, backbone, path)
    return model
