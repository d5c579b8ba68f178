"""Segmentation pipelines: paired augmentation, weighted sampler, TTA round trips, and a tiny
UNet trained end to end on synthetic seg records."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError, DataError
from foldnet.models import unet
from foldnet.raster import spectral
from foldnet.raster import views as rviews
from foldnet.tasks.segmentation import data as seg_data
from foldnet.tasks.segmentation import losses as seg_losses
from foldnet.tasks.segmentation import records as seg_records

KELP_BANDS = ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"]
MISSING = -32768


def synthetic_tiles(n, size, seed=0):
    """Kelp-like int16 tiles: kelp blobs raise NIR over water; some missing pixels, some land."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, size, 2).tolist() + [rng.uniform(2, size / 5)]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = rng.normal(1000, 150, (size, size, 7))
        image[..., 1] += 1500 * mask  # NIR
        image[..., 5] = 0  # QA clear
        image[..., 6] = np.where(xx < 3, 20, -5)  # a strip of land
        mask &= xx >= 3
        image = image.astype(np.int16)
        valid = rng.random((size, size)) > 0.02
        image[~valid, 0] = MISSING
        out.append((f"tile{i:03d}", image, mask.astype(np.uint8), valid, f"aoi{i % 3}"))
    return out


def write_records(tmp_path, tiles, n_files=2):
    files = [str(tmp_path / f"train-{k}.tfrec") for k in range(n_files)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for k, (tid, image, mask, valid, group) in enumerate(tiles):
        writers[k % n_files].write(seg_records.make_example(tid, image, mask, valid, group))
    for w in writers:
        w.close()
    images = np.stack([t[1] for t in tiles]).astype(np.float64)
    valids = np.stack([t[3] for t in tiles])
    stats = []
    for b, band in enumerate(KELP_BANDS):
        v = images[..., b][valids & (images[..., b] != MISSING)]
        stats.append({"band": band, "min": v.min(), "max": v.max(), "q01": np.quantile(v, 0.01),
                      "q99": np.quantile(v, 0.99), "mean": v.mean(), "std": v.std(), "missing_share": 0.0})
    size = tiles[0][1].shape[0]
    manifest = {"task": "segmentation", "image": {"shape": [size, size, 7], "dtype": "int16",
                                                   "missing_value": MISSING, "bands": KELP_BANDS},
                "band_stats": stats}
    return files, manifest


def test_tta_merge_inverts_every_view_exactly():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 32, 32, 1)).astype(np.float32)
    views = list(rviews.TTA_VIEWS)
    stacked = np.stack([rviews.apply_view(tf.constant(maps), v).numpy() for v in views], 1)  # [n, T, H, W, 1]
    merged = rviews.merge_tta(stacked.reshape(-1, 32, 32, 1), views).numpy()
    np.testing.assert_allclose(merged, maps[..., 0], rtol=1e-6)  # the mean of 7 equal maps
    for v in views:  # each view alone is undone exactly
        single = rviews.merge_tta(rviews.apply_view(tf.constant(maps), v), ["identity"] if v == "identity" else [v])
        np.testing.assert_array_equal(single.numpy(), maps[..., 0])
    # crop back from 32 to 30 (padding 1 + 1), weights per view
    out = rviews.merge_tta(stacked[:, :2].reshape(-1, 32, 32), views[:2], height=30, width=30, weights=[3, 1])
    np.testing.assert_allclose(out.numpy(), maps[:, 1:31, 1:31, 0], rtol=1e-6)
    per_view = rviews.invert_tta(stacked.reshape(-1, 32, 32), views, height=30, width=30).numpy()
    assert per_view.shape == (7, 3, 30, 30)
    for k in range(7):
        np.testing.assert_array_equal(per_view[k], maps[:, 1:31, 1:31, 0])
    with pytest.raises(ConfigError, match="need square tiles"):
        rviews.check_views(["identity", "rot90"], 30, 40)
    with pytest.raises(ConfigError, match="start with identity"):
        rviews.check_views(["flip_lr"], 30, 30)


