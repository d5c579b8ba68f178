"""Architecture registry and ``build_model`` (DESIGN.md, Contract 3).

Every model takes float32 images ``[batch, dim, dim, n_channels]`` in [0, 1]
and returns float32 softmax probabilities ``[batch, n_classes]`` (also under a
mixed precision policy). Layers, in order::

    image -> input_norm (PixelAffine, if the backbone expects it) -> backbone
          -> pool (2D/1D global average, if the backbone does not pool)
          -> head_dropout (if dropout > 0) -> logits (Dense) -> probabilities

``input_norm`` maps [0, 1] pixels to what the backbone's pretrained weights
were trained with (``ARCHITECTURES[name].input_norm``):

=========  ===============================================================
none       [0, 1] unchanged (tiny_cnn, small_cnn: BatchNorm nets)
imagenet   (x - mean) / std with ImageNet mean/std (efficientnet package
           B0/B7: its preprocess_input "torch" mode; kecam EfficientNetV1
           L2: rescale_mode "torch")
inception  2x - 1, i.e. [-1, 1] (kecam EfficientNetV2 L/XL and BEiT:
           rescale_mode "tf")
auto       ``kecam:`` / ``keras:`` names: taken from the model's
           ``rescale_mode`` (kecam) or its module's ``preprocess_input``
           (keras.applications; e.g. MobileNetV2 -> 2x - 1, EfficientNet ->
           255x because the model normalises inside)
=========  ===============================================================

The original Turtle Recall solution fed x/255 straight into every backbone;
``build_model(..., normalize=False)`` does the same.

Adding an architecture is one ``register(...)`` call (or decorator) whose
``build(input_shape, weights, **options)`` returns ``(backbone, affine)``: a
Keras model from images to features (4D maps, 3D tokens or 2D pooled) and the
input normalisation as ``(matrix [3, 3], bias [3])`` in [0, 1] pixel units, or
None.
"""
import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
import tempfile
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from foldnet.core import fileio
from foldnet.core.errors import WeightsError

keras = tf.keras
layers = keras.layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Printed by tf.keras.applications / keras_applications for every input channel count but 1 and 3
# (once per fold); foldnet builds n-channel backbones on purpose, so it is silenced where they are built.
CHANNELS_WARNING = "This model usually expects 1 or 3 input channels"
# Where named pretrained sets that no library downloads (resnet18 / resnet34 ``imagenet``) are looked
# for: $FOLDNET_WEIGHTS_DIR, else the Keras cache ~/.keras/models.
WEIGHTS_DIR_ENV = "FOLDNET_WEIGHTS_DIR"


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    weights: Optional[Tuple[str, ...]]  # named pretrained sets; None: as the library offers
    input_norm: str  # "none" | "imagenet" | "inception" | "auto" (see module doc)
    build: Callable


ARCHITECTURES = {}

GENERIC = {
    "kecam:": "any keras-cv-attention-models model, e.g. kecam:efficientnet.EfficientNetV2B0 "
    "(built with num_classes=0; named weights as the model offers)",
    "keras:": "any tf.keras.applications model, e.g. keras:MobileNetV2 (include_top=False)",
}


def register(name, description, weights=(), input_norm="none", build=None):
    """Add an architecture. Use as ``register(name, ..., build=fn)`` or as a decorator."""
    if input_norm not in ("none", "imagenet", "inception", "auto"):
        raise ValueError(f"unknown input_norm {input_norm!r}")

    def add(fn):
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = Architecture(name, description, None if weights is None else tuple(weights), input_norm, fn)
        return fn

    return add if build is None else add(build)


def list_architectures():
    """[{name, description, weights, input_norm}] for every registered name and generic prefix."""
    rows = [
        {"name": a.name, "description": a.description, "weights": None if a.weights is None else list(a.weights), "input_norm": a.input_norm}
        for a in ARCHITECTURES.values()
    ]
    rows.append({"name": "kecam:<module>.<ClassName>", "description": GENERIC["kecam:"], "weights": None, "input_norm": "auto"})
    rows.append({"name": "keras:<ApplicationName>", "description": GENERIC["keras:"], "weights": ["imagenet"], "input_norm": "auto"})
    return rows


