"""Train-time random transforms and deterministic test-time (TTA) views.

Everything here is made of core TensorFlow ops, so it runs inside
``dataset.map`` (graph mode) and in input pipelines feeding TPUs (no
``tf.py_function``).

Images are ``[H, W, C]`` float tensors with ``H == W`` (every transform keeps
the static shape). The transforms, in the fixed order of ``TRANSFORMS``:

===========  ==============================================================
identity     the image unchanged
flip_lr      mirror left-right (``np.fliplr``)
flip_ud      mirror top-bottom (``np.flipud``)
rot90/180/270  rotate by k*90 degrees counter-clockwise as displayed (row 0
             at the top), exactly ``np.rot90(image, k)`` / ``tf.image.rot90``
rot45/135/225/315  rotate counter-clockwise by that angle about the centre
             (bilinear, border pixels repeated), then keep the central square
             of side ``H - 2 * ceil(0.15 * H)`` (about 0.7 H, never more: it
             lies inside the rotated image, whose inscribed square is
             ``H / sqrt(2)``) and resize it back to H x W (bilinear)
===========  ==============================================================

``aug_number`` / ``tta_number`` n select the first n transforms after
identity: ``TRANSFORMS[1 : n + 1]``.

Photo-friendly random transforms for training only (never used for TTA),
each off at strength 0 (the image is returned unchanged):

``random_shift_scale(image, crop_scale, rotate_degrees)``
    one random affine map per image: zoom by a factor drawn log-uniformly
    from ``[1 / (1 + crop_scale), 1 + crop_scale]`` (0.25: 0.8x-1.25x),
    shift by up to ``crop_scale / 2`` of the side in each direction, rotate
    by up to ``rotate_degrees`` either way; bilinear, pixels from outside the
    image mirror the image (no black corners).
``random_photometric(image, strength)``
    brightness (+-0.2 s, additive), contrast (x [1 - 0.4 s, 1 + 0.4 s] about
    the image mean), saturation (x [1 - 0.5 s, 1 + 0.5 s] about the grey
    value) and white balance (x [1 - 0.1 s, 1 + 0.1 s] per channel), each
    drawn per image, result clipped to [0, 1]. s = 1 is a strong jitter.
"""
import math

import tensorflow as tf

from . import config

TRANSFORMS = [
    "identity",
    "flip_lr",
    "flip_ud",
    "rot90",
    "rot180",
    "rot270",
    "rot45",
    "rot135",
    "rot225",
    "rot315",
]

CROP_FRACTION = 0.7
MAX_NUMBER = config.BOUNDS["aug_number"].high
assert MAX_NUMBER == len(TRANSFORMS) - 1 == config.BOUNDS["tta_number"].high, "config.BOUNDS vs TRANSFORMS"


def _check_image(image):
    image = tf.convert_to_tensor(image)
    if not image.dtype.is_floating:
        raise TypeError(f"augment expects a float image, got dtype {image.dtype.name}")
    if image.shape.rank != 3:
        raise ValueError(f"augment expects one image [H, W, C], got shape {image.shape}")
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None or height != width:
        raise ValueError(f"augment expects a square image of static size, got shape {image.shape}")
    return image


def _check_number(number, what):
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"{what} must be an int in [0, {MAX_NUMBER}], got {number!r}")


