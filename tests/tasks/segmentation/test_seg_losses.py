"""Segmentation losses and metrics against hand-computed values; global reductions under MirroredStrategy."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError
from foldnet.tasks.segmentation import losses as seg_losses

# Two 2x2 images. A: truth [[1, 0], [1, 0]], all valid. B: empty truth, pixel (0, 1) invalid.
TRUTH = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 0]]], np.float32)
PRED = np.array([[[0.8, 0.2], [0.6, 0.4]], [[0.1, 0.3], [0.0, 0.0]]], np.float32)
VALID = np.array([[[1, 1], [1, 1]], [[1, 0], [1, 1]]], np.float32)


def target(truth=TRUTH, valid=VALID, group=None):
    channels = [truth, valid] + ([np.broadcast_to(np.asarray(group, np.float32)[:, None, None], truth.shape)]
                                 if group is not None else [])
    return tf.constant(np.stack(channels, -1))


def loss(spec, y_true=None, y_pred=PRED):
    y_true = target() if y_true is None else y_true
    return float(seg_losses.make_loss(spec)(y_true, tf.constant(y_pred[..., None])))


def test_overlap_losses_by_hand():
    # valid sums: sum(p t) = 0.8 + 0.6 = 1.4, sum(p) = 2.0 + 0.1 (0.3 is invalid), sum(t) = 2
    assert loss("dice") == pytest.approx(1 - (2 * 1.4 + 1) / (2.1 + 2 + 1), abs=1e-6)  # 0.254902
    assert loss("jaccard") == pytest.approx(1 - (1.4 + 1) / (4.1 - 1.4 + 1), abs=1e-6)  # 0.351351
    # per image: A (2.8 + 1) / (4 + 1) = 0.76; B (0 + 1) / (0.1 + 1)
    assert loss({"dice": 1.0, "per_image": True}) == pytest.approx(((1 - 0.76) + (1 - 1 / 1.1)) / 2, abs=1e-6)
    assert loss({"jaccard": 1.0, "per_image": True}) == pytest.approx(
        ((1 - 2.4 / 3.6) + (1 - 1 / 1.1)) / 2, abs=1e-6)
    assert loss({"dice": {"weight": 1.0, "smooth": 0.0}}) == pytest.approx(1 - 2.8 / 4.1, abs=1e-6)


def test_pixel_losses_by_hand():
    # 7 valid pixels; p_t: 0.8, 0.8, 0.6, 0.6 (A), 0.9, 1, 1 (B); 1 is clipped to 1 - 1e-7
    p_t = np.array([0.8, 0.8, 0.6, 0.6, 0.9, 1 - 1e-7, 1 - 1e-7])
    bce = float(np.mean(-np.log(p_t)))
    focal = float(np.mean(-(1 - p_t) ** 2 * np.log(p_t)))
    assert bce == pytest.approx(0.224757, abs=1e-5)
    assert loss("bce") == pytest.approx(bce, rel=1e-5)
    assert loss("focal") == pytest.approx(focal, rel=1e-5)
    assert loss({"focal": 1.0, "gamma": 1}) == pytest.approx(float(np.mean(-(1 - p_t) * np.log(p_t))), rel=1e-5)
    combined = loss({"jaccard": 1.0, "focal": 0.1, "per_image": True})
    assert combined == pytest.approx(((1 - 2.4 / 3.6) + (1 - 1 / 1.1)) / 2 + 0.1 * focal, rel=1e-5)


def test_empty_masks_and_all_invalid_pixels_give_no_nan():
    zeros = np.zeros_like(TRUTH)
    # empty truth, empty prediction: perfect (smoothing), for every term
    for spec in ("dice", "jaccard", {"dice": 1.0, "per_image": True}, "bce"):
        assert loss(spec, target(zeros, np.ones_like(VALID)), zeros) == pytest.approx(0.0, abs=1e-5)
    # empty truth, prediction 0.5 everywhere: dice = 1 / (4 + 1) pooled over 8 pixels -> 1 - 1 / 5
    assert loss("dice", target(zeros, np.ones_like(VALID)), zeros + 0.5) == pytest.approx(1 - 1 / 5, abs=1e-6)
    # no valid pixel at all: every loss is 0 and its gradient finite
    y_none = target(TRUTH, np.zeros_like(VALID))
    for spec in ("dice", "jaccard", {"dice": 1.0, "per_image": True}, "focal", "bce"):
        pred = tf.Variable(PRED[..., None])
        with tf.GradientTape() as tape:
            value = seg_losses.make_loss(spec)(y_none, pred)
        grad = tape.gradient(value, pred)
        assert float(value) == 0.0
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() < 1e-6


def test_loss_spec_errors_name_every_problem():
    with pytest.raises(ConfigError) as err:
        seg_losses.parse_loss_spec({"jacard": 1.0, "focal": -1, "dice": {"weight": 1, "gama": 2}})
    text = str(err.value)
    assert "unknown loss term 'jacard'" in text and "focal: weight must be" in text and "['gama']" in text
    with pytest.raises(ConfigError, match="no term"):
        seg_losses.parse_loss_spec({"per_image": True})
    terms = seg_losses.parse_loss_spec({"jaccard": 1.0, "focal": {"weight": 0.1, "gamma": 3}, "per_image": True})
    assert terms == [("jaccard", 1.0, {"per_image": True, "gamma": 2.0, "smooth": 1.0}),
                     ("focal", 0.1, {"per_image": True, "gamma": 3, "smooth": 1.0})]


def test_metrics_accumulate_over_batches():
    dice, iou, loc = seg_losses.make_metrics(("dice", "iou", "location_iou"), n_groups=3)
    # batch 1: A (group 0) and B (group 2); threshold 0.5 -> A predicts (0,0), (1,0): both true
    # B predicts nothing. batch 2: C (group 0): truth 1 pixel at (0, 0), prediction 0.5 at (0, 1) (>= 0.5)
    y1 = target(group=[0, 2])
    truth_c = np.array([[[1, 0], [0, 0]]], np.float32)
    pred_c = np.array([[[0.49, 0.5], [0.0, 0.0]]], np.float32)
    y2 = target(truth_c, np.ones_like(truth_c), group=[0])
    for m in (dice, iou, loc):
        m.update_state(y1, PRED[..., None])
        m.update_state(y2, pred_c[..., None])
    # TP = 2, FP = 1, FN = 1
    assert float(dice.result()) == pytest.approx(4 / 6)
    assert float(iou.result()) == pytest.approx(2 / 4)
    # group 0: I = 2, U = 2 + 2 = 4 -> 0.5; group 2: U = 0 -> 1.0; group 1 not seen
    assert float(loc.result()) == pytest.approx((0.5 + 1.0) / 2)
    for m in (dice, iou, loc):
        m.reset_state()
        assert float(m.result()) == 1.0  # nothing seen: nothing to find
    with pytest.raises(ConfigError, match="needs the number of groups"):
        seg_losses.make_metrics(("location_iou",))


DISTRIBUTED = r"""
import json, sys
import foldnet
from foldnet.engine import strategy
devices = strategy.split_cpu(2)
import numpy as np
import tensorflow as tf
from foldnet.tasks.segmentation import losses as seg_losses
keras = tf.keras
rng = np.random.default_rng(0)
x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
mask = (rng.random((4, 8, 8)) < 0.3).astype("float32")
mask[0, :4] = 1.0
mask[3] = 0.0                      # an empty mask
valid = (rng.random((4, 8, 8)) > 0.2).astype("float32")
valid[2] = 0.0                     # an image without a valid pixel
group = np.broadcast_to(np.array([0, 1, 0, 1], "float32")[:, None, None], (4, 8, 8))
y = np.stack([mask, valid, group], -1)