def get_architecture(arch):
    """The ``Architecture`` for a registered name, ``kecam:<module>.<Class>`` or ``keras:<Name>``."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    if isinstance(arch, str) and arch.startswith("kecam:"):
        path = arch[len("kecam:"):]
        _kecam_constructor(path)  # fails early with a clear error
        return Architecture(arch, f"kecam {path}", None, "auto", _kecam(path))
    if isinstance(arch, str) and arch.startswith("keras:"):
        class_name = arch[len("keras:"):]
        if not callable(getattr(keras.applications, class_name, None)):
            raise ValueError(f"{arch!r}: tf.keras.applications has no model {class_name!r}")
        return Architecture(arch, f"tf.keras.applications.{class_name}", ("imagenet",), "auto", _keras_application(class_name))
    names = ", ".join(sorted(ARCHITECTURES))
    raise ValueError(
        f"unknown architecture {arch!r}; registered: {names}; or kecam:<module>.<ClassName>, keras:<ApplicationName>"
    )


# ---------------------------------------------------------------- input normalisation


def mean_std_affine(mean, std):
    """(matrix, bias) of (x - mean) / std per channel, x in [0, 1]."""
    mean = np.broadcast_to(np.asarray(mean, np.float64), (3,))
    std = np.broadcast_to(np.asarray(std, np.float64), (3,))
    return np.diag(1.0 / std), -mean / std


def affine_of(preprocess_input):
    """(matrix, bias) of a per-pixel affine ``preprocess_input`` taking [0, 255] RGB.

    Found by probing it with black and pure-channel pixels, then checked on
    random pixels (raises ValueError if the function is not affine).
    """
    probes = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).reshape(4, 1, 1, 3).astype("float32")
    out = np.asarray(preprocess_input(probes.copy()), np.float64).reshape(4, 3)
    bias = out[0]
    matrix = out[1:] - bias  # row i: response to channel i going 0 -> 1 (in [0, 1] units)
    check = np.random.RandomState(0).uniform(0, 1, (8, 1, 1, 3))
    got = np.asarray(preprocess_input((255.0 * check).astype("float32")), np.float64)
    if not np.allclose(got.reshape(8, 3), check.reshape(8, 3) @ matrix + bias, rtol=1e-4, atol=1e-3):
        raise ValueError(f"{preprocess_input} is not a per-pixel affine map; cannot fold it into the model")
    return matrix, bias


@keras.utils.register_keras_serializable(package="foldnet")
class PixelAffine(layers.Layer):
    """``y = x @ matrix + bias`` on the channel axis (fixed, not trained)."""

    def __init__(self, matrix, bias, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, np.float64).tolist()
        self.bias = np.asarray(bias, np.float64).tolist()

    def call(self, inputs):
        matrix = tf.constant(self.matrix, dtype=self.compute_dtype)
        bias = tf.constant(self.bias, dtype=self.compute_dtype)
        return tf.einsum("...i,ij->...j", inputs, matrix) + bias

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix, "bias": self.bias}


class GeMPool(layers.Layer):
    """Generalised-mean pooling over the spatial axes of [batch, h, w, c]: (mean x^p)^(1/p), p trained
    (starts at ``p``; p = 1 is average pooling, large p tends to max pooling); inputs clipped at ``eps``."""

    def __init__(self, p=3.0, eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.p_init, self.eps = float(p), float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.p_init),
                                 trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        p = tf.cast(self.p, inputs.dtype)
        x = tf.pow(tf.maximum(inputs, tf.cast(self.eps, inputs.dtype)), p)
        return tf.pow(tf.reduce_mean(x, axis=[1, 2]), 1.0 / p)

    def get_config(self):
        return {**super().get_config(), "p": self.p_init, "eps": self.eps}


class CosineLogits(layers.Layer):
    """``scale * cos(feature, class weight)``: the features and every class's weight vector L2-normalised
    (a cosine classifier, NormFace; no bias). Its input stays the un-normalised features."""

    def __init__(self, units, scale=16.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = int(units), float(scale)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        x = tf.math.l2_normalize(inputs, axis=-1)
        w = tf.math.l2_normalize(tf.cast(self.kernel, inputs.dtype), axis=0)
        return tf.cast(self.scale, inputs.dtype) * tf.matmul(x, w)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


def softmax_logits(probs):
    """The logits a softmax output was computed from: Keras's own record (``_keras_logits``, set by the
    softmax activation) or, in a traced graph, the input of its ``Softmax`` op. Raises ValueError when
    neither is there (the output was not made by a softmax layer)."""
    logits = getattr(probs, "_keras_logits", None)
    if logits is not None:
        return logits
    op = getattr(probs, "op", None)  # an eager tensor has no op (``.op`` raises AttributeError)
    if op is not None and op.type == "Softmax":
        return op.inputs[0]
    raise ValueError("the ArcFace loss needs the logits of the model's softmax output (head: arcface)")


class ArcMarginLoss(keras.losses.Loss):
    """ArcFace's loss (additive angular margin, Deng et al. 2019) on a model with the cosine head: the
    cross-entropy of ``scale * cos(theta + margin)`` for the true class and ``scale * cos(theta)`` for the
    others, theta the angle between the features and the class weights. ``y_pred`` is the model's softmax
    output (``scale * cos`` underneath, recovered by ``softmax_logits``), so the margin exists only in the
    loss: predictions stay ``softmax(scale * cos)``. Past theta = pi - margin (where theta + margin would
    wrap around) the target logit is ``cos - margin * sin(margin)`` (insightface's rule), keeping it
    decreasing in theta. ``y_true`` one-hot; ``label_smoothing`` as ``CategoricalCrossentropy``'s."""

    def __init__(self, margin=0.3, scale=16.0, label_smoothing=0.0, name="arcface", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin, self.scale, self.label_smoothing = float(margin), float(scale), float(label_smoothing)

    def call(self, y_true, y_pred):
        logits = tf.cast(softmax_logits(y_pred), tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        cos = tf.clip_by_value(logits / self.scale, -1.0 + 1e-7, 1.0 - 1e-7)
        sin = tf.sqrt(1.0 - tf.square(cos))
        m = self.margin
        shifted = cos * float(np.cos(m)) - sin * float(np.sin(m))
        shifted = tf.where(cos > float(np.cos(np.pi - m)), shifted, cos - m * float(np.sin(m)))
        margin_logits = self.scale * tf.where(y_true > 0.5, shifted, cos)
        n_classes = tf.cast(tf.shape(y_true)[-1], tf.float32)
        target = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / n_classes
        return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=margin_logits)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "scale": self.scale,
                "label_smoothing": self.label_smoothing}


# softmax: average pooling + Dense; cosine: GeM + cosine classifier; arcface: the cosine head's model trained
# with ArcMarginLoss (the same network and predictions; the margin lives in the loss).
HEADS = ("softmax", "cosine", "arcface")


# ---------------------------------------------------------------- backbones


@register("tiny_cnn", "two strided 3x3 convolutions (8, 16 filters); for tests", input_norm="none")
def _tiny_cnn(input_shape, weights):
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inputs, x, name="tiny_cnn_features"), None


