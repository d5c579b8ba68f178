"""map_aug (raster.views.paired_augment): every map keeps image and mask aligned, and each fires with
its probability over many draws."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.core import transforms
from foldnet.core.errors import ConfigError
from foldnet.engine import config
from foldnet.raster import views

SIDE = 24
WINNER = {"p": 0.7, "rotate": 45, "rotate_p": 0.8, "scale_sd": 0.1, "scale_p": 0.8, "shift": 0.4,
          "target_interp": "bilinear", "cutout_p": 0.15, "elastic_p": 0.04, "photometric_p": 0.01}


def blobs(side=SIDE, seed=0):
    """A smooth image in [0, 1] with a few blobs (3 channels) and the mask image[..., 0] > 0.5."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    image = np.zeros([side, side, 3], np.float32)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, side, 2).tolist() + [rng.uniform(3, 6)]
        image[..., 0] += np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * r * r))
    image[..., 0] = np.clip(image[..., 0], 0, 1)
    image[..., 1] = cols / side
    image[..., 2] = rows / side
    return image, (image[..., 0] > 0.5).astype(np.float32)


def many(n, fn):
    """``fn(i)`` over ``n`` draws in graph mode (tf.data), stacked."""
    ds = tf.data.Dataset.range(n).map(lambda i: fn(i), num_parallel_calls=2).batch(n)
    return list(next(iter(ds.as_numpy_iterator())))


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_affine_and_cutout_keep_the_mask_of_the_image(interp):
    image, mask = blobs()
    opts = dict(WINNER, target_interp=interp, p=1.0, elastic_p=0.0, photometric_p=0.0, cutout_p=0.5)

    def draw(_):
        x, m, v = views.paired_augment(image, mask, np.ones_like(mask), map_aug=opts)
        return x, m, v

    xs, ms, vs = many(40, draw)
    derived = (xs[..., 0] > 0.5).astype(np.float32)
    ms = (ms > 0.5).astype(np.float32)
    # pixels whose image value sits near the threshold may fall either way after interpolation
    sure = np.abs(xs[..., 0] - 0.5) > 0.1
    assert (derived[sure] == ms[sure]).mean() > 0.995
    moved = np.abs(xs - image[None]).max(axis=(1, 2, 3)) > 0.05
    assert moved.mean() > 0.9                   # the maps did move the tiles: the check above is not vacuous
    assert ms.sum() > 0.2 * mask.sum() * len(ms)  # ... and kept masks
    cut = (xs == 0).all(axis=-1)               # cutout: image 0 in every channel and mask 0 there
    assert cut.any() and not ms[cut].any()
    assert set(np.unique(vs)) <= {0.0, 1.0}


def test_elastic_moves_the_image_a_little_and_leaves_the_mask():
    image, mask = blobs()
    opts = {"elastic_p": 1.0}
    x, m, _ = views.paired_augment(image, mask, np.ones_like(mask), flip=False, rot90=False, map_aug=opts)
    x, m = x.numpy(), m.numpy()
    np.testing.assert_array_equal(m, mask)     # the winner does not move the mask (Dataset.py:120-124)
    assert np.abs(x - image).max() > 1e-3
    # every value comes from within 2 pixels: between the local min and max of the source
    pad = np.pad(image, [[2, 2], [2, 2], [0, 0]], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (5, 5), axis=(0, 1))
    assert (x >= windows.min(axis=(-2, -1)) - 1e-5).all() and (x <= windows.max(axis=(-2, -1)) + 1e-5).all()