def build():
    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid",
                              kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1))(inputs)
    return keras.Model(inputs, out)

w0 = build().get_weights()
specs = ["dice", {"jaccard": 1.0, "focal": 0.1, "per_image": True}, "bce"]
out = {}
for kind, strat in [("single", tf.distribute.get_strategy()), ("mirrored", tf.distribute.MirroredStrategy(devices))]:
    for k, spec in enumerate(specs):
        with strat.scope():
            model = build()
            model.set_weights(w0)
            model.compile(optimizer=keras.optimizers.SGD(1.0), loss=seg_losses.make_loss(spec),
                          metrics=seg_losses.make_metrics(("dice", "iou", "location_iou"), n_groups=2))
        pred0 = model.predict(x, batch_size=4, verbose=0)
        before = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
        hist = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        out[f"{kind}{k}"] = {"fit_loss": hist.history["loss"][0], "eval": before,
                             "weights": [w.tolist() for w in model.get_weights()], "pred0": pred0.tolist(),
                             "replicas": strat.num_replicas_in_sync}
print(json.dumps(out))
"""


def test_losses_and_metrics_are_global_under_mirrored_strategy():
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    run = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["single0"]["replicas"] == 1 and out["mirrored0"]["replicas"] == 2
    rng = np.random.default_rng(0)
    rng.normal(size=(4, 8, 8, 3))
    mask = (rng.random((4, 8, 8)) < 0.3).astype("float32")
    mask[0, :4] = 1.0
    mask[3] = 0.0
    valid = (rng.random((4, 8, 8)) > 0.2).astype("float32")
    valid[2] = 0.0
    for k in range(3):
        single, mirrored = out[f"single{k}"], out[f"mirrored{k}"]
        assert mirrored["fit_loss"] == pytest.approx(single["fit_loss"], rel=1e-5)
        for a, b in zip(single["weights"], mirrored["weights"]):  # one SGD step: the same gradient
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
        for name in ("loss", "dice", "iou", "location_iou"):
            assert mirrored["eval"][name] == pytest.approx(single["eval"][name], rel=1e-5), name
        # the metrics, accumulated over 2 batches (and 2 replicas), are the pooled numpy values
        pred = np.array(single["pred0"])[..., 0] >= 0.5
        truth = mask * valid > 0
        pred_v = pred & (valid > 0)
        tp, fp, fn = (pred_v & truth).sum(), (pred_v & ~truth).sum(), (~pred_v & truth).sum()
        assert single["eval"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-6)
        assert single["eval"]["iou"] == pytest.approx(tp / (tp + fp + fn), rel=1e-6)
        per_group = []
        for g in (0, 1):
            i = (pred_v & truth)[g::2].sum()
            u = (pred_v | truth)[g::2].sum()
            per_group.append(1.0 if u == 0 else i / u)
        assert single["eval"]["location_iou"] == pytest.approx(np.mean(per_group), rel=1e-6)
    # the data tells global from per-replica: pooled soft Dice of the whole batch differs from the
    # mean of the two half-batch Dice losses (what a per-replica reduction would train on)
    p = np.array(out["single0"]["pred0"])[..., 0] * valid
    t = mask * valid

    def dice(sl):
        return 1 - (2 * (p[sl] * t[sl]).sum() + 1) / (p[sl].sum() + t[sl].sum() + 1)

    whole = dice(slice(0, 4))
    assert abs(whole - (dice(slice(0, 2)) + dice(slice(2, 4))) / 2) > 1e-3
    assert out["single0"]["fit_loss"] == pytest.approx(whole, rel=1e-5)
    assert math.isfinite(out["mirrored1"]["fit_loss"])


def test_two_class_dice_by_hand():
    """smp's multiclass DiceLoss on the 2-class softmax [1 - p, p], pooled over the batch, smooth 0,
    a class absent from the truth counts 0, averaged over background and kelp."""
    # valid pixels: A all 4, B 3 of 4 (pixel (0, 1) with p 0.3 is out)
    # kelp: I = 0.8 + 0.6 = 1.4; sum p = 0.8 + 0.2 + 0.6 + 0.4 + 0.1 + 0.0 + 0.0 = 2.1; sum t = 2 -> C = 4.1
    # background: p0 = 0.2, 0.8, 0.4, 0.6 | 0.9, 1, 1; t0 = 0, 1, 0, 1 | 1, 1, 1
    #   I = 0.8 + 0.6 + 0.9 + 1 + 1 = 4.3; sum p0 = 4.9; sum t0 = 5 -> C = 9.9
    want = ((1 - 2.8 / 4.1) + (1 - 8.6 / 9.9)) / 2
    assert loss({"dice2": 1.0, "smooth": 0}) == pytest.approx(want, rel=1e-6)
    # an all-background batch: the kelp class is absent and counts 0 (not 1), the mean still halves
    empty = np.zeros_like(TRUTH)
    # background: I = sum p0 over the 7 valid = 0.2 + 0.8 + 0.4 + 0.6 + 0.9 + 1 + 1 = 4.9; C = 4.9 + 7
    assert loss({"dice2": 1.0, "smooth": 0}, target(truth=empty)) == pytest.approx((1 - 9.8 / 11.9) / 2, rel=1e-6)
    # smoothing enters both numerator and denominator, per class
    want_s1 = ((1 - 3.8 / 5.1) + (1 - 9.6 / 10.9)) / 2
    assert loss({"dice2": 1.0, "smooth": 1}) == pytest.approx(want_s1, rel=1e-6)
    with pytest.raises(ConfigError, match="dice2 is pooled over the batch"):
        seg_losses.parse_loss_spec({"dice2": 1.0, "per_image": True})
