import foldnet  # noqa: F401  (before tensorflow)

import numpy as np
import pytest
import tensorflow as tf

from foldnet import augment

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
    scale = size / (size - 2 * np.ceil(0.15 * size))
    assert abs(area_ratio - scale**2) < 0.15 * scale**2


def test_random_augment_probability_zero_is_identity():
    x = _image()
    for _ in range(20):
        np.testing.assert_array_equal(_np(augment.random_augment(x, 9, 0.0)), x)
    np.testing.assert_array_equal(_np(augment.random_augment(x, 0, 1.0)), x)


def _which(x, out):
    views = _np(augment.tta_views(x, 9))
    return [i for i, v in enumerate(views) if np.allclose(v, out, atol=1e-5)]


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
    from foldnet import data, records

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
