import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.tasks.classification import augment

SIZE = 12


def _image(size=SIZE, channels=3, seed=0):
    """A small image with no symmetry: every transform changes it."""
    return np.random.RandomState(seed).rand(size, size, channels).astype("float32")


def _np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


EXACT = {
    "identity": lambda x: x,
    "flip_lr": np.fliplr,
    "flip_ud": np.flipud,
    "rot90": lambda x: np.rot90(x, 1),
    "rot180": lambda x: np.rot90(x, 2),
    "rot270": lambda x: np.rot90(x, 3),
}


def test_transform_names_and_order():
    assert augment.TRANSFORMS == [
        "identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270",
        "rot45", "rot135", "rot225", "rot315",
    ]


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_transforms_match_numpy(name):
    x = _image()
    index = augment.TRANSFORMS.index(name)
    np.testing.assert_array_equal(_np(augment.apply_transform(x, index)), EXACT[name](x))
    # Same result when the index is a tensor (tf.switch_case path).
    np.testing.assert_array_equal(_np(augment.apply_transform(x, tf.constant(index))), EXACT[name](x))


def test_rot90_is_counter_clockwise_as_displayed():
    x = np.zeros((5, 5, 1), np.float32)
    x[0, 4, 0] = 1.0  # top-right corner
    out = _np(augment.apply_transform(x, augment.TRANSFORMS.index("rot90")))
    assert out[0, 0, 0] == 1.0  # counter-clockwise: top-right -> top-left


def test_rotate_by_right_angles_matches_rot90():
    x = _image(9)
    for k in (1, 2, 3):
        np.testing.assert_allclose(_np(augment.rotate(x, 90 * k)), np.rot90(x, k), atol=1e-5)


def test_rotate45_moves_a_point_counter_clockwise():
    x = np.zeros((21, 21, 1), np.float32)
    x[10, 18, 0] = 1.0  # 8 px right of the centre
    out = _np(augment.rotate(x, 45))[..., 0]
    rows, cols = np.indices(out.shape)
    r, c = (rows * out).sum() / out.sum(), (cols * out).sum() / out.sum()
    # Counter-clockwise on screen: right of centre -> up and right, 45 degrees.
    expected = 8 / np.sqrt(2)
    assert abs((10 - r) - expected) < 0.3 and abs((c - 10) - expected) < 0.3


@pytest.mark.parametrize("size", [9, 32])
def test_diagonal_rotations_are_consistent(size):
    x = _image(size)
    r45 = _np(augment.apply_transform(x, augment.TRANSFORMS.index("rot45")))
    assert r45.shape == x.shape
    for k, name in [(1, "rot135"), (2, "rot225"), (3, "rot315")]:
        other = _np(augment.apply_transform(x, augment.TRANSFORMS.index(name)))
        np.testing.assert_allclose(other, np.rot90(r45, k), atol=1e-4)
    assert np.abs(r45 - x).max() > 0.1


def test_diagonal_rotation_of_constant_image_is_constant():
    x = np.full((32, 32, 3), 0.25, np.float32)
    for name in ["rot45", "rot135", "rot225", "rot315"]:
        out = _np(augment.apply_transform(x, augment.TRANSFORMS.index(name)))
        np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_diagonal_rotation_zooms_in():
    # The crop keeps ~0.7 of the side: a centred disc grows by ~1/0.7.
    size = 64
    rows, cols = np.indices((size, size))
    radius = np.hypot(rows - 31.5, cols - 31.5)
    x = (radius < 10).astype(np.float32)[..., None]
    out = _np(augment.apply_transform(x, augment.TRANSFORMS.index("rot45")))
    area_ratio = (out > 0.5).sum() / x.sum()
    scale = size / (size - 2 * augment._crop_start(size))
    assert abs(area_ratio - scale**2) < 0.15 * scale**2


def test_diagonal_crop_is_tf_central_crop_of_the_original():
    # The original's 45-degree views: tf.image.central_crop(rotated, 0.7), start truncated (360 px of 512).
    # Sides where that square would reach outside the rotated image (32, 33) lose a pixel per margin.
    assert 512 - 2 * augment._crop_start(512) == 360
    for size in (32, 33, 40, 64, 100, 101, 255, 512, 513):
        want = tf.image.central_crop(tf.zeros([size, size, 1]), augment.CROP_FRACTION).shape[0]
        if size in (32, 33):
            assert want >= 1 + size / np.sqrt(2) and size - 2 * augment._crop_start(size) == want - 2, size
            continue
        assert size - 2 * augment._crop_start(size) == want, size
        np.testing.assert_allclose(augment.transform_matrix("rot45", size)[:2, :2],
                                   augment._rotation(45) * want / size)


