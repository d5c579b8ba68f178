"""Train-time random transforms and deterministic test-time (TTA) views.

Everything here is made of core TensorFlow ops, so it runs inside
``dataset.map`` (graph mode) and in input pipelines feeding TPUs (no
``tf.py_function``).

Geometry is one matrix per image. Every geometric step (the resize to
``dim x dim``, the random shift/scale/rotation, a flip or rotation from
``TRANSFORMS``) is a 3x3 matrix that maps an output pixel ``(x, y, 1)``
(x = column, y = row down, pixel centres at integers) to the input point it
samples; the steps compose by matrix product, and the image is resampled
once, from the decoded image straight to ``dim x dim`` (``warp``;
ImageProjectiveTransformV3, bilinear, pixels from outside the image mirror
it). Transforms that only permute pixels (flips, 90-degree
rotations) take the cheaper exact path instead: a bilinear resize, then the
permutation; both paths sample the same points. Without a random
shift/scale/rotation, the 45-degree transforms are built as the original
Turtle Recall pipeline built them (``diagonal``: nearest-pixel rotation,
central crop, bilinear resize back up; the crop's pixels looked up in the
decoded image directly, at the points of the matrix): about a third of the
cost of a bilinear warp at dim x dim, the pixel cost the original paid.

The transforms of ``TRANSFORMS``, in this fixed order (``n = dim``):

===========  ==============================================================
identity     the image unchanged
flip_lr      mirror left-right (``np.fliplr``)
flip_ud      mirror top-bottom (``np.flipud``)
rot90/180/270  rotate by k*90 degrees counter-clockwise as displayed (row 0
             at the top), exactly ``np.rot90(image, k)`` / ``tf.image.rot90``
rot45/135/225/315  rotate counter-clockwise by that angle about the centre
             and zoom in to the central square ``tf.image.central_crop(.., 0.7)``
             keeps: side ``n - 2 * int((n - 0.7 n) / 2)`` (360 for n = 512,
             as the original), narrowed by 2 px for the few small n where
             that square would reach outside the rotated image
===========  ==============================================================

``aug_number`` / ``tta_number`` n select the first n transforms after
identity: ``TRANSFORMS[1 : n + 1]``.

Photo-friendly random transforms for training only (never used for TTA),
each off at strength 0:

``crop_scale``, ``rotate_degrees`` (``shift_scale_matrix``)
    zoom by a factor drawn log-uniformly from ``[1 / (1 + crop_scale),
    1 + crop_scale]`` (0.25: 0.8x-1.25x), shift by up to ``crop_scale / 2``
    of the side in each direction, rotate by up to ``rotate_degrees`` either
    way; applied before the flip/rotation of ``TRANSFORMS``.
``random_photometric(image, strength)``
    brightness (+-0.2 s, additive), contrast (x [1 - 0.4 s, 1 + 0.4 s] about
    the image mean), saturation (x [1 - 0.5 s, 1 + 0.5 s] about the grey
    value) and white balance (x [1 - 0.1 s, 1 + 0.1 s] per channel), each
    drawn per image, result clipped to [0, 1]. s = 1 is a strong jitter.

Antialiasing: a bilinear warp that shrinks a side more than 2x aliases.
JPEGs arrive DCT-scaled to at most about 2x ``dim`` (``data.decode_source``);
any larger source (PNG, extreme aspect ratios) is first box-filtered by an
integer factor per side (``_preshrink``) so the warp shrinks at most 2x.

``GeometricAugment`` is the same augmentation as a Keras layer, for running
it on the accelerator inside the model (active in training only).
"""
import math

import numpy as np
import tensorflow as tf

from foldnet.core import transforms

TRANSFORMS = list(transforms.TRANSFORMS)

CROP_FRACTION = 0.7
MAX_NUMBER = transforms.MAX_NUMBER
N_EXACT = len(transforms.DIHEDRAL)  # TRANSFORMS[:6] permute pixels; the rest need a warp
_DEGREES = {"rot45": 45, "rot135": 135, "rot225": 225, "rot315": 315}


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