def conv_bn(x, filters, kernel, strides, bn_momentum, name, relu=True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x, filters, strides, bn_momentum, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides, bn_momentum, f"{name}_short", relu=False)
    y = conv_bn(x, filters, 3, strides, bn_momentum, f"{name}_a")
    y = conv_bn(y, filters, 3, 1, bn_momentum, f"{name}_b", relu=False)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


@register(
    "small_cnn",
    "small ResNet from scratch (widths 32-64-128, BatchNorm); the CPU demo recipe, 32 px to 128+ px",
    input_norm="none",
)
def _small_cnn(input_shape, weights, width=32, depth=3, blocks=1, start_size=24, bn_momentum=0.9):
    """Stride-2 stem conv, then 2x2 max-pools until the map is <= ``start_size``
    px, then ``depth`` stages of ``blocks`` residual blocks with widths
    ``width * 2**i``, each stage after the first halving the map.

    32 px -> 16, 8, 4; 64 px -> 16, 8, 4; 100 px -> 13, 7, 4; 224 px -> 14, 7, 4.
    """
    for key, value in {"width": width, "depth": depth, "blocks": blocks, "start_size": start_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"small_cnn option {key} must be a positive int, got {value!r}")
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, width, 3, 2, bn_momentum, "stem")
    n_pools = 0
    while x.shape[1] > start_size:
        n_pools += 1
        x = layers.MaxPooling2D(2, padding="same", name=f"stem_pool{n_pools}")(x)
    for stage in range(depth):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(x, width * 2**stage, strides, bn_momentum, f"stage{stage}_block{block}")
    return keras.Model(inputs, x, name="small_cnn_features"), None