def test_tta_dataset_one_pass_round_trip(tmp_path):
    tiles = synthetic_tiles(5, 30)
    files, manifest = write_records(tmp_path, tiles, n_files=1)
    features = spectral.Features(manifest, indices=["NDVI"])
    views = ["identity", "flip_lr", "rot90", "transpose"]
    batches = list(seg_data.tta_dataset(files, features, batch_size=2, views=views).as_numpy_iterator())
    assert [b.shape for b in batches] == [(8, 32, 32, 8), (8, 32, 32, 8), (4, 32, 32, 8)]
    # "predict" channel 1 (NIR) of every view, merge: the identity features, padding cropped
    merged = rviews.merge_tta(np.concatenate(batches)[..., 1], views, height=30, width=30).numpy()
    want = np.stack([features(t[1], t[3]).numpy()[..., 1] for t in tiles])
    np.testing.assert_allclose(merged, want, rtol=1e-6, atol=1e-7)
    # predict_maps: a real model, every view back in the identity frame
    model = unet.build_unet("tiny", features.n_channels, 32)
    maps = seg_data.predict_maps(model, files, features, 2, views)
    assert maps.shape == (4, 5, 30, 30) and maps.dtype == np.float32
    x = spectral.pad_to_multiple(np.stack([features(t[1], t[3]).numpy() for t in tiles]))
    direct = model(x).numpy()[:, 1:31, 1:31, 0]
    np.testing.assert_allclose(maps[0], direct, rtol=1e-4, atol=1e-5)
    flipped = model(x[:, :, ::-1]).numpy()[:, :, ::-1][:, 1:31, 1:31, 0]
    np.testing.assert_allclose(maps[1], flipped, rtol=1e-4, atol=1e-5)


def test_paired_augmentation_moves_image_mask_and_valid_together():
    rng = np.random.default_rng(1)
    mask = (rng.random((16, 16)) > 0.7).astype(np.uint8)
    valid = (rng.random((16, 16)) > 0.2).astype(np.uint8)
    image = np.stack([mask * 1.0, valid * 1.0, rng.random((16, 16))], -1).astype(np.float32)
    seen = set()
    tf.random.set_seed(0)
    for _ in range(12):
        x, m, v = rviews.paired_augment(image, mask, valid)
        np.testing.assert_array_equal(x[..., 0].numpy(), m.numpy())
        np.testing.assert_array_equal(x[..., 1].numpy(), v.numpy())
        assert m.numpy().sum() == mask.sum()
        seen.add(m.numpy().tobytes())
    dihedral = {np.ascontiguousarray(np.rot90(f, k)).astype(np.float32).tobytes()
                for f in (mask, mask[:, ::-1]) for k in range(4)}
    assert len(seen) >= 4 and seen <= dihedral  # flips and rotations happen, and nothing else
    # small affine: the mask stays binary (nearest) and follows the image (bilinear) closely
    smooth = np.zeros((32, 32), np.float32)
    smooth[8:24, 10:20] = 1.0
    agree = []
    for _ in range(8):
        x, m, _ = rviews.paired_augment(smooth[..., None], smooth, np.ones_like(smooth), flip=False, rot90=False,
                                          scale=0.1, rotate=10, shift=0.05)
        assert set(np.unique(m.numpy())) <= {0.0, 1.0}
        agree.append(np.mean((x[..., 0].numpy() > 0.5) == (m.numpy() > 0.5)))
    assert min(agree) > 0.97 and not all(np.array_equal(m, smooth) for m in [m.numpy()])