def _check_strength(value, what, upper=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) or (
            upper is not None and float(value) > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{what} must be a number {bound}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- matrices
# Each maps output pixel (x, y, 1) to the input point it samples.

def resize_matrix(src_height, src_width, dim):
    """Bilinear resize of a src_height x src_width image to dim x dim (half-pixel
    centres, as ``tf.image.resize``). Sizes may be tensors."""
    sx = tf.cast(src_width, tf.float32) / float(dim)
    sy = tf.cast(src_height, tf.float32) / float(dim)
    return tf.stack([tf.stack([sx, 0.0, (sx - 1.0) / 2.0]),
                     tf.stack([0.0, sy, (sy - 1.0) / 2.0]),
                     tf.constant([0.0, 0.0, 1.0])])


def _about_centre(linear, side):
    """The 2x2 ``linear`` map applied about the centre of a side x side image, as 3x3."""
    c = (side - 1) / 2.0
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = c - np.asarray(linear) @ [c, c]
    return out


def _rotation(degrees):
    """Samples the input at the output point turned clockwise on screen (y down),
    so the image turns counter-clockwise as displayed."""
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def transform_matrix(name, side):
    """3x3 numpy matrix of ``TRANSFORMS`` entry ``name`` on a side x side image."""
    if name == "identity":
        return np.eye(3)
    if name == "flip_lr":
        return _about_centre([[-1, 0], [0, 1]], side)
    if name == "flip_ud":
        return _about_centre([[1, 0], [0, -1]], side)
    if name in ("rot90", "rot180", "rot270"):
        return _about_centre(np.rint(_rotation(int(name[3:]))), side)
    zoom = (side - 2 * _crop_start(side)) / side
    return _about_centre(_rotation(_DEGREES[name]) * zoom, side)


def _crop_start(side):
    """First row/column of the central crop of the 45-degree transforms (symmetric margin: it stays centred).

    ``tf.image.central_crop(image, 0.7)``'s start, ``int((side - side * 0.7) / 2)`` truncated, as in the
    original Turtle Recall pipeline (76 for 512: a 360 px crop), unless that crop's corners would reach
    outside the rotated image (crop side >= 1 + side / sqrt(2), only some sides below ~150 px): then one
    pixel more per margin until they do not, so the fill is never sampled."""
    start = int((side - side * CROP_FRACTION) / 2.0)
    while side - 2 * start >= 1 + side / math.sqrt(2.0):
        start += 1
    return start


def crop_matrix(name, side):
    """3x3 numpy matrix of a 45-degree entry ``name`` of ``TRANSFORMS`` before its zoom:
    pixel q of the central crop (side ``side - 2 * _crop_start(side)``) of the image
    rotated about its centre -> the point of the side x side image it samples.
    Resizing that crop to side x side gives ``transform_matrix(name, side)``'s points."""
    start = _crop_start(side)
    shift = np.array([[1.0, 0.0, start], [0.0, 1.0, start], [0.0, 0.0, 1.0]])
    return _about_centre(_rotation(_DEGREES[name]), side) @ shift


def transform_matrices(side):
    """float32 [len(TRANSFORMS), 3, 3]: ``transform_matrix`` of every transform."""
    return tf.constant(np.stack([transform_matrix(name, side) for name in TRANSFORMS]), tf.float32)


def shift_scale_matrix(zoom, degrees, shift, side):
    """Zoom by ``zoom`` (> 1 magnifies), rotate by ``degrees`` counter-clockwise and shift
    the content by ``shift`` (x, y) pixels, about the centre of a side x side image.

    Tensors of shape [B] ([B, 2] for shift) -> [B, 3, 3]: output p samples the
    input at centre + R (p - centre - shift) / zoom.
    """
    c = (side - 1) / 2.0
    theta = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    cx, cy = c + shift[:, 0], c + shift[:, 1]
    zeros, ones = tf.zeros_like(cos), tf.ones_like(cos)
    return tf.stack([tf.stack([cos, -sin, c - cos * cx + sin * cy], -1),
                     tf.stack([sin, cos, c - sin * cx - cos * cy], -1),
                     tf.stack([zeros, zeros, ones], -1)], -2)


# ---------------------------------------------------------------- random draws

def _check_settings(aug_number, aug_probability, crop_scale, rotate_degrees):
    _check_number(aug_number, "aug_number")
    if not 0.0 <= float(aug_probability) <= 1.0:
        raise ValueError(f"aug_probability must be in [0, 1], got {aug_probability!r}")
    crop_scale = _check_strength(crop_scale, "crop_scale", upper=transforms.MAX_CROP_SCALE)
    rotate_degrees = _check_strength(rotate_degrees, "rotate_degrees", upper=transforms.MAX_ROTATE_DEGREES)
    return aug_number, float(aug_probability), crop_scale, rotate_degrees


def random_geometry(batch, side, aug_number=0, aug_probability=0.0, crop_scale=0.0, rotate_degrees=0.0,
                    seed=None):
    """Draw the geometric augmentation of ``batch`` images of side ``side``.

    Returns ``(matrices [batch, 3, 3], index [batch] int32)``: the matrix in
    the side x side space (shift/scale/rotation, then the transform
    ``TRANSFORMS[index]``; compose a resize on the left for another source
    size) and the drawn transform (0: identity). With probability
    ``aug_probability`` a transform is drawn uniformly from
    ``TRANSFORMS[1 : aug_number + 1]``. ``seed``: a shape [2] int tensor for
    stateless draws (same seed, same draws), else stateful random ops.
    """
    aug_number, aug_probability, crop_scale, rotate_degrees = _check_settings(
        aug_number, aug_probability, crop_scale, rotate_degrees)
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, 5))) if seed is not None else None

    def uniform(shape, low=0.0, high=1.0, dtype=tf.float32):
        if seeds is None:
            return tf.random.uniform(shape, low, high, dtype=dtype)
        return tf.random.stateless_uniform(shape, next(seeds), low, high, dtype=dtype)

    if aug_number > 0 and aug_probability > 0.0:
        chosen = uniform([batch], 1, aug_number + 1, dtype=tf.int32)
        index = tf.where(uniform([batch]) < aug_probability, chosen, 0)
        matrices = tf.gather(transform_matrices(side), index)
    else:
        index = tf.zeros([batch], tf.int32)
        matrices = tf.eye(3, batch_shape=[batch])
    if crop_scale > 0.0 or rotate_degrees > 0.0:
        log_zoom = math.log1p(crop_scale)
        zoom = tf.exp(uniform([batch], -log_zoom, log_zoom))
        degrees = uniform([batch], -1.0, 1.0) * rotate_degrees
        shift = uniform([batch, 2], -0.5, 0.5) * (crop_scale * side)
        matrices = tf.matmul(shift_scale_matrix(zoom, degrees, shift, side), matrices)
    return matrices, index