def rotate(image, degrees):
    """Rotate ``image`` [H, W, C] counter-clockwise by ``degrees`` about its centre.

    Bilinear interpolation; pixels that come from outside the image repeat the
    nearest border pixel. The output has the input's shape.
    """
    image = tf.convert_to_tensor(image)
    height, width = image.shape[0], image.shape[1]
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # The op maps each output pixel (x, y) to the input pixel it samples:
    # x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2 (x = column, y = row down).
    # A counter-clockwise turn on screen (y pointing down) samples the input at
    # the output point turned clockwise about the centre.
    transform = tf.constant(
        [[cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]],
        dtype=tf.float32,
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[tf.newaxis],
        transforms=transform,
        output_shape=tf.constant([height, width], dtype=tf.int32),
        fill_value=tf.constant(0.0, dtype=tf.float32),
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return tf.cast(out[0], image.dtype)


def _rotate_crop(image, degrees):
    side = image.shape[0]
    # A symmetric margin keeps the crop centred, so rotations commute with it.
    start = math.ceil(side * (1.0 - CROP_FRACTION) / 2.0)
    rotated = rotate(image, degrees)[start:side - start, start:side - start, :]
    resized = tf.image.resize(rotated, [side, side], method="bilinear")
    return tf.cast(resized, image.dtype)


_FUNCTIONS = {
    "identity": lambda x: x,
    "flip_lr": tf.image.flip_left_right,
    "flip_ud": tf.image.flip_up_down,
    "rot90": lambda x: tf.image.rot90(x, k=1),
    "rot180": lambda x: tf.image.rot90(x, k=2),
    "rot270": lambda x: tf.image.rot90(x, k=3),
    "rot45": lambda x: _rotate_crop(x, 45),
    "rot135": lambda x: _rotate_crop(x, 135),
    "rot225": lambda x: _rotate_crop(x, 225),
    "rot315": lambda x: _rotate_crop(x, 315),
}
assert list(_FUNCTIONS) == TRANSFORMS


def apply_transform(image, index):
    """Apply ``TRANSFORMS[index]`` to ``image`` [H, W, C] (H == W).

    ``index`` is a python int or a scalar integer tensor (then chosen at run
    time with ``tf.switch_case``; only the selected branch runs).
    """
    image = _check_image(image)
    if isinstance(index, int):
        if not 0 <= index <= MAX_NUMBER:
            raise ValueError(f"transform index must be in [0, {MAX_NUMBER}], got {index}")
        return _FUNCTIONS[TRANSFORMS[index]](image)
    index = tf.cast(index, tf.int32)
    branches = [lambda f=f: f(image) for f in _FUNCTIONS.values()]
    out = tf.switch_case(index, branches)
    return tf.ensure_shape(out, image.shape)


def random_augment(image, aug_number, aug_probability):
    """Randomly transform ``image`` [H, W, C] for training.

    With probability ``aug_probability`` apply one transform drawn uniformly
    from ``TRANSFORMS[1 : aug_number + 1]``; otherwise return the image
    unchanged. ``aug_number == 0`` never transforms.
    """
    image = _check_image(image)
    _check_number(aug_number, "aug_number")
    if not 0.0 <= float(aug_probability) <= 1.0:
        raise ValueError(f"aug_probability must be in [0, 1], got {aug_probability!r}")
    if aug_number == 0 or float(aug_probability) == 0.0:
        return image
    chosen = tf.random.uniform([], minval=1, maxval=aug_number + 1, dtype=tf.int32)
    apply = tf.random.uniform([], dtype=tf.float32) < float(aug_probability)
    return apply_transform(image, tf.where(apply, chosen, 0))


def _check_strength(value, what, upper=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) or (
            upper is not None and float(value) > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{what} must be a number {bound}, got {value!r}")
    return float(value)


def random_shift_scale(image, crop_scale, rotate_degrees=0.0):
    """Random zoom, shift and rotation of ``image`` [H, W, C] (one affine map, see module doc).

    ``crop_scale == rotate_degrees == 0`` returns the image unchanged.
    """
    image = _check_image(image)
    crop_scale = _check_strength(crop_scale, "crop_scale", upper=config.BOUNDS["aug_crop_scale"].high)
    rotate_degrees = _check_strength(rotate_degrees, "rotate_degrees", upper=config.BOUNDS["aug_rotate"].high)
    if crop_scale == 0.0 and rotate_degrees == 0.0:
        return image
    side = image.shape[0]
    log_zoom = math.log1p(crop_scale)
    zoom = tf.exp(tf.random.uniform([], -log_zoom, log_zoom))
    theta = tf.random.uniform([], -1.0, 1.0) * math.radians(rotate_degrees)
    shift = tf.random.uniform([2], -0.5, 0.5) * crop_scale * side  # (x, y) in pixels
    centre = (side - 1) / 2.0
    # Output pixel p samples the input at centre + R(theta) (p - centre - shift) / zoom,
    # R as in ``rotate`` (counter-clockwise on screen).
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    cx, cy = centre + shift[0], centre + shift[1]
    transform = tf.stack([cos, -sin, centre - cos * cx + sin * cy,
                          sin, cos, centre - sin * cx - cos * cy, 0.0, 0.0])[tf.newaxis]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[tf.newaxis],
        transforms=tf.cast(transform, tf.float32),
        output_shape=tf.constant([side, side], dtype=tf.int32),
        fill_value=tf.constant(0.0, dtype=tf.float32),
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return tf.ensure_shape(tf.cast(out[0], image.dtype), image.shape)


def random_photometric(image, strength):
    """Random brightness, contrast, saturation and white balance (see module doc), clipped to [0, 1].

    ``strength == 0`` returns the image unchanged. Grey (1-channel) images get
    brightness and contrast only.
    """
    image = _check_image(image)
    s = _check_strength(strength, "photometric strength", upper=config.BOUNDS["aug_photometric"].high)
    if s == 0.0:
        return image
    x = tf.cast(image, tf.float32)

    def factor(spread, shape=()):
        return tf.random.uniform(shape, max(1.0 - spread * s, 0.0), 1.0 + spread * s)

    channels = image.shape[-1]
    if channels == 3:
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = grey + (x - grey) * factor(0.5)
        x = x * factor(0.1, [channels])
    mean = tf.reduce_mean(x)
    x = mean + (x - mean) * factor(0.4)
    x = x + tf.random.uniform([], -0.2 * s, 0.2 * s)
    return tf.cast(tf.clip_by_value(x, 0.0, 1.0), image.dtype)


def tta_names(tta_number):
    """Names of the views returned by ``tta_views``: identity first."""
    _check_number(tta_number, "tta_number")
    return TRANSFORMS[: tta_number + 1]


def tta_views(image, tta_number):
    """``[tta_number + 1, H, W, C]``: the identity view, then TRANSFORMS[1..tta_number]."""
    image = _check_image(image)
    return tf.stack([_FUNCTIONS[name](image) for name in tta_names(tta_number)])