def test_tile_weights_by_hand_and_errors():
    tiles = pd.DataFrame({"id": ["a", "b", "c"], "positive_share": [0.0, 0.1, 0.5], "cloud_share": [0.0, 1.0, 0.2]})
    w = seg_data.tile_weights(tiles, {"has_positive": 2, "positive_share": 5, "cloud_share": -1})
    np.testing.assert_allclose(w, [1.0, 1 + 2 + 0.5 - 1.0, 1 + 2 + 2.5 - 0.2])
    np.testing.assert_allclose(seg_data.tile_weights(tiles, {"cloud_share": -3}), [1.0, 0.01, 0.4])
    with pytest.raises(ConfigError, match=r"\['water_share'\].*known: cloud_share, positive_share, has_positive"):
        seg_data.tile_weights(tiles, {"water_share": 1})
    tiles.loc[1, "cloud_share"] = np.nan
    with pytest.raises(DataError) as err:
        seg_data.tile_weights(tiles, {"cloud_share": 1})
    assert err.value.problems == ["tile b: no value of cloud_share"]
    assert seg_data.steps_per_epoch(10240, 32) == 320 and seg_data.steps_per_epoch(5, 32) == 1


def test_weighted_sampler_draws_tiles_by_weight(tmp_path):
    # 4 tiles told apart by their number of invalid pixels (0, 1, 2, 3)
    tiles = []
    for k in range(4):
        valid = np.ones((8, 8), bool)
        valid.flat[:k] = False
        tiles.append((f"t{k}", np.full((8, 8, 7), 100, np.int16), np.zeros((8, 8), np.uint8), valid, ""))
    files, manifest = write_records(tmp_path, tiles)
    features = spectral.Features(manifest)
    ds = seg_data.train_dataset(files, features, batch_size=50, tile_ids=["t0", "t1", "t2", "t3"],
                                weights=[1, 1, 1, 5], augment={"flip": False, "rot90": False}, pad_multiple=None,
                                shuffle_buffer=4, seed=3)
    counts = np.zeros(4)
    for _, target in ds.take(16).as_numpy_iterator():
        invalid = 64 - target[..., 1].sum(axis=(1, 2))
        counts += np.bincount(invalid.astype(int), minlength=4)
    share = counts / counts.sum()
    np.testing.assert_allclose(share, [1 / 8, 1 / 8, 1 / 8, 5 / 8], atol=0.05)
    bad = seg_data.train_dataset(files, features, batch_size=4, tile_ids=["t0"], weights=[1.0],
                                 pad_multiple=None)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in the sampler"):
        list(bad.take(2))


def test_eval_dataset_pads_invalid_and_carries_groups(tmp_path):
    tiles = synthetic_tiles(4, 30)
    files, manifest = write_records(tmp_path, tiles, n_files=1)
    features = spectral.Features(manifest, indices=["NDVI", "SR"])
    ds = seg_data.eval_dataset(files, features, batch_size=4, group_index={"aoi0": 0, "aoi1": 1, "aoi2": 2})
    x, y = next(ds.as_numpy_iterator())
    assert x.shape == (4, 32, 32, 9) and y.shape == (4, 32, 32, 3)
    assert y[:, 0].sum() == 0 and y[:, :, 31].sum() == 0  # padding is invalid, mask 0, group 0
    np.testing.assert_array_equal(y[:, 1:31, 1:31, 1], np.stack([t[3] for t in tiles]))
    np.testing.assert_array_equal(y[:, 1:31, 1:31, 0], np.stack([t[2] * t[3] for t in tiles]))
    assert y[:, 5, 5, 2].tolist() == [0.0, 1.0, 2.0, 0.0]
    ids, masks, valids, groups = seg_data.read_tiles(files, features)
    assert ids == [t[0] for t in tiles] and groups == ["aoi0", "aoi1", "aoi2", "aoi0"]
    np.testing.assert_array_equal(masks, np.stack([t[2] for t in tiles]))
    # fitted range of SR (no natural range): quantiles of SR over water, non-missing pixels
    ranges = seg_data.fit_index_ranges(files, features)
    assert list(ranges) == ["SR"]
    sr = []
    for _, image, _, valid, _ in tiles:
        f = image.astype(np.float64)
        ok = valid & (image[..., 6] <= 0) & (image[..., 5] == 0)
        sr.append((f[..., 1] / f[..., 2])[ok])
    np.testing.assert_allclose(ranges["SR"], np.quantile(np.concatenate(sr), [0.01, 0.99]), rtol=1e-4)