# ---------------------------------------------------------------- resampling

def _mirror(i, n):
    """Integer pixel index -> index inside [0, n) mirrored at the edges (as fill_mode REFLECT)."""
    i = tf.math.floormod(i, 2 * n)
    return tf.where(i >= n, 2 * n - 1 - i, i)


def _sample(images, matrices, size, height, width, fill_mode="REFLECT"):
    """Bilinear resampling of a batch built from gathers: images float [B, Hp, Wp, C]
    whose top-left ``height`` x ``width`` pixels are the image (the rest is
    padding, never read), affine matrices [B, 3, 3] -> [B, size, size, C].
    Out-of-image neighbours are mirrored (REFLECT) or clamped (NEAREST), as
    ImageProjectiveTransformV3 does."""
    shape = tf.shape(images)
    grid = tf.range(size, dtype=tf.float32)
    m = tf.cast(matrices, tf.float32)[:, :, :, tf.newaxis, tf.newaxis]  # [B, 3, 3, 1, 1]
    xs = m[:, 0, 0] * grid[None, None, :] + m[:, 0, 1] * grid[None, :, None] + m[:, 0, 2]
    ys = m[:, 1, 0] * grid[None, None, :] + m[:, 1, 1] * grid[None, :, None] + m[:, 1, 2]
    x0, y0 = tf.floor(xs), tf.floor(ys)
    wx, wy = (xs - x0)[..., None], (ys - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    if fill_mode == "REFLECT":
        def inside(i, n):
            return _mirror(i, n)
    else:
        def inside(i, n):
            return tf.clip_by_value(i, 0, n - 1)
    xa, xb = inside(x0, width), inside(x0 + 1, width)
    ya, yb = inside(y0, height) * shape[2], inside(y0 + 1, height) * shape[2]
    flat = tf.reshape(images, [shape[0], shape[1] * shape[2], shape[3]])
    corners = tf.gather(flat, tf.stack([ya + xa, ya + xb, yb + xa, yb + xb], axis=1), batch_dims=1)
    corners = tf.cast(corners, tf.float32)
    top = corners[:, 0] + (corners[:, 1] - corners[:, 0]) * wx
    bottom = corners[:, 2] + (corners[:, 3] - corners[:, 2]) * wx
    return tf.cast(top + (bottom - top) * wy, images.dtype)


def warp_gather(images, matrices, size):
    """The resampling of ``warp`` for a batch (images float [B, H, W, C], matrices
    [B, 3, 3] affine -> [B, size, size, C]), built from gathers: no
    ImageProjectiveTransform kernel, so it compiles with XLA and runs on TPUs."""
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    return _sample(images, matrices, size, shape[1], shape[2])


def _projective(images, matrices, size, fill_mode="REFLECT"):
    """ImageProjectiveTransformV3 of float32 images [B, H, W, C] by [B, 3, 3] to size x size."""
    flat = tf.reshape(matrices, [-1, 9])[:, :8] / matrices[:, 2:3, 2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(flat, tf.float32), output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(0.0, tf.float32), interpolation="BILINEAR", fill_mode=fill_mode)


def _box_factor(source_side, out_side):
    """Integer box-filter factor bringing a source_side -> out_side shrink to at most 2x."""
    shrink = tf.cast(source_side, tf.float32) / float(out_side)
    return tf.maximum(tf.cast(tf.math.ceil(shrink / 2.0), tf.int32), 1)


def _preshrink(image, fy, fx):
    """Box-filter ``image`` [H, W, C] by integer factors (fy, fx) (``_box_factor``);
    same dtype (integers rounded). Factors of 1 leave the image as is."""
    def pool():
        shape = tf.shape(image)
        hh, ww = shape[0] // fy, shape[1] // fx
        blocks = tf.reshape(tf.cast(image[:hh * fy, :ww * fx], tf.float32), [hh, fy, ww, fx, shape[2]])
        shrunk = tf.reduce_mean(blocks, axis=[1, 3])
        return tf.cast(tf.round(shrunk) if image.dtype.is_integer else shrunk, image.dtype)

    return tf.cond(tf.logical_or(fy > 1, fx > 1), pool, lambda: image)


def _shrink_matrix(fy, fx):
    """Matrix from source coordinates to those of the image box-filtered by (fy, fx)."""
    fxf, fyf = tf.cast(fx, tf.float32), tf.cast(fy, tf.float32)
    # box i covers source pixels [f i, f i + f): its centre is f i + (f - 1) / 2
    return tf.stack([tf.stack([1.0 / fxf, 0.0, -(fxf - 1.0) / (2.0 * fxf)]),
                     tf.stack([0.0, 1.0 / fyf, -(fyf - 1.0) / (2.0 * fyf)]),
                     tf.constant([0.0, 0.0, 1.0])])


def warp(source, matrix, dim, fill_mode="REFLECT"):
    """Resample ``source`` [H, W, C] (any dtype, values kept) once to float32
    [dim, dim, C]: output pixel p takes the bilinear value at ``matrix`` @ p of
    the source; pixels from outside mirror the image (``fill_mode`` NEAREST:
    repeat its border). A source more than 2x larger than dim on a side is
    box-filtered first (``_preshrink``)."""
    shape = tf.shape(source)
    fy, fx = _box_factor(shape[0], dim), _box_factor(shape[1], dim)
    image = _preshrink(tf.cast(source, tf.float32), fy, fx)
    matrix = tf.matmul(_shrink_matrix(fy, fx), tf.cast(matrix, tf.float32))
    out = _projective(image[tf.newaxis], matrix[tf.newaxis], dim, fill_mode)[0]
    return tf.ensure_shape(out, [dim, dim, source.shape[-1]])


def _diagonal_crop(source, index, dim):
    """The central crop of a 45-degree entry of ``TRANSFORMS`` (``index`` >= N_EXACT,
    python int or scalar tensor) of ``source`` [H, W, C] resized to dim x dim:
    [side, side, C] of the source's dtype (uint8 or float32), each pixel the
    source pixel nearest to its point (``crop_matrix``), box-filtered first when
    larger than 2x dim. rot135/225/315 are rot45's crop turned by exact
    90-degree steps (so they are np.rot90 of it, whatever the rounding of ties)."""
    side = dim - 2 * _crop_start(dim)
    shape = tf.shape(source)
    fy, fx = _box_factor(shape[0], dim), _box_factor(shape[1], dim)
    image = _preshrink(source, fy, fx)
    matrix = _shrink_matrix(fy, fx) @ resize_matrix(shape[0], shape[1], dim) @ tf.constant(
        crop_matrix("rot45", dim), tf.float32)
    # every point lies inside the image (_crop_start: at 512 px the crop's corners map to ~254 px
    # from the centre along an axis, inside the 256 px half side), so the fill is never used
    crop = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=tf.reshape(matrix, [1, 9])[:, :8],
        output_shape=tf.constant([side, side], tf.int32), fill_value=tf.constant(0.0, tf.float32),
        interpolation="NEAREST", fill_mode="CONSTANT")[0]
    return tf.image.rot90(crop, k=index - N_EXACT)