def test_random_augment_probability_zero_is_identity():
    x = _image()
    for _ in range(20):
        np.testing.assert_array_equal(_np(augment.random_augment(x, 9, 0.0)), x)
    np.testing.assert_array_equal(_np(augment.random_augment(x, 0, 1.0)), x)


_VIEWS = {}


def _which(x, out):
    key = (x.shape, x.tobytes())
    if key not in _VIEWS:
        _VIEWS[key] = _np(augment.tta_views(x, 9))
    return [i for i, v in enumerate(_VIEWS[key]) if np.allclose(v, out, atol=1e-5)]


def test_random_augment_probability_one_covers_all_and_never_identity():
    tf.random.set_seed(1)
    x = _image()
    seen = set()
    for _ in range(120):
        match = _which(x, _np(augment.random_augment(x, 5, 1.0)))
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {1, 2, 3, 4, 5}


def test_random_augment_half_probability_mixes():
    tf.random.set_seed(2)
    x = _image()
    n_identity = sum(_which(x, _np(augment.random_augment(x, 2, 0.5))) == [0] for _ in range(100))
    assert 25 <= n_identity <= 75


def test_random_augment_in_dataset_map_graph_mode():
    tf.random.set_seed(3)
    x = _image(16)
    ds = tf.data.Dataset.from_tensors(x).repeat(200).map(lambda im: augment.random_augment(im, 9, 1.0))
    seen = set()
    for out in ds:
        assert out.shape == (16, 16, 3)
        match = _which(x, out.numpy())
        assert len(match) == 1 and match[0] != 0
        seen.add(match[0])
    assert seen == set(range(1, 10))


def test_random_augment_validates_arguments():
    with pytest.raises(ValueError, match="aug_number"):
        augment.random_augment(_image(), 10, 0.5)
    with pytest.raises(ValueError, match="aug_probability"):
        augment.random_augment(_image(), 3, 1.5)
    with pytest.raises(ValueError, match="square"):
        augment.random_augment(np.zeros((4, 6, 3), np.float32), 3, 0.5)


def test_tta_views_shape_order_and_names():
    x = _image()
    views = _np(augment.tta_views(x, 5))
    assert views.shape == (6, SIZE, SIZE, 3)
    assert augment.tta_names(5) == ["identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270"]
    for view, name in zip(views, augment.tta_names(5)):
        np.testing.assert_array_equal(view, EXACT[name](x))
    assert augment.tta_names(0) == ["identity"]
    assert _np(augment.tta_views(x, 0)).shape == (1, SIZE, SIZE, 3)


def test_tta_views_in_dataset_map():
    x = _image(16)
    ds = tf.data.Dataset.from_tensors(x).map(lambda im: augment.tta_views(im, 9)).batch(2)
    batch = next(iter(ds)).numpy()
    assert batch.shape == (1, 10, 16, 16, 3)
    for i in range(10):
        np.testing.assert_allclose(batch[0, i], _np(augment.apply_transform(x, i)), atol=1e-6)


# ---------------------------------------------------------------- photo transforms

PHOTO_TRANSFORMS = {
    "shift_scale": lambda x, s: augment.random_shift_scale(x, 0.25 * s, 0.0),
    "rotate": lambda x, s: augment.random_shift_scale(x, 0.0, 15.0 * s),
    "photometric": lambda x, s: augment.random_photometric(x, 0.5 * s),
}