def _efficientnet_package(class_name):
    """EfficientNet from the ``efficientnet`` package (qubvel), include_top=False."""

    def build(input_shape, weights):
        import efficientnet.tfkeras as efn

        backbone = getattr(efn, class_name)(input_shape=input_shape, weights=weights, include_top=False)
        return backbone, affine_of(efn.preprocess_input)

    return build


_KECAM_NOT_LOADED = ("will not load weights", "No pretrained available")


class _Tee(io.StringIO):
    """Keeps what is written and passes it on (download progress stays visible)."""

    def __init__(self, stream):
        super().__init__()
        self._stream = stream

    def write(self, text):
        self._stream.write(text)
        return super().write(text)

    def flush(self):
        self._stream.flush()


def _kecam_constructor(path):
    module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"kecam architecture must be kecam:<module>.<ClassName>, got kecam:{path}")
    try:
        module = importlib.import_module(f"keras_cv_attention_models.{module_name}")
    except ImportError as error:
        raise ValueError(f"kecam:{path}: no module keras_cv_attention_models.{module_name} ({error})") from error
    constructor = getattr(module, class_name, None)
    if not callable(constructor):
        raise ValueError(f"kecam:{path}: keras_cv_attention_models.{module_name} has no model {class_name!r}")
    return constructor


def _kecam(path, patch=1):
    """A keras-cv-attention-models model without its classifier (num_classes=0).

    patch: the input side must be a multiple of it (ViTs would silently drop
    the pixels of a partial patch).
    """

    def build(input_shape, weights, **options):
        from keras_cv_attention_models.common_layers import init_mean_std_by_rescale_mode

        if input_shape[0] % patch:
            raise ValueError(f"kecam:{path} needs dim to be a multiple of {patch}, got {input_shape[0]}")
        constructor = _kecam_constructor(path)
        # kecam reports a failed or unknown weight download on stdout and goes on
        # with random weights; we turn that into an error.
        with contextlib.redirect_stdout(_Tee(sys.stdout)) as log:
            backbone = constructor(input_shape=input_shape, pretrained=weights, num_classes=0, **options)
        messages = [line for line in log.getvalue().splitlines() if any(m in line for m in _KECAM_NOT_LOADED)]
        if weights is not None and messages:
            raise ValueError(f"kecam:{path}: pretrained weights {weights!r} were not loaded: {messages[0].strip()}")
        mean, std = init_mean_std_by_rescale_mode(backbone.rescale_mode)
        return backbone, mean_std_affine(np.asarray(mean) / 255.0, np.asarray(std) / 255.0)

    return build


def _keras_application(class_name):
    """A tf.keras.applications model with include_top=False."""

    def build(input_shape, weights, **options):
        constructor = getattr(keras.applications, class_name)
        backbone = constructor(input_shape=input_shape, weights=weights, include_top=False, **options)
        return backbone, affine_of(importlib.import_module(constructor.__module__).preprocess_input)

    return build


register("efficientnet_b0", "EfficientNet-B0 (efficientnet package), 4M params",
         weights=("imagenet", "noisy-student"), input_norm="imagenet", build=_efficientnet_package("EfficientNetB0"))