def diagonal(source, index, dim):
    """A 45-degree entry of ``TRANSFORMS`` (``index`` >= N_EXACT, python int or scalar
    tensor) of a decoded ``source`` [H, W, C] (uint8 or float, values kept) ->
    float32 [dim, dim, C], built as the original Turtle Recall pipeline built it:
    the image rotated with nearest-pixel sampling (tfa.image.rotate's default),
    its central crop (``crop_matrix``), a bilinear resize back to dim x dim. The
    crop's pixels are looked up in the source directly (``_diagonal_crop``), so
    the sample points are those of ``transform_matrix``; a nearest lookup costs
    about a third of a bilinear warp."""
    source = tf.convert_to_tensor(source)
    if source.dtype not in (tf.uint8, tf.float32):
        source = tf.cast(source, tf.float32)
    crop = _diagonal_crop(source, index, dim)
    return tf.ensure_shape(tf.image.resize(crop, [dim, dim]), [dim, dim, source.shape[-1]])


def resize(source, dim):
    """``source`` [H, W, C] -> float32 [dim, dim, C] (values kept): bilinear, antialiased
    only when a side shrinks more than 2x; a source already dim x dim is only cast."""
    if source.shape[0] == dim and source.shape[1] == dim:
        return tf.cast(source, tf.float32)
    shape = tf.shape(source)
    shrink = tf.cast(tf.maximum(shape[0], shape[1]), tf.float32) / float(dim)
    out = tf.cond(shrink > 2.0,
                  lambda: tf.image.resize(source, [dim, dim], antialias=True),
                  lambda: tf.image.resize(source, [dim, dim]))
    return tf.ensure_shape(tf.cast(out, tf.float32), [dim, dim, source.shape[-1]])


