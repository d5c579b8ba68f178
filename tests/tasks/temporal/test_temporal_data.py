"""Temporal tf.data pipelines: normalisation, month reductions, month dropout, paired augmentation,
padding, TTA views and their inverses, ids/targets."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError
from foldnet.core.transforms import map_views
from foldnet.raster import views as rviews
from foldnet.tasks.temporal import data as td
from foldnet.tasks.temporal.records import TemporalSpec, make_example

T, H, W, C = 4, 8, 8, 2


def spec(h=H, w=W):
    return TemporalSpec(T, (h, w), ["a", "b"], {"a": [0.0, 10.0], "b": [-10.0, 10.0]}, {"name": "agbm"}, "generic")


def write_chips(path, chips):
    with tf.io.TFRecordWriter(str(path)) as f:
        for c in chips:
            f.write(make_example(c["id"], c["image"], c["valid"], c["months"], c.get("target")))
    return [str(path)]


def chip(i, months=(1, 1, 1, 1), h=H, w=W, seed=0):
    rng = np.random.default_rng(seed + i)
    image = rng.uniform(0, 10, (T, h, w, C)).astype(np.float32)
    valid = np.ones(image.shape, bool)
    for m, present in enumerate(months):
        if not present:
            valid[m] = False
    valid[0, 0, 0, 1] = False  # one no-data value
    target = rng.uniform(0, 450, (h, w)).astype(np.float32)
    return {"id": f"c{i}", "image": image, "valid": valid, "months": np.array(months, np.uint8), "target": target}


def test_eval_normalises_fills_missing_and_pads(tmp_path):
    c = chip(0, months=(1, 0, 1, 1))
    c["image"][2, 1, 1, 0] = 25.0  # above hi -> 1
    files = write_chips(tmp_path / "a.tfrec", [c])
    x, y = next(iter(td.eval_dataset(files, spec(), 1)))
    img, months, y = x["image"].numpy()[0], x["months"].numpy()[0], y.numpy()[0]
    assert img.shape == (T, 32, 32, C) and y.shape == (32, 32, 1)
    top, left = 12, 12  # (32 - 8) / 2
    inner = img[:, top:top + H, left:left + W]
    want = np.stack([np.clip(c["image"][..., 0] / 10, 0, 1), np.clip((c["image"][..., 1] + 10) / 20, 0, 1)], -1)
    want = np.where(c["valid"], want, 0)
    np.testing.assert_allclose(inner, want, atol=1e-6)
    assert inner[2, 1, 1, 0] == 1.0 and inner[0, 0, 0, 1] == 0 and not inner[1].any()
    np.testing.assert_array_equal(months, [1, 0, 1, 1])
    assert not np.delete(img, np.s_[top:top + H], axis=1).any()  # padding: image 0
    np.testing.assert_array_equal(y[top:top + H, left:left + W, 0], c["target"])
    assert (y[:top] == -1).all() and (y[:, :left] == -1).all() and (y[top + H:] == -1).all()


def test_month_and_mean_inputs(tmp_path):
    c = chip(0, months=(1, 0, 0, 1))
    files = write_chips(tmp_path / "a.tfrec", [c])
    full = next(iter(td.eval_dataset(files, spec(), 1, pad_multiple=0)))[0]["image"].numpy()[0]
    # month 2 is missing: its nearest months are 1 (missing) / 3 (present) -> 3; month 1: 0 and 3 -> 0 (tie: earlier)
    for k, want in ((0, 0), (1, 0), (2, 3), (3, 3)):
        x = next(iter(td.eval_dataset(files, spec(), 1, temporal_input=f"month:{k}", pad_multiple=0)))[0]
        assert x["image"].shape == (1, 1, H, W, C)
        np.testing.assert_array_equal(x["image"].numpy()[0, 0], full[want])
        np.testing.assert_array_equal(x["months"].numpy(), [[1]])
    x = next(iter(td.eval_dataset(files, spec(), 1, temporal_input="mean", pad_multiple=0)))[0]
    mean = x["image"].numpy()[0, 0]
    np.testing.assert_allclose(mean[1:, 1:], (full[0, 1:, 1:] + full[3, 1:, 1:]) / 2, atol=1e-6)
    assert mean[0, 0, 1] == pytest.approx(full[3, 0, 0, 1])  # month 0's value there is no-data: only month 3
    with pytest.raises(ConfigError, match="month:K"):
        td.parse_temporal_input("month:12", 12)
    assert td.n_input_months("all", 12) == 12 and td.n_input_months("month:3", 12) == 1


def test_month_dropout_keeps_at_least_one_present_month():
    x = tf.ones([6, 2, 2, 1])
    tf.random.set_seed(0)
    dropped_any = False
    for months in ([1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 0, 1]):
        m = tf.constant(months, tf.float32)
        for rate in (0.5, 0.99, 1.0):
            for _ in range(30):
                y, kept = td.drop_months(x, m, rate)
                kept = kept.numpy()
                assert kept.sum() >= 1
                assert (kept <= np.array(months)).all()  # never revives a missing month
                np.testing.assert_array_equal(y.numpy()[:, 0, 0, 0], kept)  # dropped months are zeroed
                dropped_any |= kept.sum() < sum(months)
    assert dropped_any
    y, kept = td.drop_months(x, tf.constant([1, 0, 1, 1, 1, 1], tf.float32), 0.0)
    np.testing.assert_array_equal(kept.numpy(), [1, 0, 1, 1, 1, 1])


def test_train_batches_pair_every_month_with_the_target(tmp_path):
    # channel a of every month encodes the target: after flips and turns they must still agree
    chips = []
    for i in range(6):
        c = chip(i, months=(1, 1, 0, 1))
        c["target"][:2, :3] = -1  # unknown label pixels stay unknown
        for m in range(T):
            c["image"][m, ..., 0] = np.maximum(c["target"], 0) / 45.0  # normalised: target / 450
        chips.append(c)
    files = write_chips(tmp_path / "a.tfrec", chips)
    ds = td.train_dataset(files, spec(), 3, month_dropout=0.5, augment={"flip": True, "rot90": True}, seed=1,
                          pad_multiple=0)
    seen_turned = False
    for x, y in ds.take(8):
        img, months, y = x["image"].numpy(), x["months"].numpy(), y.numpy()[..., 0]
        assert (months.sum(1) >= 1).all() and (months[:, 2] == 0).all()
        for b in range(3):
            for m in np.flatnonzero(months[b]):
                np.testing.assert_allclose(img[b, m, ..., 0] * 450, np.maximum(y[b], 0), atol=1e-3)
            for m in np.flatnonzero(months[b] == 0):
                assert not img[b, m].any()
            assert (y[b] == -1).sum() == 6
            seen_turned |= y[b][0, 0] != -1 or y[b][0, 1] != -1
    assert seen_turned  # the unknown corner moved: transforms were applied


def test_small_rotation_keeps_target_values(tmp_path):
    c = chip(0)
    c["target"][0] = -1
    files = write_chips(tmp_path / "a.tfrec", [c])
    ds = td.train_dataset(files, spec(), 1, augment={"flip": False, "rot90": False, "rotate": 20.0}, seed=3,
                          pad_multiple=0, shuffle_buffer=1)
    allowed = set(np.round(c["target"].ravel(), 3)) | {-1.0}
    for _, y in ds.take(4):
        assert set(np.round(y.numpy().ravel(), 3)) <= allowed  # nearest: no invented target values


@pytest.mark.parametrize("h,w", [(8, 8), (8, 12)])
def test_tta_views_and_inverse_round_trip(tmp_path, h, w):
    chips = [chip(i, h=h, w=w) for i in range(3)]
    files = write_chips(tmp_path / "a.tfrec", chips)
    views = rviews.TTA_VIEWS if h == w else ("identity", "flip_lr", "flip_ud", "rot180")
    ds, merge = td.predict_dataset(files, spec(h, w), 2, views)
    outs = []
    for batch in ds:
        assert batch["image"].shape[1:] == (T, 32, 32, C) and batch["months"].shape[1:] == (T,)
        outs.append(merge(batch["image"][:, 0, :, :, :1]))  # "model": month 0, band a
    out = np.concatenate(outs, axis=1)
    assert out.shape == (len(views), 3, h, w)
    for i, c in enumerate(chips):
        want = np.clip(c["image"][0, ..., 0] / 10, 0, 1)
        for v in range(len(views)):
            np.testing.assert_allclose(out[v, i], want, atol=1e-6)
    with pytest.raises(ConfigError):
        map_views(7)


def test_read_ids_targets_in_file_order(tmp_path):
    chips = [chip(i) for i in range(3)]
    test_chip = dict(chip(9), target=None)
    files = write_chips(tmp_path / "a.tfrec", chips + [test_chip])
    ids, targets = td.read_ids_targets(files, spec())
    assert ids == ["c0", "c1", "c2", "c9"] and targets.shape == (4, H, W)
    np.testing.assert_array_equal(targets[1], chips[1]["target"])
    assert (targets[3] == -1).all()


def test_options_from_settings():
    o = td.options({"temporal_input": "mean", "month_dropout": 0.2, "aug_number": 3, "aug_rotate": 10.0,
                    "aug_crop_scale": 0.0, "band_norm": None})
    assert o["temporal_input"] == "mean" and o["month_dropout"] == 0.2 and o["norm"] is None
    assert o["augment"] == {"flip": True, "rot90": True, "rotate": 10.0, "scale": 0.0, "shift": 0.0, "map_aug": {}}


def test_flip_turn_index_is_one_of_the_eight_square_symmetries():
    x = tf.reshape(tf.range(2 * 5 * 5 * 1, dtype=tf.float32), [2, 5, 5, 1])
    views = {name: rviews.apply_view(x, name).numpy().tobytes() for name in rviews.TTA_VIEWS}
    views["anti-transpose"] = tf.image.rot90(rviews.apply_view(x, "transpose"), 2).numpy().tobytes()
    seen = set()
    for _ in range(80):
        moved = td.move_pixels(x, td.flip_turn_index(5, 5)).numpy().tobytes()
        match = [k for k, v in views.items() if v == moved]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 8  # every symmetry drawn
    only_flips = {td.move_pixels(x, td.flip_turn_index(5, 5, rot90=False)).numpy().tobytes() for _ in range(40)}
    assert only_flips == {views[k] for k in ("identity", "flip_lr", "flip_ud", "rot180")}


def test_map_aug_reaches_the_temporal_pair():
    # the shared map_aug setting: cutout zeroes every month and the target in one box; the affine moves
    # months and target together (target drawn from the image stays the image's)
    o = td.options({"aug_number": 0, "map_aug": {"cutout_p": 1.0}})
    assert o["augment"]["map_aug"] == {"cutout_p": 1.0}
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.1, 1.0, [3, 16, 16, 2]).astype(np.float32))
    target = tf.constant(rng.uniform(1.0, 5.0, [16, 16]).astype(np.float32))
    out, t = td.augment_pair(x, target, o["augment"])
    cut = (out.numpy() == 0).all(axis=(0, 3))
    assert cut.any() and (t.numpy()[cut] == 0).all() and (t.numpy()[~cut] > 0).all()
    ramp = np.tile(np.arange(16, dtype=np.float32), [16, 1])
    x = tf.constant(np.repeat(ramp[None, ..., None], 3, 0))
    out, t = td.augment_pair(x, tf.constant(ramp), {"flip": True, "rot90": True, "map_aug": {"p": 1.0, "rotate": 30}})
    np.testing.assert_allclose(out.numpy()[1, ..., 0], t.numpy(), atol=1.01)  # nearest vs bilinear only
    assert np.abs(t.numpy() - ramp).max() > 1


def test_month_dropout_on_a_share_of_the_chips():
    """month_dropout_chips 0.5: about half the chips keep all their months (the 1st place's gate)."""
    tf.random.set_seed(3)
    months = tf.ones([12], tf.float32)
    kept = np.array([td.kept_months(months, 0.3, chips=0.5).numpy() for _ in range(400)])
    untouched = (kept.sum(1) == 12).mean()
    # P(all 12 kept) = 0.5 + 0.5 * 0.7^12 = 0.507
    assert 0.43 < untouched < 0.58
    assert kept.sum(1).min() >= 1
    # dropped share over all months: 0.5 * 0.3
    assert 1 - kept.mean() == pytest.approx(0.15, abs=0.03)
    all_chips = np.array([td.kept_months(months, 0.3).numpy() for _ in range(200)])
    assert (all_chips.sum(1) == 12).mean() < 0.05
    np.testing.assert_array_equal(td.kept_months(months, 0.3, chips=0.0).numpy(), np.ones(12))


def test_month_needs_masks_months_without_the_sensor(tmp_path):
    """month_needs S2: a month whose S2 image is unusable is masked and zeroed in every pipeline."""
    groups = [("S1", 1, "float32"), ("S2", 1, "uint16")]
    s = TemporalSpec(T, (H, W), ["a", "b"], {"a": [0.0, 450.0], "b": [0.0, 450.0]}, groups=groups)
    image = np.full((T, H, W, 2), 90.0, np.float32)
    valid = np.ones(image.shape, bool)
    sensor_months = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], np.uint8)
    path = str(tmp_path / "c.tfrec")
    with tf.io.TFRecordWriter(path) as f:
        f.write(make_example("c", image, valid, np.ones(T), np.full((H, W), 10.0, np.float32), groups=groups,
                             sensor_months=sensor_months))
    for needs, want in (("any", [1, 1, 1, 1]), ("S2", [1, 0, 1, 0])):
        x, _ = next(iter(td.eval_dataset([path], s, 1, pad_multiple=0, month_needs=needs)))
        np.testing.assert_array_equal(x["months"].numpy()[0], want)
        np.testing.assert_allclose(x["image"].numpy()[0, :, 0, 0, 0], np.array(want) * 0.2, atol=1e-6)
        tx, _ = next(iter(td.train_dataset([path], s, 1, pad_multiple=0, month_needs=needs, augment={}, seed=0)))
        np.testing.assert_array_equal(tx["months"].numpy()[0], want)
    with pytest.raises(ConfigError, match="month_needs 'S3'"):
        td.month_need_index(s, "S3")
    assert td.month_need_index(spec(), "S2") is None  # records without per-sensor presence: any