for _b, _params in ((1, 6), (2, 8), (3, 11), (4, 18), (5, 29), (6, 41)):
    register(f"efficientnet_b{_b}", f"EfficientNet-B{_b} (efficientnet package), {_params}M params",
             weights=("imagenet", "noisy-student"), input_norm="imagenet",
             build=_efficientnet_package(f"EfficientNetB{_b}"))
register("efficientnet_b7", "EfficientNet-B7 (efficientnet package), 64M params",
         weights=("imagenet", "noisy-student"), input_norm="imagenet", build=_efficientnet_package("EfficientNetB7"))
register("efficientnet_v1_l2", "EfficientNet-L2 Noisy Student (kecam EfficientNetV1L2), 476M params",
         weights=("noisy_student",), input_norm="imagenet", build=_kecam("efficientnet.EfficientNetV1L2"))
register("efficientnet_v2_l", "EfficientNetV2-L (kecam EfficientNetV2L), 118M params",
         weights=("imagenet", "imagenet21k", "imagenet21k-ft1k"), input_norm="inception",
         build=_kecam("efficientnet.EfficientNetV2L"))
register("efficientnet_v2_xl", "EfficientNetV2-XL (kecam EfficientNetV2XL; no plain imagenet set), 208M params",
         weights=("imagenet21k", "imagenet21k-ft1k"), input_norm="inception",
         build=_kecam("efficientnet.EfficientNetV2XL"))
register("beit_l16", "BEiT-L/16 (kecam BeitLargePatch16), mean-pooled token features; dim a multiple of 16, 303M params",
         weights=("imagenet21k-ft1k",), input_norm="inception", build=_kecam("beit.BeitLargePatch16", patch=16))


# ---------------------------------------------------------------- ResNet-18 / 34


def weights_dir():
    """Directory of local named weight sets: $FOLDNET_WEIGHTS_DIR or ~/.keras/models."""
    return os.environ.get(WEIGHTS_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".keras", "models")


def local_weights_path(arch, weights):
    """The file a named weight set of a foldnet-built backbone is read from (``<arch>_<weights>.h5``)."""
    return os.path.join(weights_dir(), f"{arch}_{weights}.h5")


def _torch_conv(x, filters, kernel, strides, name):
    """A bias-free conv padded as PyTorch pads (kernel // 2 on every side; Keras "same" pads a
    strided conv on the bottom / right only), then BN (eps 1e-5 as torch)."""
    pad = kernel // 2
    if pad and strides > 1:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)