_EXACT = [
    lambda x: x,
    tf.image.flip_left_right,
    tf.image.flip_up_down,
    lambda x: tf.image.rot90(x, k=1),
    lambda x: tf.image.rot90(x, k=2),
    lambda x: tf.image.rot90(x, k=3),
]


def _exact(image, index):
    """TRANSFORMS[index] for index < N_EXACT: a pixel permutation (python int or tensor)."""
    if isinstance(index, int):
        return _EXACT[index](image)
    return tf.switch_case(index, [lambda f=f: f(image) for f in _EXACT])


def geometric(source, dim, aug_number=0, aug_probability=0.0, crop_scale=0.0, rotate_degrees=0.0):
    """Decoded ``source`` [H, W, C] (uint8 or float, values kept) -> float32
    [dim, dim, C] with one random geometric augmentation (see ``random_geometry``),
    resampled once. Without shift/scale/rotation only the images that need it
    are resampled: identity, flips and 90-degree rotations are a resize then the
    exact permutation, the 45-degree rotations ``diagonal``."""
    matrices, index = random_geometry(1, dim, aug_number, aug_probability, crop_scale, rotate_degrees)
    if not source.shape[-1]:
        raise ValueError(f"source needs a static channel count, got shape {source.shape}")
    shape = tf.shape(source)

    def fused():
        return warp(source, tf.matmul(resize_matrix(shape[0], shape[1], dim), matrices[0]), dim)

    def exact():
        return _exact(resize(source, dim), tf.minimum(index[0], N_EXACT - 1))

    def diagonal_():
        return diagonal(source, tf.maximum(index[0], N_EXACT), dim)

    if crop_scale > 0.0 or rotate_degrees > 0.0:
        return fused()
    if aug_number < N_EXACT:
        return exact() if aug_number and aug_probability else resize(source, dim)
    return tf.ensure_shape(tf.cond(index[0] >= N_EXACT, diagonal_, exact), [dim, dim, source.shape[-1]])


