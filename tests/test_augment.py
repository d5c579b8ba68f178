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