def _basic_block(x, filters, strides, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _torch_conv(x, filters, 1, strides, f"{name}_downsample")
    y = layers.ReLU(name=f"{name}_relu1")(_torch_conv(x, filters, 3, strides, f"{name}_1"))
    y = _torch_conv(y, filters, 3, 1, f"{name}_2")
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _resnet(name):
    """ResNet-18 / 34 (He et al. 2016; torchvision / timm layout): 7x7/2 conv-BN-ReLU (64 channels,
    ``stem_relu``, stride 2), 3x3/2 max-pool, then four stages of basic blocks (64, 128, 256,
    512 channels; strides 4, 8, 16, 32; block outputs ``layerN_blockM_out``). Built from layers,
    no download. ``imagenet``: read from ``local_weights_path(name, "imagenet")`` (a Keras .h5 of
    this architecture, by layer name; ``resnet_weights_from_torch`` makes one from torchvision's
    or timm's weights) when it exists, else a WeightsError."""

    def build(input_shape, weights):
        inputs = keras.Input(input_shape)
        x = layers.ReLU(name="stem_relu")(_torch_conv(inputs, 64, 7, 2, "stem"))
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
        for stage, (n_blocks, filters) in enumerate(zip(RESNET_BLOCKS[name], (64, 128, 256, 512)), 1):
            for block in range(n_blocks):
                strides = 2 if stage > 1 and block == 0 else 1
                x = _basic_block(x, filters, strides, f"layer{stage}_block{block}")
        backbone = keras.Model(inputs, x, name=f"{name}_features")
        if weights is not None:
            path = local_weights_path(name, weights)
            if not os.path.isfile(path):
                raise WeightsError(f"{name} {weights!r} weights are not available offline: {path} does not exist",
                                   [f"put a Keras .h5 of {name} (layer names as foldnet builds it) at {path} "
                                    f"(or set ${WEIGHTS_DIR_ENV}), pass a local file with --weights FILE.h5, "
                                    "or train from scratch with --weights none"])
            backbone.load_weights(path, by_name=True)
        return backbone, mean_std_affine(IMAGENET_MEAN, IMAGENET_STD)

    return build


def resnet_weights_from_torch(arch, state_dict, path):
    """Write ``local_weights_path``-style Keras weights (``path``, .h5) for ``arch`` (resnet18 /
    resnet34) from a torchvision / timm ResNet ``state_dict``: a mapping (or an .npz file) of
    numpy arrays under PyTorch's names (``conv1.weight``, ``bn1.running_mean``,
    ``layer2.0.downsample.0.weight``, ...; the ``fc.*`` head is ignored). Conv kernels
    ``[out, in, kh, kw]`` become ``[kh, kw, in, out]``. Raises ValueError naming missing keys.
    E.g. where PyTorch is installed: ``np.savez("r34.npz", **{k: v.numpy() for k, v in
    torch.load("resnet34.pth").items()})``, then this function on "r34.npz"."""
    if arch not in RESNET_BLOCKS:
        raise ValueError(f"{arch!r} is not one of {', '.join(RESNET_BLOCKS)}")
    if isinstance(state_dict, (str, os.PathLike)):
        with np.load(state_dict) as npz:
            state_dict = {k: npz[k] for k in npz.files}
    backbone, _ = get_architecture(arch).build((64, 64, 3), None)
    pairs = [("stem", "conv1", "bn1")]
    for stage, n_blocks in enumerate(RESNET_BLOCKS[arch], 1):
        for block in range(n_blocks):
            ours, theirs = f"layer{stage}_block{block}", f"layer{stage}.{block}"
            pairs += [(f"{ours}_1", f"{theirs}.conv1", f"{theirs}.bn1"), (f"{ours}_2", f"{theirs}.conv2", f"{theirs}.bn2")]
            if stage > 1 and block == 0:
                pairs.append((f"{ours}_downsample", f"{theirs}.downsample.0", f"{theirs}.downsample.1"))
    needed = [f"{conv}.weight" for _, conv, _ in pairs] + [
        f"{bn}.{k}" for _, _, bn in pairs for k in ("weight", "bias", "running_mean", "running_var")]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise ValueError(f"state dict of {arch} lacks {len(missing)} keys: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    for ours, conv, bn in pairs:
        backbone.get_layer(f"{ours}_conv").set_weights([np.transpose(np.asarray(state_dict[f"{conv}.weight"]), (2, 3, 1, 0))])
        backbone.get_layer(f"{ours}_bn").set_weights([np.asarray(state_dict[f"{bn}.{k}"])
                                                     for k in ("weight", "bias", "running_mean", "running_var")])
    backbone.save_weights(os.fspath(path))
    return path


for _name, _params in (("resnet18", 11), ("resnet34", 21)):
    register(_name, f"{'ResNet-18' if _name == 'resnet18' else 'ResNet-34'} (basic blocks "
             f"{list(RESNET_BLOCKS[_name])}, foldnet-built), {_params}M params; imagenet from a local file",
             weights=("imagenet",), input_norm="imagenet", build=_resnet(_name))


# ---------------------------------------------------------------- weights files


@contextlib.contextmanager
def _local_h5(path):
    """A local path for ``path`` (gs:// and other remote files are copied to a temp file)."""
    if not fileio.is_remote(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
        yield path
        return
    if not fileio.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "weights.h5")
        with open(local, "wb") as f:
            f.write(fileio.read_bytes(path))
        yield local


def _h5_layer_shapes(path):
    """{layer name: [weight shapes]} of a Keras .h5 weights (or full model) file."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = [n.decode("utf8") if isinstance(n, bytes) else n for n in group.attrs.get("layer_names", [])]
        shapes = {}
        for name in names:
            weight_names = group[name].attrs.get("weight_names", [])
            shapes[name] = [tuple(group[name][w.decode("utf8") if isinstance(w, bytes) else w].shape) for w in weight_names]
        return shapes


def _matching_layers(model, file_shapes):
    """Names of ``model``'s layers whose name and weight shapes are in the file."""
    found = []
    for layer in model.layers:
        weights = layer.trainable_weights + layer.non_trainable_weights
        if weights and file_shapes.get(layer.name) == [tuple(w.shape) for w in weights]:
            found.append(layer.name)
    return found


def load_weights_file(model, backbone, path):
    """Load a Keras .h5 weights file into ``model``; returns how it was loaded.

    First the whole model by layer order (a checkpoint of the same
    architecture and head); failing that, by layer name into the model and into
    its ``backbone`` (a checkpoint with another head, or backbone-only
    weights), skipping layers whose shapes differ. Raises ValueError naming the
    file when nothing fits.
    """
    with _local_h5(path) as local:
        try:
            model.load_weights(local)
            return "whole model"
        except (ValueError, KeyError, IndexError, OSError) as error:  # structure differs (or not HDF5)
            whole_error = error
        try:
            file_shapes = _h5_layer_shapes(local)
        except (OSError, KeyError) as error:
            raise WeightsError(f"{path} is not a Keras .h5 weights file", [f"{path}: {error}"]) from error
        loaded = []
        for target in (model, backbone):
            matching = _matching_layers(target, file_shapes)
            if matching:
                target.load_weights(local, by_name=True, skip_mismatch=True)
                loaded.extend(matching)
    if not loaded:
        sample = ", ".join(list(file_shapes)[:8]) or "none"
        raise WeightsError(
            f"no weights in {path} fit {model.name}: loading the whole model failed "
            f"({str(whole_error).splitlines()[0]}) and no layer matches by name and shape "
            f"(file layers: {sample}{', ...' if len(file_shapes) > 8 else ''})",
            [f"{path} was saved from another architecture, head or --dim; pass weights of {model.name}"]
        )
    return f"by name: {len(loaded)} layers"


def load_checkpoint(model, path):
    """``model.load_weights(path)`` for a fold checkpoint of exactly this model; WeightsError
    (a DataError) naming the file if it is unreadable or of another architecture, head or size."""
    try:
        model.load_weights(path)
    except (ValueError, KeyError, IndexError, OSError) as error:
        raise WeightsError(f"{path} is not a checkpoint of {model.name} with this --dim and class count",
                           [f"{path}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__}",
                            "pass the --arch/--dim the checkpoint was trained with, or checkpoints of this member"]
                           ) from error


# ---------------------------------------------------------------- build_model


def parse_weights(spec, weights, n_channels):
    """-> (named set or None, .h5 path or None)."""
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "")):
        return None, None
    weights = os.fspath(weights)
    if weights.endswith((".h5", ".hdf5")) or os.sep in weights or fileio.is_remote(weights):
        return None, weights
    if spec.weights is not None and weights not in spec.weights:
        allowed = ", ".join(("none",) + spec.weights)
        raise ValueError(
            f"architecture {spec.name!r} does not offer weights {weights!r}; "
            f"use one of: {allowed}, or a path to a .h5 weights file"
        )
    if n_channels != 3:
        raise ValueError(f"pretrained weights {weights!r} need n_channels=3, got {n_channels}")
    return weights, None