# ---------------------------------------------------------------- square-image API

def apply_transform(image, index):
    """Apply ``TRANSFORMS[index]`` to ``image`` [H, W, C] (H == W).

    ``index`` is a python int or a scalar integer tensor (then chosen at run
    time with ``tf.switch_case``; only the selected branch runs).
    """
    image = _check_image(image)
    side = image.shape[0]
    if isinstance(index, int):
        if not 0 <= index <= MAX_NUMBER:
            raise ValueError(f"transform index must be in [0, {MAX_NUMBER}], got {index}")
        if index < N_EXACT:
            return _exact(image, index)
        return tf.cast(diagonal(image, index, side), image.dtype)
    index = tf.cast(index, tf.int32)
    branches = [lambda i=i: apply_transform(image, i) for i in range(len(TRANSFORMS))]
    return tf.ensure_shape(tf.switch_case(index, branches), image.shape)


def rotate(image, degrees):
    """Rotate ``image`` [H, W, C] counter-clockwise by ``degrees`` about its centre
    (bilinear, pixels from outside repeat the nearest border pixel). Same shape and dtype."""
    image = _check_image(image)
    side = image.shape[0]
    matrix = _about_centre(_rotation(degrees), side)
    return tf.cast(warp(image, matrix, side, fill_mode="NEAREST"), image.dtype)


def random_augment(image, aug_number, aug_probability):
    """Randomly transform ``image`` [H, W, C] for training.

    With probability ``aug_probability`` apply one transform drawn uniformly
    from ``TRANSFORMS[1 : aug_number + 1]``; otherwise return the image
    unchanged. ``aug_number == 0`` never transforms.
    """
    image = _check_image(image)
    _check_settings(aug_number, aug_probability, 0.0, 0.0)
    if aug_number == 0 or float(aug_probability) == 0.0:
        return image
    return tf.cast(geometric(image, image.shape[0], aug_number, aug_probability), image.dtype)


def random_shift_scale(image, crop_scale, rotate_degrees=0.0):
    """Random zoom, shift and rotation of ``image`` [H, W, C] (one affine map, see module doc).

    ``crop_scale == rotate_degrees == 0`` returns the image unchanged.
    """
    image = _check_image(image)
    _, _, crop_scale, rotate_degrees = _check_settings(0, 0.0, crop_scale, rotate_degrees)
    if crop_scale == 0.0 and rotate_degrees == 0.0:
        return image
    out = geometric(image, image.shape[0], 0, 0.0, crop_scale, rotate_degrees)
    return tf.ensure_shape(tf.cast(out, image.dtype), image.shape)


# ---------------------------------------------------------------- photometric

def photometric(images, strength, seed=None):
    """Random brightness, contrast, saturation and white balance of a batch
    ``images`` [B, H, W, C] in [0, 1] (see module doc), drawn per image, clipped
    to [0, 1]. Grey (1-channel) images get brightness and contrast only.
    ``seed``: shape [2] int tensor for stateless draws."""
    s = _check_strength(strength, "photometric strength", upper=transforms.MAX_PHOTOMETRIC)
    if s == 0.0:
        return images
    x = tf.cast(images, tf.float32)
    batch, channels = tf.shape(x)[0], images.shape[-1]
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, 4))) if seed is not None else None

    def uniform(shape, low, high):
        if seeds is None:
            return tf.random.uniform(shape, low, high)
        return tf.random.stateless_uniform(shape, next(seeds), low, high)

    def factor(spread, channels_=1):
        return uniform([batch, 1, 1, channels_], max(1.0 - spread * s, 0.0), 1.0 + spread * s)

    if channels == 3:
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = grey + (x - grey) * factor(0.5)
        x = x * factor(0.1, channels)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * factor(0.4)
    x = x + uniform([batch, 1, 1, 1], -0.2 * s, 0.2 * s)
    return tf.cast(tf.clip_by_value(x, 0.0, 1.0), images.dtype)


