"""Dihedral views of raster maps (the TTA vocabulary of the map tasks) and their inverses,
the paired geometric augmentation of an image with its mask/target (one affine warp), and
random flips / quarter turns. Shared by the segmentation and temporal tasks."""
import math

import numpy as np
import tensorflow as tf

from foldnet.core import transforms
from foldnet.core.errors import ConfigError
from foldnet.core.transforms import map_aug_options
from foldnet.raster import spectral

TTA_VIEWS = transforms.MAP_VIEWS  # the map views of the one vocabulary (core.transforms)


_SQUARE_ONLY = ("rot90", "rot270", "transpose")


_INVERSE = {"identity": "identity", "flip_lr": "flip_lr", "flip_ud": "flip_ud", "rot90": "rot270",
            "rot180": "rot180", "rot270": "rot90", "transpose": "transpose"}


def apply_view(x, name):
    """View ``name`` of ``x`` [..., H, W, C] (the last three axes are rows, columns, channels)."""
    if name == "identity":
        return x
    if name == "flip_lr":
        return tf.reverse(x, [-2])
    if name == "flip_ud":
        return tf.reverse(x, [-3])
    if name in ("rot90", "rot180", "rot270"):
        return tf.image.rot90(x, k={"rot90": 1, "rot180": 2, "rot270": 3}[name])
    if name == "transpose":
        rank = x.shape.rank
        return tf.transpose(x, list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1])
    raise ValueError(f"unknown TTA view {name!r}; views: {', '.join(TTA_VIEWS)}")