def _photo(size=24, seed=0):
    """A smooth, asymmetric image in [0, 1] (a gradient plus a bright square)."""
    rows, cols = np.indices((size, size)) / (size - 1)
    x = np.stack([rows, cols, 0.5 * (rows + cols)], axis=-1)
    x[size // 4:size // 2, size // 5:size // 2] = [0.9, 0.2, 0.4]
    return (0.8 * x + 0.1 + 0.02 * np.random.RandomState(seed).rand(size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", list(PHOTO_TRANSFORMS))
def test_photo_transform_at_strength_zero_is_identity(name):
    x = _photo()
    np.testing.assert_array_equal(_np(PHOTO_TRANSFORMS[name](x, 0)), x)


@pytest.mark.parametrize("name", list(PHOTO_TRANSFORMS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_photo_transform_keeps_shape_dtype_range_and_changes_the_image(name, dtype):
    tf.random.set_seed(4)
    x = _photo().astype(dtype)
    outs = [PHOTO_TRANSFORMS[name](x, 1) for _ in range(6)]
    for out in outs:
        assert out.shape == x.shape and out.dtype == tf.as_dtype(dtype)
        values = _np(out).astype("float32")
        assert values.min() >= 0.0 and values.max() <= 1.0
    changes = [np.abs(_np(out).astype("float32") - x.astype("float32")).mean() for out in outs]
    assert min(changes) > 1e-3  # every draw changes the image
    assert np.abs(_np(outs[0]).astype("float32") - _np(outs[1]).astype("float32")).mean() > 1e-3  # random


def test_shift_scale_of_constant_image_is_constant():
    # Pixels from outside the image are mirrored: no black corners after zoom-out and rotation.
    x = np.full((20, 20, 3), 0.6, np.float32)
    for _ in range(10):
        np.testing.assert_allclose(_np(augment.random_shift_scale(x, 0.5, 30.0)), 0.6, atol=1e-5)


def test_shift_scale_moves_a_point_within_its_bounds():
    # A bright dot at the centre lands within zoom 0.8-1.25 + shift 12.5 % + rotation of it.
    tf.random.set_seed(5)
    size = 41
    x = np.zeros((size, size, 1), np.float32)
    x[20, 20, 0] = 1.0
    x = _np(tf.nn.avg_pool2d(x[None], 3, 1, "SAME")[0])  # a small blob, survives bilinear sampling
    offsets = []
    for _ in range(30):
        out = _np(augment.random_shift_scale(x, 0.25, 15.0))[..., 0]
        rows, cols = np.indices(out.shape)
        r, c = (rows * out).sum() / out.sum(), (cols * out).sum() / out.sum()
        offsets.append(np.hypot(r - 20, c - 20))
    assert max(offsets) <= 0.125 * size * np.sqrt(2) + 0.5
    assert max(offsets) > 1.0  # it does move


def test_photometric_on_one_channel_is_an_affine_map_of_the_pixels():
    tf.random.set_seed(6)
    x = _photo()[..., :1] * 0.5 + 0.25  # stays inside [0, 1]: no clipping
    out = _np(augment.random_photometric(x, 0.5))
    assert out.shape == x.shape
    slope, intercept = np.polyfit(x.ravel(), out.ravel(), 1)
    np.testing.assert_allclose(out, slope * x + intercept, atol=1e-5)  # brightness and contrast only
    assert abs(slope - 1) > 1e-3 or abs(intercept) > 1e-3


def test_photo_transforms_in_dataset_map_graph_mode():
    tf.random.set_seed(7)
    x = _photo(16)

    def both(image):
        image = augment.random_shift_scale(image, 0.25, 15.0)
        image = augment.random_augment(image, 1, 0.5)
        return augment.random_photometric(image, 0.5)

    outs = [out.numpy() for out in tf.data.Dataset.from_tensors(x).repeat(8).map(both)]
    assert all(out.shape == (16, 16, 3) and 0.0 <= out.min() and out.max() <= 1.0 for out in outs)
    assert len({out.tobytes() for out in outs}) == 8  # a new draw per element


def test_photo_transforms_validate_arguments():
    with pytest.raises(ValueError, match="crop_scale"):
        augment.random_shift_scale(_photo(), -0.1)
    with pytest.raises(ValueError, match="rotate_degrees"):
        augment.random_shift_scale(_photo(), 0.1, 200.0)
    with pytest.raises(ValueError, match="photometric"):
        augment.random_photometric(_photo(), 3.0)
    with pytest.raises(ValueError, match="square"):
        augment.random_photometric(np.zeros((4, 6, 3), np.float32), 0.5)


def test_train_dataset_applies_photo_transforms(tiny_tfrec):
    from foldnet.io import records
    from foldnet.tasks.classification import data

    tf.random.set_seed(8)
    files = records.fold_files(records.load_manifest(tiny_tfrec), [0])
    plain = data.train_dataset(files, 6, 16, 4, shuffle_buffer=1, seed=0)
    jittered = data.train_dataset(files, 6, 16, 4, shuffle_buffer=1, seed=0, aug_crop_scale=0.25,
                                  aug_rotate=15.0, aug_photometric=0.5)
    originals = np.concatenate([images.numpy() for images, _ in plain.take(6)])
    changed = np.concatenate([images.numpy() for images, _ in jittered.take(6)])
    assert changed.shape == originals.shape and changed.dtype == np.float32
    assert changed.min() >= 0.0 and changed.max() <= 1.0
    # No jittered image is one of the decoded originals.
    distances = np.abs(changed[:, None] - originals[None]).mean(axis=(2, 3, 4))
    assert distances.min() > 1e-3


# ---------------------------------------------------------------- one matrix per image

import math  # noqa: E402


def _old_rotate_crop(image, degrees):
    """The two-step implementation before the fused warp: rotate (border repeated),
    crop the central square, resize it back (the reference for "same outputs")."""
    side = image.shape[0]
    start = augment._crop_start(side)
    rotated = augment.rotate(image, degrees)[start:side - start, start:side - start, :]
    return tf.image.resize(rotated, [side, side], method="bilinear")


def _old_shift_scale(image, zoom, degrees, shift):
    """The former random_shift_scale with its draws given."""
    side = image.shape[0]
    c = (side - 1) / 2.0
    theta = math.radians(degrees)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    cx, cy = c + shift[0], c + shift[1]
    t = tf.constant([[cos, -sin, c - cos * cx + sin * cy, sin, cos, c - sin * cx - cos * cy, 0.0, 0.0]], tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=t, output_shape=[side, side], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")[0]


def _smooth_source(height, width, seed=0):
    """A smooth photo-like uint8 image (low-frequency waves plus a soft blob)."""
    rows, cols = np.indices((height, width)) / max(height, width)
    rng = np.random.RandomState(seed)
    chans = [np.sin(2 * np.pi * (rng.uniform(1, 3) * rows + rng.uniform(1, 3) * cols) + rng.uniform(0, 6))
             for _ in range(3)]
    img = 0.5 + 0.35 * np.stack(chans, -1)
    img += 0.15 * np.exp(-((rows - 0.3) ** 2 + (cols - 0.6) ** 2) / 0.01)[..., None]
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def _apply_matrix(matrix, x, y):
    p = np.asarray(matrix, np.float64) @ np.array([x, y, 1.0])
    return p[0] / p[2], p[1] / p[2]


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_transform_matrices_permute_pixels_like_numpy(name):
    side = 7
    x = _image(side)
    expected = EXACT[name](x)
    m = augment.transform_matrix(name, side)
    for row in range(side):
        for col in range(side):
            sx, sy = _apply_matrix(m, col, row)
            assert abs(sx - round(sx)) < 1e-9 and abs(sy - round(sy)) < 1e-9
            np.testing.assert_array_equal(expected[row, col], x[int(round(sy)), int(round(sx))])


def test_diagonal_matrices_rotate_and_zoom_about_the_centre():
    side = 41
    zoom = (side - 2 * int((side - side * augment.CROP_FRACTION) / 2)) / side  # tf.image.central_crop's
    c = (side - 1) / 2
    for name, degrees in [("rot45", 45), ("rot135", 135), ("rot225", 225), ("rot315", 315)]:
        m = augment.transform_matrix(name, side)
        assert _apply_matrix(m, c, c) == pytest.approx((c, c))
        # the output point one pixel right of the centre samples the input turned clockwise (y down)
        t = math.radians(degrees)
        assert _apply_matrix(m, c + 1, c) == pytest.approx((c + zoom * math.cos(t), c + zoom * math.sin(t)))
        assert np.linalg.det(m[:2, :2]) == pytest.approx(zoom ** 2)


def test_resize_matrix_matches_tf_image_resize():
    src = _smooth_source(30, 36).astype(np.float32)  # shrinks < 2x: no box filter
    m = augment.resize_matrix(30, 36, 20)
    out = _np(augment.warp(src, m, 20))
    np.testing.assert_allclose(out, _np(tf.image.resize(src, [20, 20])), atol=1e-3)


def test_random_geometry_draws_the_original_distribution():
    matrices, index = augment.random_geometry(9000, 16, 9, 0.5, seed=tf.constant([1, 2]))
    counts = np.bincount(_np(index), minlength=10) / 9000
    assert counts[0] == pytest.approx(0.5, abs=0.03)
    np.testing.assert_allclose(counts[1:], 0.5 / 9, atol=0.012)
    table = _np(augment.transform_matrices(16))
    np.testing.assert_allclose(_np(matrices), table[_np(index)], atol=1e-6)
    # Same seed, same draws; stateless.
    again, _ = augment.random_geometry(9000, 16, 9, 0.5, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(_np(again), _np(matrices))


def test_random_geometry_shift_scale_bounds():
    side = 32
    matrices, index = augment.random_geometry(4000, side, 0, 0.0, crop_scale=0.25, rotate_degrees=15.0,
                                              seed=tf.constant([3, 4]))
    m = _np(matrices).astype(np.float64)
    assert (_np(index) == 0).all()
    scale = np.sqrt(np.abs(np.linalg.det(m[:, :2, :2])))  # 1 / zoom
    assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.25 + 1e-5
    assert scale.min() < 0.82 and scale.max() > 1.22
    angle = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    assert np.abs(angle).max() <= 15 + 1e-3 and np.abs(angle).max() > 14
    # the output centre samples centre - R shift / zoom: |shift| <= 12.5 % of the side per axis
    c = (side - 1) / 2
    sampled = m[:, :2, :2] @ [c, c] + m[:, :2, 2] - c
    shift = np.linalg.solve(m[:, :2, :2], -sampled[..., None])[..., 0]
    assert np.abs(shift).max() <= 0.125 * side + 1e-3 and np.abs(shift).max() > 0.11 * side


@pytest.mark.parametrize("name", augment.TRANSFORMS)
def test_fused_warp_matches_the_two_step_pipeline(name):
    # Today's path: resize the decoded image to dim, then the transform; fused: one warp from the source.
    dim = 48
    src = _smooth_source(80, 90)  # shrinks < 2x: no box filter, as the plain resize
    resized = tf.image.resize(src, [dim, dim])
    i = augment.TRANSFORMS.index(name)
    old = _old_rotate_crop(resized, int(name[3:])) if i >= augment.N_EXACT else augment.apply_transform(resized, i)
    matrix = augment.resize_matrix(80, 90, dim) @ augment.transform_matrix(name, dim)
    fused = _np(augment.warp(src, tf.constant(matrix, tf.float32), dim))
    diff = np.abs(fused - _np(old)) / 255
    if i < augment.N_EXACT:
        assert diff.max() < 1e-4  # the same sampling points
    else:
        assert diff.mean() < 0.01 and diff.max() < 0.06  # one interpolation instead of three


def test_fused_shift_scale_and_rotation_matches_the_two_step_pipeline():
    dim = 48
    src = _smooth_source(90, 80, seed=1)
    resized = tf.image.resize(src, [dim, dim])
    for zoom, degrees, shift, name in [(0.8, 12.0, (5.0, -3.0), "rot135"), (1.25, -15.0, (-6.0, 6.0), "flip_lr"),
                                       (1.0, 0.0, (0.0, 0.0), "rot45")]:
        i = augment.TRANSFORMS.index(name)
        step = _old_shift_scale(resized, zoom, degrees, shift)
        old = _old_rotate_crop(step, int(name[3:])) if i >= augment.N_EXACT else augment.apply_transform(step, i)
        s = augment.shift_scale_matrix(tf.constant([zoom]), tf.constant([degrees]), tf.constant([shift]), dim)[0]
        matrix = augment.resize_matrix(90, 80, dim) @ _np(s) @ augment.transform_matrix(name, dim)
        fused = _np(augment.warp(src, tf.constant(matrix, tf.float32), dim))
        diff = np.abs(fused - _np(old)) / 255
        assert diff.mean() < 0.01 and diff.max() < 0.08, (zoom, degrees, name, diff.mean(), diff.max())


def test_warp_from_a_much_larger_source_is_antialiased():
    # A 1-pixel checkerboard shrunk 5x: an antialiased result is flat grey; plain bilinear
    # sampling of it would alias into a pattern of 0s and 1s.
    dim = 24
    board = (np.indices((120, 120)).sum(0) % 2).astype(np.float32)[..., None] * np.ones(3, np.float32)
    matrix = augment.resize_matrix(120, 120, dim) @ augment.transform_matrix("rot45", dim)
    out = _np(augment.warp(board, tf.constant(matrix, tf.float32), dim))
    assert abs(out.mean() - 0.5) < 0.03 and out.std() < 0.05
    identity = _np(augment.warp(board, augment.resize_matrix(120, 120, dim), dim))
    assert identity.std() < 0.05


def test_geometric_exact_path_equals_resize_then_numpy():
    # No shift/scale and at most the exact transforms: never a warp, identical to resize + permutation.
    tf.random.set_seed(11)
    dim = 16
    src = _smooth_source(30, 24)
    base = _np(tf.image.resize(src, [dim, dim]))
    views = [EXACT[name](base) for name in augment.TRANSFORMS[:6]]
    for _ in range(30):
        out = _np(augment.geometric(tf.constant(src), dim, 5, 1.0))
        assert sum(np.array_equal(out, v) for v in views[1:]) == 1


def test_tta_views_from_source_identity_is_decode_image_and_names_unchanged():
    from foldnet.tasks.classification import data

    dim = 64
    src = _smooth_source(192, 256)  # 4x larger: box-filtered before the 45-degree warps
    png = tf.io.encode_png(src)
    views = _np(data.tta_views(png, dim, 9))
    assert views.shape == (10, dim, dim, 3)
    np.testing.assert_array_equal(views[0], _np(data.decode_image(png, dim)))
    for i in range(1, augment.N_EXACT):
        np.testing.assert_array_equal(views[i], EXACT[augment.TRANSFORMS[i]](views[0]))
    for i in range(augment.N_EXACT, 10):
        old = _old_rotate_crop(tf.constant(views[0]), int(augment.TRANSFORMS[i][3:]))
        assert np.abs(views[i] - _np(old)).mean() < 0.01
    assert augment.tta_names(9) == augment.TRANSFORMS


def test_diagonal_crop_is_the_nearest_source_pixel_at_the_crop_points():
    # The 45-degree views as the original built them: nearest pixel of the rotated image on the
    # central crop's grid, looked up in the (non-square) source at the crop matrix's points.
    dim, h, w = 40, 50, 70
    src = _smooth_source(h, w, seed=3)
    crop = _np(augment._diagonal_crop(tf.constant(src), augment.TRANSFORMS.index("rot45"), dim))
    side = dim - 2 * augment._crop_start(dim)
    assert crop.shape == (side, side, 3) and crop.dtype == np.uint8 and side == 28
    matrix = _np(augment.resize_matrix(h, w, dim)) @ augment.crop_matrix("rot45", dim)
    qy, qx = np.mgrid[0:side, 0:side]
    x, y, _ = np.tensordot(matrix, np.stack([qx, qy, np.ones_like(qx)]), axes=1)
    assert x.min() > -0.5 and y.min() > -0.5 and x.max() < w - 0.5 and y.max() < h - 0.5  # fill never used
    want = src[np.floor(y + 0.5).astype(int), np.floor(x + 0.5).astype(int)]
    assert (crop != want).any(-1).mean() < 0.015  # only exact ties may round the other way (9 of 784 here)
    # the crop's points resized to dim are transform_matrix's points: the crop's centre is the image's
    np.testing.assert_allclose(matrix @ [(side - 1) / 2, (side - 1) / 2, 1],
                               _np(augment.resize_matrix(h, w, dim)) @ [(dim - 1) / 2, (dim - 1) / 2, 1], atol=1e-9)
    for name in ("rot135", "rot225", "rot315"):  # exact quarter turns of rot45's crop
        k = augment.TRANSFORMS.index(name) - augment.N_EXACT
        other = _np(augment._diagonal_crop(tf.constant(src), augment.TRANSFORMS.index(name), dim))
        np.testing.assert_array_equal(other, np.rot90(crop, k))


def test_diagonal_matches_the_bilinear_warp_within_interpolation_error():
    dim = 48
    src = _smooth_source(80, 90, seed=2)
    for name in augment.TRANSFORMS[augment.N_EXACT:]:
        i = augment.TRANSFORMS.index(name)
        out = _np(augment.diagonal(tf.constant(src), i, dim))
        np.testing.assert_allclose(out, _np(tf.image.resize(augment._diagonal_crop(tf.constant(src), i, dim),
                                                            [dim, dim])))
        matrix = augment.resize_matrix(80, 90, dim) @ augment.transform_matrix(name, dim)
        fused = _np(augment.warp(src, tf.constant(matrix, tf.float32), dim))
        diff = np.abs(out - fused) / 255
        assert diff.mean() < 0.015 and diff.max() < 0.15, (name, diff.mean(), diff.max())


def test_geometric_with_all_transforms_gives_exactly_one_tta_view():
    # aug_number 9 without shift/scale: every draw is exactly one of the TTA views (same functions),
    # identity about half the time, and each image needing a rotation goes through diagonal.
    tf.random.set_seed(5)
    dim = 20
    src = tf.constant(_smooth_source(36, 30, seed=4))
    views = _np(augment.tta_views(src, 9, dim))
    seen = []
    for _ in range(60):
        out = _np(augment.geometric(src, dim, 9, 0.5))
        match = [i for i, v in enumerate(views) if np.array_equal(out, v)]
        assert len(match) == 1
        seen.append(match[0])
    assert 15 <= seen.count(0) <= 45 and len(set(seen)) >= 7


# ---------------------------------------------------------------- augmentation in the model

def test_gather_warp_equals_the_projective_kernel():
    src = _smooth_source(20, 20).astype(np.float32)[None].repeat(3, 0) / 255
    matrices, _ = augment.random_geometry(3, 20, 9, 1.0, crop_scale=0.5, rotate_degrees=40.0, seed=tf.constant([5, 6]))
    gathered = _np(augment.warp_gather(src, matrices, 20))
    flat = tf.reshape(matrices, [3, 9])[:, :8]
    kernel = tf.raw_ops.ImageProjectiveTransformV3(images=src, transforms=flat, output_shape=[20, 20], fill_value=0.0,
                                                   interpolation="BILINEAR", fill_mode="REFLECT")
    np.testing.assert_allclose(gathered, _np(kernel), atol=1e-4)
    padded = tf.pad(src, [[0, 0], [0, 5], [0, 7], [0, 0]])  # padding is never read
    np.testing.assert_allclose(_np(augment._sample(padded, matrices, 20, 20, 20)), _np(kernel), atol=1e-4)
    xla = tf.function(lambda x, m: augment.warp_gather(x, m, 20), jit_compile=True)  # as on a TPU
    np.testing.assert_allclose(_np(xla(src, matrices)), _np(kernel), atol=1e-4)


def test_layer_same_seed_same_output_as_the_pipeline_functions():
    layer = augment.GeometricAugment(9, 0.5, crop_scale=0.25, rotate_degrees=15.0, photometric_strength=0.5)
    images = np.stack([_smooth_source(24, 24, seed=i) for i in range(6)]).astype(np.float32) / 255
    seed = tf.constant([7, 8])
    out = _np(layer.augment(images, seed=seed))
    geometry_seed, photo_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    matrices, _ = augment.random_geometry(6, 24, 9, 0.5, 0.25, 15.0, seed=geometry_seed)
    expected = tf.stack([augment.warp(images[i], matrices[i], 24) for i in range(6)])
    expected = augment.photometric(expected, 0.5, seed=photo_seed)
    np.testing.assert_allclose(out, _np(expected), atol=1e-4)
    assert np.abs(out - images).mean() > 1e-2


def test_layer_is_identity_at_inference_and_random_in_training():
    layer = augment.GeometricAugment(9, 1.0)
    x = _image(16)[None].repeat(4, 0)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    np.testing.assert_array_equal(_np(layer(x)), x)
    outs = _np(layer(x, training=True))
    # the layer resamples every transform bilinearly at the points of its matrix
    views = [_np(augment.warp(x[0], augment.transform_matrix(name, 16), 16)) for name in augment.TRANSFORMS]
    for out in outs:  # every image is one of the 9 transforms, never the identity
        match = [i for i, v in enumerate(views) if np.abs(v - out).max() < 1e-4]
        assert len(match) == 1 and match[0] != 0
    assert augment.GeometricAugment.from_config(layer.get_config()).settings == layer.settings