def test_photometric_on_the_symmetric_range_is_the_winner_map_after_two_u_minus_one():
    image, mask = blobs()
    tf.random.set_seed(3)
    u, mu, _ = views.paired_augment(image, mask, np.ones_like(mask), flip=False, rot90=False,
                                    map_aug={"photometric_p": 1.0})
    tf.random.set_seed(3)
    y, my, _ = views.paired_augment(2 * image - 1, mask, np.ones_like(mask), flip=False, rot90=False,
                                    map_aug={"photometric_p": 1.0}, value_range=(-1.0, 1.0))
    np.testing.assert_allclose(y.numpy(), 2 * u.numpy() - 1, atol=1e-5)
    np.testing.assert_array_equal(mu.numpy(), mask)
    assert 0.0 <= u.numpy().min() and u.numpy().max() <= 1.0
    assert np.abs(u.numpy() - image).max() > 0


@pytest.mark.parametrize("key, p, changed", [
    ("p", 0.7, lambda x, img: np.abs(x - img).max(axis=(1, 2, 3)) > 1e-4),
    ("cutout_p", 0.15, lambda x, img: (x == -7.0).any(axis=(1, 2, 3))),
    ("elastic_p", 0.04, lambda x, img: np.abs(x - img).max(axis=(1, 2, 3)) > 1e-4),
])
def test_each_map_fires_with_its_probability(key, p, changed):
    image, mask = blobs(12)
    opts = {key: p, "rotate": 45.0 if key == "p" else 0.0}
    n = 3000

    def draw(_):
        x, _, _ = views.paired_augment(image, mask, np.ones_like(mask), flip=False, rot90=False, map_aug=opts,
                                       value_range=(-7.0, 1.0))
        return (x,)

    (xs,) = many(n, draw)
    rate = changed(xs, image[None]).mean()
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n), rate


def test_photometric_fires_twice_with_its_probability():
    # brightness and gain: two independent draws of p 0.01 each -> a tile changed with 1 - 0.99^2
    image = np.full([4, 4, 2], 0.5, np.float32)
    n, p = 20000, 0.01

    def draw(_):
        x, _, _ = views.paired_augment(image, np.zeros([4, 4]), np.ones([4, 4]), flip=False, rot90=False,
                                       map_aug={"photometric_p": p})
        return (tf.reduce_max(tf.abs(x - 0.5)) > 0,)

    (changed,) = many(n, draw)
    want = 1 - (1 - p) ** 2
    assert abs(changed.mean() - want) < 4 * np.sqrt(want * (1 - want) / n), changed.mean()


def test_centred_affine_matches_cv2_rotation_about_a_point():
    # cv2.getRotationMatrix2D(c, a, s): dst = c + s R(a) (src - c); the output -> input map is its inverse
    tf.random.set_seed(0)
    m = views.centred_affine(100.0, 100.0, p=1.0, rotate=45.0, scale_sd=0.1, shift=0.4).numpy()
    a = m[:2, :2]
    scale = 1 / np.sqrt(abs(np.linalg.det(a)))
    np.testing.assert_allclose(a * scale @ (a * scale).T, np.eye(2), atol=1e-5)  # a rotation / zoom
    centre = np.linalg.solve(np.eye(2) - a, m[:2, 2])  # its fixed point
    assert (np.abs(centre - 49.5) <= 40.0 + 1e-3).all()
    assert np.allclose(views.centred_affine(8.0, 8.0, p=0.0, rotate=45.0).numpy(), np.eye(3))


def test_map_aug_setting_is_checked():
    assert transforms.map_aug_problems(WINNER) == []
    cfg = config.make_config(map_aug=WINNER)
    assert cfg["map_aug"]["cutout_p"] == 0.15
    with pytest.raises(ConfigError) as e:
        config.make_config(map_aug={"p": 1.5, "shfit": 0.1, "target_interp": "cubic", "elastic_p": float("nan")})
    text = str(e.value)
    for part in ("map_aug.p must be in [0, 1]", "unknown key 'shfit'", "target_interp='cubic'",
                 "map_aug.elastic_p must be a finite number"):
        assert part in text
    with pytest.raises(ConfigError, match="keep one of them"):
        config.make_config(map_aug={"p": 0.7, "rotate": 45}, aug_rotate=10)