# What a failed download of pretrained weights looks like: tf.keras get_file raises a plain
# Exception "URL fetch failure on ..."; kecam prints "will not load weights" (an error in ``_kecam``).
_DOWNLOAD_FAILED = ("URL fetch failure", "will not load weights", "No pretrained available")


def fetch_pretrained(arch, weights, size=96):
    """Make sure the named weight set ``weights`` of ``arch`` can be loaded (downloading it into the
    Keras cache if need be) by building the 3-channel backbone once at ``size`` px. A set that
    cannot be had (no network, no cached or local file) is a WeightsError naming the fixes
    (``--weights none`` or a local .h5 file), raised before a run writes anything. Does nothing
    for none, a weights file, or an architecture outside the registry (``tiny``)."""
    try:
        spec = get_architecture(arch)
    except ValueError:
        return
    named, _ = parse_weights(spec, weights, 3)
    if named is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CHANNELS_WARNING)
            spec.build((size, size, 3), named)
    except WeightsError:
        raise
    except Exception as error:  # tf.keras get_file raises a plain Exception on a failed download
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not (isinstance(error, OSError) or any(m in str(error) for m in _DOWNLOAD_FAILED)):
            raise
        raise WeightsError(f"pretrained weights {weights!r} of {arch} could not be loaded (no network and "
                           "not in the Keras cache ~/.keras/models?)",
                           [text[:300], "train from scratch with --weights none, or pass a local Keras .h5 "
                            "weights file with --weights PATH.h5"]) from error
    finally:
        keras.backend.clear_session()