def test_tiny_unet_learns_synthetic_kelp(tmp_path):
    tf.keras.utils.set_random_seed(0)
    tiles = synthetic_tiles(24, 32, seed=2)
    files, manifest = write_records(tmp_path, tiles[:16])
    (tmp_path / "val").mkdir()
    val_files, _ = write_records(tmp_path / "val", tiles[16:], n_files=1)
    features = spectral.Features(manifest, bands=["SWIR", "NIR", "R", "G", "B"], indices=["NDVI", "NDWI"])
    train = seg_data.train_dataset(files, features, batch_size=8, augment={"scale": 0.05, "rotate": 5}, seed=1)
    val = seg_data.eval_dataset(val_files, features, batch_size=8)
    model = unet.build_unet("tiny", features.n_channels, 32)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss=seg_losses.make_loss({"dice": 1.0, "bce": 1.0}),
                  metrics=seg_losses.make_metrics(("dice", "iou")))
    before = model.evaluate(val, verbose=0, return_dict=True)
    hist = model.fit(train, steps_per_epoch=10, epochs=4, verbose=0)
    after = model.evaluate(val, verbose=0, return_dict=True)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert after["loss"] < before["loss"]
    # an all-zero prediction has Dice 0 on these tiles (every one has kelp); the model finds most of it
    truth = np.stack([t[2] * t[3] for t in tiles[16:]])
    assert truth.sum(axis=(1, 2)).min() > 0
    assert after["dice"] > 0.6, after


def test_sampler_weights_from_tiles_csv(tmp_path):
    (tmp_path / "tiles.csv").write_text(
        "id,split,fold,group,positive_share,missing_share,cloud_share\n"
        "a,train,0,p1,0.0,0.0,0.5\nb,train,1,p2,0.2,0.1,0.0\nc,train,2,,0.4,0.0,0.0\nd,test,-1,p1,,0.0,0.0\n")
    tiles = seg_data.read_tiles_csv({"dir": str(tmp_path), "tiles_csv": "tiles.csv"})
    ids, weights = seg_data.sampler_weights(tiles, [0, 2], {"has_positive": 1, "cloud_share": -1})
    assert ids == ["a", "c"]
    np.testing.assert_allclose(weights, [0.5, 2.0])
    assert seg_data.group_index(tiles) == {"": 0, "p1": 1, "p2": 2}
    with pytest.raises(DataError, match="no tiles_csv"):
        seg_data.read_tiles_csv({"dir": str(tmp_path)})


def test_warp_matches_image_projective_transform():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.random((24, 20, 5)).astype(np.float32))
    c, s = np.cos(0.15) / 1.08, np.sin(0.15) / 1.08
    cx, cy = 9.5 + 1.3, 11.5 - 0.7
    transform = tf.constant([[c, -s, 9.5 - c * cx + s * cy, s, c, 11.5 - s * cx - c * cy, 0.0, 0.0]], tf.float32)
    for nearest, mode in ((False, "BILINEAR"), (True, "NEAREST")):
        want = tf.raw_ops.ImageProjectiveTransformV3(
            images=x[tf.newaxis], transforms=transform, output_shape=[24, 20], fill_value=0.0,
            interpolation=mode, fill_mode="REFLECT")[0].numpy()
        got = rviews.warp(x, transform, nearest=nearest).numpy()
        np.testing.assert_allclose(got[3:-3, 3:-3], want[3:-3, 3:-3], rtol=1e-5, atol=1e-6)
    # identity transform returns the image; a shift past the border mirrors it
    ident = tf.constant([[1.0, 0, 0, 0, 1.0, 0, 0, 0]])
    np.testing.assert_array_equal(rviews.warp(x, ident).numpy(), x.numpy())
    shift = tf.constant([[1.0, 0, -2.0, 0, 1.0, 0, 0, 0]])  # output column j samples input column j - 2
    got = rviews.warp(x, shift, nearest=True).numpy()
    np.testing.assert_array_equal(got[:, 2:], x.numpy()[:, :-2])
    np.testing.assert_array_equal(got[:, :2], x.numpy()[:, 1::-1])