def random_photometric(image, strength):
    """``photometric`` of one image [H, W, C]; ``strength == 0`` returns it unchanged."""
    image = _check_image(image)
    _check_strength(strength, "photometric strength", upper=transforms.MAX_PHOTOMETRIC)
    return photometric(image[tf.newaxis], strength)[0]


# ---------------------------------------------------------------- TTA

def tta_names(tta_number):
    """Names of the views returned by ``tta_views``: identity first."""
    _check_number(tta_number, "tta_number")
    return TRANSFORMS[: tta_number + 1]


def tta_views(source, tta_number, dim=None):
    """``[tta_number + 1, dim, dim, C]``: the identity view, then TRANSFORMS[1..tta_number].

    ``source``: a decoded image [H, W, C] (uint8 or float, values kept; then
    give ``dim``) or a square float image (``dim`` defaults to its side). The
    identity view is the resize, flips and 90-degree rotations permute it, the
    45-degree views are each built from the source by ``diagonal``.
    """
    names = tta_names(tta_number)
    source = tf.convert_to_tensor(source)
    if dim is None:
        source = _check_image(source)
        dim = source.shape[0]
    base = resize(source, dim)
    views = [_exact(base, i) for i in range(min(len(names), N_EXACT))]
    views += [diagonal(source, i, dim) for i in range(N_EXACT, len(names))]
    dtype = source.dtype if source.dtype.is_floating else tf.float32
    return tf.cast(tf.stack(views), dtype)


# ---------------------------------------------------------------- in the model

class GeometricAugment(tf.keras.layers.Layer):
    """The training augmentation as a layer: the first layer of a model that is fed
    un-augmented ``[batch, dim, dim, C]`` images in [0, 1].

    In training each image gets a matrix from ``random_geometry`` (same
    distribution as the input pipeline) and one resampling (``warp_gather``:
    gathers only, so it compiles with XLA and runs on TPUs and GPUs), then
    ``photometric``. At inference it passes its input through unchanged. No
    weights: checkpoints load with or without it.
    """

    def __init__(self, aug_number=0, aug_probability=0.0, crop_scale=0.0, rotate_degrees=0.0,
                 photometric_strength=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # also under mixed precision: pixels stay float32
        super().__init__(**kwargs)
        self.settings = dict(zip(("aug_number", "aug_probability", "crop_scale", "rotate_degrees"),
                                 _check_settings(aug_number, aug_probability, crop_scale, rotate_degrees)))
        self.photometric_strength = _check_strength(photometric_strength, "photometric strength", upper=transforms.MAX_PHOTOMETRIC)

    def augment(self, images, seed=None):
        """Augment a batch [B, dim, dim, C] (always, training or not)."""
        images = tf.convert_to_tensor(images)
        side = images.shape[1]
        batch = tf.shape(images)[0]
        geometry_seed, photo_seed = (None, None) if seed is None else tf.unstack(
            tf.random.experimental.stateless_split(seed, 2))
        s = self.settings
        if s["crop_scale"] > 0 or s["rotate_degrees"] > 0 or (s["aug_number"] and s["aug_probability"]):
            matrices, _ = random_geometry(batch, side, seed=geometry_seed, **s)
            images = warp_gather(images, matrices, side)
        if self.photometric_strength > 0:
            images = photometric(images, self.photometric_strength, seed=photo_seed)
        return images

    def call(self, inputs, training=None):
        if not training:
            return inputs
        return self.augment(inputs)

    def get_config(self):
        s = self.settings
        return {**super().get_config(), "aug_number": s["aug_number"], "aug_probability": s["aug_probability"],
                "crop_scale": s["crop_scale"], "rotate_degrees": s["rotate_degrees"],
                "photometric_strength": self.photometric_strength}