def _pool(features):
    rank = features.shape.rank
    if rank == 4:
        return layers.GlobalAveragePooling2D(name="pool")(features)
    if rank == 3:
        return layers.GlobalAveragePooling1D(name="pool")(features)
    if rank == 2:
        return features
    raise ValueError(f"backbone output has unsupported shape {features.shape}")


def build_model(arch, n_classes, dim, weights="none", n_channels=3, dropout=0.0, name=None,
                normalize=True, options=None, augment_layer=None, head="softmax", head_scale=16.0):
    """Build a classifier: [batch, dim, dim, n_channels] in [0, 1] -> float32 softmax.

    arch: a registered name (``list_architectures()``), ``kecam:<module>.<Class>``
        or ``keras:<ApplicationName>``.
    weights: "none"/None, a named pretrained set the architecture offers, or a
        path (local or gs://) to a Keras .h5 weights file (see ``load_weights_file``).
    dropout: rate of the dropout before the classifier (0 for none).
    name: model name (default: from ``arch``).
    normalize: add the input normalisation the backbone expects (False feeds
        [0, 1] straight in, as the original solution did).
    options: dict of extra keyword arguments for the architecture's builder
        (e.g. small_cnn: width, depth, blocks; kecam: drop_connect_rate).
    augment_layer: a weightless layer applied to the input first (e.g.
        ``augment.GeometricAugment``: active in training only); checkpoints
        load into the model with or without it.
    head: ``softmax`` (global average pooling, Dense, softmax) or ``cosine``
        (an embedding head: GeM pooling, then ``CosineLogits``: ``head_scale``
        x cosine of the features with each class's weights, softmax), or
        ``arcface`` (the cosine head's network; compile it with
        ``ArcMarginLoss``, which adds the angular margin in the loss). The
        classifier layer is named ``logits`` either way (its input: the
        features used by the open-set rule).
    """
    spec = get_architecture(arch)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if not (np.isfinite(head_scale) and head_scale > 0):
        raise ValueError(f"head_scale must be a positive finite number, got {head_scale!r}")
    named, path = parse_weights(spec, weights, n_channels)
    input_shape = (dim, dim, n_channels)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CHANNELS_WARNING)
            backbone, affine = spec.build(input_shape, named, **(options or {}))
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise ValueError(f"architecture {spec.name!r} does not take option(s) {sorted(options or {})}: {error}") from error
        raise

    inputs = keras.Input(input_shape, dtype="float32", name="image")
    x = inputs if augment_layer is None else augment_layer(inputs)
    if normalize and affine is not None and n_channels == 3:
        x = PixelAffine(*affine, name="input_norm")(x)
    features = backbone(x)
    cosine = head in ("cosine", "arcface")
    x = GeMPool(name="pool")(features) if cosine and features.shape.rank == 4 else _pool(features)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="head_dropout")(x)
    x = (CosineLogits(n_classes, head_scale, name="logits") if cosine else
         layers.Dense(n_classes, name="logits"))(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name or re.sub(r"[^A-Za-z0-9_]", "_", spec.name))
    if path is not None:
        load_weights_file(model, backbone, path)
    return model