@pytest.mark.parametrize("shape", [(6, 6, 5), (5, 7, 3)])
def test_flips_and_turns_without_resampling_equal_the_warp(shape):
    # every flip (lr, ud) x 90-degree turn map as paired_augment composes them; turns on squares only
    height, width, _ = shape
    x = tf.constant(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    turns = range(4) if height == width else range(1)
    for lr in (False, True):
        for ud in (False, True):
            for k in turns:
                flip = np.array([[-1.0 if lr else 1.0, 0, width - 1.0 if lr else 0.0],
                                 [0, -1.0 if ud else 1.0, height - 1.0 if ud else 0.0], [0, 0, 1]], np.float32)
                matrix = flip @ rviews._rotation_matrices(height)[k] if height == width else flip
                transform = np.concatenate([matrix[:2].ravel(), [0.0, 0.0]])[None].astype(np.float32)
                expected = rviews.warp(x, transform, nearest=True).numpy()
                got = rviews._apply_dihedral(x, tf.constant(matrix)).numpy()
                np.testing.assert_array_equal(got, expected, err_msg=f"lr={lr} ud={ud} k={k}")


def test_flips_and_turns_of_the_raw_bands_give_the_features_moved(tmp_path):
    # train_dataset moves the raw bands before the (per-pixel) features when the map is whole-pixel
    _, image, _, valid, _ = synthetic_tiles(1, 12, seed=5)[0]
    _, manifest = write_records(tmp_path, synthetic_tiles(3, 12, seed=5))
    features = spectral.Features(manifest, indices=["NDVI", "NDWI", "CIG"])
    rot = rviews._rotation_matrices(12)
    flip = np.array([[-1, 0, 11], [0, 1, 0], [0, 0, 1]], np.float32)
    for matrix in (rot[1], flip @ rot[3], flip):
        m = tf.constant(matrix)
        moved_raw = rviews._apply_dihedral(tf.constant(image), m)
        moved_valid = rviews._apply_dihedral(tf.constant(valid.astype(np.float32))[..., None], m)[..., 0]
        after = features(moved_raw, moved_valid).numpy()
        before = rviews._apply_dihedral(features(image, valid.astype(np.uint8)), m).numpy()
        np.testing.assert_array_equal(after, before)
    # and the pipeline with flips/turns yields tiles of the features of a moved raw tile, mask moved alike
    (tmp_path / "one").mkdir()
    files, _ = write_records(tmp_path / "one", [synthetic_tiles(1, 12, seed=5)[0]], n_files=1)
    x, y = next(iter(seg_data.train_dataset(files, features, 1, pad_multiple=0, seed=1)))
    candidates = [rviews._apply_dihedral(features(image, valid.astype(np.uint8)), tf.constant(f @ r)).numpy()
                  for f in (np.eye(3, dtype=np.float32), flip) for r in rot]
    assert any(np.array_equal(x[0].numpy(), c) for c in candidates)


def test_features_padded_in_the_compiled_function_equal_padding_afterwards(tmp_path):
    tiles = synthetic_tiles(2, 13, seed=2)
    _, manifest = write_records(tmp_path, tiles)
    for jit in (True, False):
        features = spectral.Features(manifest, indices=["NDVI", "NDWI"], jit_compile=jit)
        image, valid = tiles[0][1], tiles[0][3].astype(np.uint8)
        padded = features(image, valid, 8).numpy()
        assert padded.shape == (16, 16, 9)
        np.testing.assert_array_equal(padded, spectral.pad_to_multiple(features(image, valid), 8, "REFLECT").numpy())


def test_winner_sampler_minmax_over_all_training_tiles_and_kelp_share_filter(tmp_path):
    """The Kelp Wanted winner's weights, worked by hand: w = 3 has_kelp + 0.2 (1 - kelp) + 0 qa_ok
    - 1 (1 - qa) + 0.5 (1 - water) + 0.25 (1 - dem<0) - 1 (1 - dem=0), min-max over every kept
    training tile (all folds); tile c (kelp 0.5 > 0.4) is dropped before, weight 0."""
    (tmp_path / "tiles.csv").write_text(
        "id,split,fold,group,positive_share,cloud_share,dem_nonpositive_share,dem_negative_share,dem_zero_share\n"
        "a,train,0,,0.0,0.0,1.0,0.0,1.0\n"
        "b,train,1,,0.1,0.2,0.5,0.1,0.4\n"
        "c,train,0,,0.5,0.0,0.9,0.0,0.9\n"
        "d,train,1,,0.0,0.5,0.2,0.0,0.2\n"
        "x,test,-1,,,0.0,1.0,0.0,1.0\n")
    tiles = seg_data.read_tiles_csv({"dir": str(tmp_path), "tiles_csv": "tiles.csv"})
    terms = {"has_positive": 3.0, "1-positive_share": 0.2, "qa_ok": 0.0, "1-cloud_share": -1.0,
             "1-dem_nonpositive_share": 0.5, "1-dem_negative_share": 0.25, "1-dem_zero_share": -1.0, "minmax": True}
    # a: 0.2 - 1 + 0 + 0.25 - 0 = -0.55; b: 3 + 0.18 - 0.8 + 0.25 + 0.225 - 0.6 = 2.255;
    # d: 0.2 - 0.5 + 0.4 + 0.25 - 0.8 = -0.45  -> (w + 0.55) / 2.805
    ids, weights = seg_data.sampler_weights(tiles, [0, 1], terms, max_positive_share=0.4)
    assert ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(weights, [0.0, 1.0, 0.0, 0.1 / 2.805], rtol=1e-6)
    ids, weights = seg_data.sampler_weights(tiles, [1], terms, max_positive_share=0.4)  # same scale
    assert ids == ["b", "d"]
    np.testing.assert_allclose(weights, [1.0, 0.1 / 2.805], rtol=1e-6)
    # without the filter c is kept: 3 + 0.1 - 1 + 0.05 + 0.25 - 0.1 = 2.3 is now the top
    _, weights = seg_data.sampler_weights(tiles, [0, 1], terms)
    np.testing.assert_allclose(weights, [0.0, 2.805 / 2.85, 1.0, 0.1 / 2.85], rtol=1e-6)
    # the filter alone: kept tiles alike, dropped ones never drawn
    _, weights = seg_data.sampler_weights(tiles, [0, 1], {}, max_positive_share=0.4)
    assert weights.tolist() == [1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match=r"folds \[0\] weight 0 \(1 of 2 above max_positive_share 0.4\)"):
        seg_data.sampler_weights(tiles, [0], terms, max_positive_share=0.4)
    with pytest.raises(ConfigError, match="minmax must be true or false"):
        seg_data.tile_weights(tiles, {"minmax": "yes"})
    with pytest.raises(ConfigError, match=r"\['1-nope'\]"):
        seg_data.tile_weights(tiles, {"1-nope": 1.0})


def test_shuffle_buffer_is_bounded_in_megabytes():
    """At Kelp size a serialized tile is 350 * 350 * (7 * 2 + 2) B = 1.87 MiB: the 2048-tile default
    would hold 3.7 GiB; the buffer is capped at SHUFFLE_BUDGET_MB (128 -> 68 tiles)."""
    bands = ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"]
    stats = [{"band": b, "min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0} for b in bands]

    def features(side):
        return spectral.Features({"image": {"shape": [side, side, 7], "dtype": "int16", "missing_value": -32768,
                                            "bands": bands}, "band_stats": stats}, jit_compile=False)

    kelp = features(350)
    assert seg_data.tile_mb(kelp) == pytest.approx(350 * 350 * 16 / 2 ** 20)
    assert seg_data.SHUFFLE_BUDGET_MB == 128 and seg_data.shuffle_tiles(2048, kelp) == 68
    assert seg_data.shuffle_tiles(64, kelp) == 64  # a smaller request stands
    assert seg_data.shuffle_tiles(2048, features(32)) == 2048  # small tiles: the request
    assert seg_data.shuffle_tiles(2048, kelp, budget_mb=1) == 16  # never below 16 tiles