def check_views(names, height, width):
    names = list(names)
    unknown = [n for n in names if n not in TTA_VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {unknown}; views: {', '.join(TTA_VIEWS)}")
    if not names or names[0] != "identity":
        raise ConfigError(f"TTA views must start with identity, got {names}")
    if height != width and any(n in _SQUARE_ONLY for n in names):
        raise ConfigError(f"TTA views {[n for n in names if n in _SQUARE_ONLY]} need square tiles, got {height}x{width}")
    return names


def invert_tta(predictions, names, height=None, width=None, multiple=spectral.PAD_MULTIPLE):
    """Every TTA view's predicted map back in the original frame, padding cropped.

    predictions: ``[n * T, Hp, Wp]`` or ``[n * T, Hp, Wp, 1]`` as ``tta_dataset`` orders them
    (tile i at rows i*T .. i*T+T-1, identity first). names: the T view names.
    height, width: crop the padding back to this size (``spectral.crop_padding``).
    Returns float32 ``[T, n, H, W]`` (the task seam's ``outputs`` layout).
    """
    x = tf.convert_to_tensor(predictions, tf.float32)
    names = list(names)
    if x.shape.rank == 3:
        x = x[..., tf.newaxis]
    if x.shape.rank != 4 or x.shape[-1] != 1:
        raise ValueError(f"TTA predictions must be [n * T, H, W(, 1)] maps, got shape {x.shape}")
    x = tf.reshape(x, [-1, len(names)] + x.shape[1:].as_list())
    views = []
    for k, name in enumerate(names):
        view = apply_view(x[:, k], _INVERSE[name])
        if height is not None:
            view = spectral.crop_padding(view, height, width if width is not None else height, multiple)
        views.append(view[..., 0])
    return tf.stack(views)


def merge_tta(predictions, names, height=None, width=None, weights=None, multiple=spectral.PAD_MULTIPLE):
    """The (weighted) mean over views of ``invert_tta``: float32 ``[n, H, W]``."""
    views = invert_tta(predictions, names, height, width, multiple)
    w = np.ones(len(names)) if weights is None else np.asarray(weights, np.float64)
    w = tf.constant((w / w.sum()).astype(np.float32))
    return tf.tensordot(w, views, axes=1)


def _random_affine(side_h, side_w, scale, rotate, shift):
    """8-parameter projective transform: zoom log-uniform in [1/(1+scale), 1+scale], rotation
    uniform in +-rotate degrees, shift uniform in +-shift of the side (output -> input)."""
    log_zoom = math.log1p(scale)
    zoom = tf.exp(tf.random.uniform([], -log_zoom, log_zoom)) if scale else tf.constant(1.0)
    theta = tf.random.uniform([], -1.0, 1.0) * math.radians(rotate)
    move = tf.random.uniform([2], -1.0, 1.0) * shift * tf.constant([side_w, side_h], tf.float32)
    cx, cy = (side_w - 1) / 2.0, (side_h - 1) / 2.0
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    ox, oy = cx + move[0], cy + move[1]
    return tf.stack([cos, -sin, cx - cos * ox + sin * oy, sin, cos, cy - sin * ox - cos * oy, 0.0, 0.0])[tf.newaxis]


def _reflect(index, size):
    """Mirror out-of-range integer indices back inside [0, size) (edge repeated: ``d c b a | a b c d``)."""
    index = tf.where(index < 0, -index - 1, index)
    index = tf.where(index >= size, 2 * size - index - 1, index)
    return tf.clip_by_value(index, 0, size - 1)


def warp(x, transform, nearest=False):
    """Resample ``x`` [H, W, C] through ``transform`` (8 parameters, output -> input pixel
    coordinates, as ``ImageProjectiveTransformV3`` takes them, affine part only), pixels from
    outside mirrored. Bilinear, or nearest (for masks).

    Gathers whole channel vectors at once (one index computation per pixel, not per
    channel value): several times faster than ImageProjectiveTransformV3 on many channels.
    """
    height, width, _ = x.shape
    t = tf.reshape(tf.cast(transform, tf.float32), [-1])
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    return sample(x, t[0] * cols + t[1] * rows + t[2], t[3] * cols + t[4] * rows + t[5], nearest)


def sample(x, src_x, src_y, nearest=False):
    """``x`` [H, W, C] read at the source coordinates ``src_x``, ``src_y`` [H, W] of every output pixel
    (columns, rows), pixels from outside mirrored; bilinear, or nearest."""
    height, width, channels = x.shape
    flat = tf.reshape(x, [height * width, channels])

    def at(iy, ix):
        return tf.gather(flat, tf.reshape(_reflect(iy, height) * width + _reflect(ix, width), [-1]))

    if nearest:
        out = at(tf.cast(tf.round(src_y), tf.int32), tf.cast(tf.round(src_x), tf.int32))
    else:
        x0, y0 = tf.floor(src_x), tf.floor(src_y)
        wx, wy = tf.reshape(src_x - x0, [-1, 1]), tf.reshape(src_y - y0, [-1, 1])
        ix, iy = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
        top = at(iy, ix) * (1.0 - wx) + at(iy, ix + 1) * wx
        bottom = at(iy + 1, ix) * (1.0 - wx) + at(iy + 1, ix + 1) * wx
        out = top * (1.0 - wy) + bottom * wy
    return tf.reshape(out, [height, width, channels])


_warp_compiled = tf.function(warp, jit_compile=True, autograph=False)


def _rotation_matrices(side):
    """Output -> input pixel maps (3x3) of ``tf.image.rot90`` by k = 0..3 on a square of ``side``."""
    r1 = np.array([[0.0, -1.0, side - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return np.stack([np.linalg.matrix_power(r1, k) for k in range(4)]).astype(np.float32)


def random_flip_turn(height, width, flip=True, rot90=True):
    """3x3 output -> input pixel map of random flips (left-right, up-down, each with probability 1/2) then a
    random k*90-degree turn (k uniform in 0..3; ``rot90`` only for square tiles)."""
    matrix = tf.eye(3)
    if flip:
        lr, ud = tf.random.uniform([]) < 0.5, tf.random.uniform([]) < 0.5
        sx, tx = tf.where(lr, -1.0, 1.0), tf.where(lr, width - 1.0, 0.0)
        sy, ty = tf.where(ud, -1.0, 1.0), tf.where(ud, height - 1.0, 0.0)
        matrix = tf.reshape(tf.stack([sx, 0.0, tx, 0.0, sy, ty, 0.0, 0.0, 1.0]), [3, 3])
    if rot90:
        k = tf.random.uniform([], 0, 4, tf.int32)
        matrix = matrix @ tf.gather(tf.constant(_rotation_matrices(height)), k)
    return matrix


# The 3rd-place On Cloud N solution's constants (github drivendataorg/cloud-cover-winners, 3rd place/Dataset.py):
CUTOUT_SIZE = 0.4                 # sides randrange(1, int(0.4 * side)) (Dataset.py:128-129)
ELASTIC_ALPHA = (0.25, 1.2)       # iaa.ElasticTransformation(alpha=(0.25, 1.2), sigma=0.2) (Dataset.py:38)
ELASTIC_SIGMA = 0.2
BRIGHTNESS = 0.05                 # per channel + U[-0.05, 0.05) of the [0, 1] range (Dataset.py:106-111)
CONTRAST_SD = 0.1                 # per channel x Normal(1, 0.1), clipped above (Dataset.py:113-117)


def centred_affine(height, width, p=0.0, rotate=0.0, rotate_p=1.0, scale_sd=0.0, scale_p=1.0, shift=0.0):
    """3x3 output -> input pixel map: with probability ``p``, a rotation by an angle uniform in
    +-``rotate`` degrees (drawn with probability ``rotate_p``, else 0) and a zoom ~ Normal(1, ``scale_sd``)
    (drawn with probability ``scale_p``, else 1) about a centre moved from the tile's centre by up to
    ``shift`` of the side on each axis (uniform); the identity otherwise. The centre stays in place
    (``cv2.getRotationMatrix2D`` about a point): no separate translation."""
    fire = tf.random.uniform([]) < p
    angle = tf.where(tf.random.uniform([]) < rotate_p, tf.random.uniform([], -1.0, 1.0) * rotate, 0.0)
    zoom = tf.where(tf.random.uniform([]) < scale_p, 1.0 + tf.random.normal([]) * scale_sd, 1.0)
    zoom = tf.maximum(zoom, 0.05)  # a draw 9.5 sd below the mean would flip the image
    move = tf.random.uniform([2], -1.0, 1.0) * shift * tf.constant([width, height], tf.float32)
    px, py = (width - 1) / 2.0 + move[0], (height - 1) / 2.0 + move[1]
    theta = angle * (math.pi / 180.0)
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    # source = centre + R (output - centre), R the inverse rotation-zoom
    matrix = tf.reshape(tf.stack([cos, -sin, px - cos * px + sin * py, sin, cos, py - sin * px - cos * py,
                                  0.0, 0.0, 1.0]), [3, 3])
    return tf.where(fire, matrix, tf.eye(3))


def _gaussian_blur(planes, sigma):
    """``planes`` [N, H, W] blurred by a normalised Gaussian of ``sigma`` pixels (mirrored borders)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2)
    taps = tf.constant(taps / taps.sum(), tf.float32)
    x = tf.pad(planes[..., tf.newaxis], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, tf.reshape(taps, [-1, 1, 1, 1]), 1, "VALID")
    x = tf.nn.conv2d(x, tf.reshape(taps, [1, -1, 1, 1]), 1, "VALID")
    return x[..., 0]


def elastic(image, alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA):
    """``image`` [H, W, C] resampled (bilinear) at every pixel moved by alpha * blur(U(-1, 1), sigma) on each
    axis, alpha ~ U(alpha): one displacement field for every channel (imgaug's ElasticTransformation)."""
    height, width, _ = image.shape
    strength = tf.random.uniform([], float(alpha[0]), float(alpha[1]))
    shift = _gaussian_blur(tf.random.uniform([2, height, width], -1.0, 1.0), sigma) * strength
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    return sample(image, cols + shift[0], rows + shift[1])


def cutout_box(height, width, size=CUTOUT_SIZE):
    """bool [H, W]: one rectangle of sides uniform in 1 .. int(size * side) - 1 at a uniform position
    where it fits (the winner's ``random.randrange`` bounds)."""
    limit_h, limit_w = max(int(height * size), 2), max(int(width * size), 2)
    box_h = tf.random.uniform([], 1, limit_h, tf.int32)
    box_w = tf.random.uniform([], 1, limit_w, tf.int32)
    top = tf.random.uniform([], 0, tf.maximum(height - box_h, 1), tf.int32)
    left = tf.random.uniform([], 0, tf.maximum(width - box_w, 1), tf.int32)
    rows, cols = tf.range(height)[:, tf.newaxis], tf.range(width)[tf.newaxis, :]
    return (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)


def photometric(image, p, value_range=(0.0, 1.0)):
    """With probability ``p``, every channel + U[-0.05, 0.05) of the value range, clipped to it; then, drawn
    again with probability ``p``, every channel's distance to the range's low end x Normal(1, 0.1), clipped
    above (on [0, 1] exactly the winner's brightness and gain; on [-1, 1] the same maps after 2u - 1).
    value_range None: no clipping, shift in absolute units, gain about 0."""
    channels = image.shape[-1]
    low, high = value_range if value_range is not None else (0.0, None)
    span = (high - low) if high is not None else 1.0
    shifted = image + tf.random.uniform([channels], -BRIGHTNESS, BRIGHTNESS) * span
    if high is not None:
        shifted = tf.minimum(tf.maximum(shifted, low), high)
    image = tf.where(tf.random.uniform([]) < p, shifted, image)
    gained = low + tf.random.normal([channels], 1.0, CONTRAST_SD) * (image - low)
    if high is not None:
        gained = tf.minimum(gained, high)
    return tf.where(tf.random.uniform([]) < p, gained, image)


def paired_augment(image, mask, valid, flip=True, rot90=True, scale=0.0, rotate=0.0, shift=0.0, map_aug=None,
                   value_range=(0.0, 1.0)):
    """The same random geometric transform of ``image`` [H, W, C] (float), ``mask`` and ``valid`` [H, W].

    flip: left-right and up-down, each with probability 1/2. rot90: k*90 degrees,
    k uniform in 0..3 (square tiles only). scale/rotate/shift: one small affine
    map (0: off), bilinear for the image, nearest for mask and valid, pixels
    from outside mirrored. Returns (image, mask float32, valid float32); the image
    is float32, or keeps its dtype when there is no affine map (whole pixels move).

    map_aug: the ``map_aug`` setting (``core.transforms.MAP_AUG_DEFAULTS``): with
    probability ``p`` the ``centred_affine`` (instead of scale/rotate/shift), the mask
    nearest or, with ``target_interp: bilinear``, bilinear (the caller thresholds a binary
    mask; valid is thresholded at 0.5 here); then, on the image values in ``value_range``
    (the features' range; None: unbounded), ``photometric`` (``photometric_p``), an
    ``elastic`` jitter of the image alone (``elastic_p``) and a ``cutout_box`` set to the
    range's low end in the image and to 0 in the mask (``cutout_p``), in that order.

    Flips, rotation and affine map are composed into one pixel map, applied by one
    XLA-compiled ``warp`` (flips and 90-degree turns land on whole pixels, so they
    are exact, also under bilinear interpolation); without the affine map, the
    flips and turns are a transpose and reversals instead (``_apply_dihedral``).
    """
    opts = map_aug_options(map_aug)
    centred = bool(opts["p"] and (opts["rotate"] or opts["scale_sd"] or opts["shift"]))
    per_value = bool(opts["photometric_p"] or opts["elastic_p"] or opts["cutout_p"])
    affine = bool(scale or rotate or shift) or centred
    image = tf.cast(image, tf.float32) if affine or per_value else tf.convert_to_tensor(image)
    height, width, _ = image.shape
    maps = tf.stack([tf.cast(mask, tf.float32), tf.cast(valid, tf.float32)], -1)
    rot90 = rot90 and height == width
    if flip or rot90 or affine:
        matrix = random_flip_turn(height, width, flip, rot90)
        if centred:
            matrix = matrix @ centred_affine(float(height), float(width), opts["p"], opts["rotate"], opts["rotate_p"],
                                             opts["scale_sd"], opts["scale_p"], opts["shift"])
        elif affine:
            t = _random_affine(float(height), float(width), float(scale), float(rotate), float(shift))[0]
            matrix = matrix @ tf.reshape(tf.concat([t[:6], [0.0, 0.0, 1.0]], 0), [3, 3])
        if not affine:  # whole-pixel map: a transpose and reversals, no resampling
            maps = _apply_dihedral(maps, matrix)
            image = _apply_dihedral(image, matrix)
        else:
            transform = tf.concat([tf.reshape(matrix[:2], [6]), [0.0, 0.0]], 0)[tf.newaxis]
            image = _warp_compiled(image, transform)
            maps = _warp_compiled(maps, transform, nearest=not (centred and opts["target_interp"] == "bilinear"))
            maps = tf.stack([maps[..., 0], tf.cast(maps[..., 1] > 0.5, tf.float32)], -1)
    mask, valid = maps[..., 0], maps[..., 1]
    if opts["photometric_p"]:
        image = photometric(image, opts["photometric_p"], value_range)
    if opts["elastic_p"]:
        image = tf.cond(tf.random.uniform([]) < opts["elastic_p"], lambda: elastic(image), lambda: image)
    if opts["cutout_p"]:
        box = cutout_box(height, width) & (tf.random.uniform([]) < opts["cutout_p"])
        fill = float(value_range[0]) if value_range is not None else 0.0
        image = tf.where(box[..., tf.newaxis], fill, image)
        mask = tf.where(box, 0.0, mask)
    return image, mask, valid


def _apply_dihedral(x, matrix):
    """``warp`` of ``x`` [H, W, C] through a 3x3 output -> input pixel map made of flips and
    90-degree turns only (entries 0 / +-1 and whole-pixel offsets), as a transpose and axis
    reversals: the same values without a gather (2-5x faster on many channels)."""
    transposed = tf.not_equal(matrix[0, 1], 0.0)  # the source column follows the output row
    x = tf.cond(transposed, lambda: tf.transpose(x, [1, 0, 2]), lambda: x)
    reverse_rows = tf.where(transposed, matrix[0, 1], matrix[1, 1]) < 0
    reverse_cols = tf.where(transposed, matrix[1, 0], matrix[0, 0]) < 0
    x = tf.cond(reverse_rows, lambda: tf.reverse(x, [0]), lambda: x)
    return tf.cond(reverse_cols, lambda: tf.reverse(x, [1]), lambda: x)
