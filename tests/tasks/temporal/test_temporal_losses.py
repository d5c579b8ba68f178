"""Temporal regression loss and metrics against hand-computed values; global under MirroredStrategy."""
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
from foldnet.tasks.temporal import losses as temporal_losses

# Three 2x2 chips (target units; -1 unknown, 500 above the cap of 400).
TRUTH = np.array([[[10, 20], [-1, 500]],     # valid under cap 400: 10, 20 (errors 2, -4)
                  [[0, 5], [7, 9]],          # all valid (errors 1, 1, -1, 3)
                  [[-1, -1], [-1, -1]]],     # no valid pixel
                 np.float32)
PRED = np.array([[[12, 16], [3, 100]],
                 [[1, 6], [6, 12]],
                 [[50, 50], [50, 50]]], np.float32)
CHIP_A = math.sqrt((4 + 16) / 2)            # 3.1623
CHIP_B = math.sqrt((1 + 1 + 1 + 9) / 4)     # 1.7321
CHIP_A_UNCAPPED = math.sqrt((4 + 16 + 400 ** 2) / 3)
POOLED = math.sqrt((4 + 16 + 1 + 1 + 1 + 9) / 6)


def value(fn, truth=TRUTH, pred=PRED):
    return float(fn(tf.constant(truth[..., None]), tf.constant(pred[..., None])))


def test_loss_by_hand_with_cap_unknown_pixels_and_an_empty_chip():
    assert value(temporal_losses.make_loss("rmse", cap=400)) == pytest.approx((CHIP_A + CHIP_B) / 2, rel=1e-6)
    assert value(temporal_losses.make_loss(None, cap=400)) == pytest.approx((CHIP_A + CHIP_B) / 2, rel=1e-6)
    assert value(temporal_losses.make_loss("pooled_rmse", cap=400)) == pytest.approx(POOLED, rel=1e-6)
    # without a cap the 500 counts (error 400 on chip A)
    assert value(temporal_losses.make_loss("rmse")) == pytest.approx((CHIP_A_UNCAPPED + CHIP_B) / 2, rel=1e-6)
    # only the chip without a valid pixel: loss 0 and gradient 0, never NaN
    pred = tf.Variable(PRED[2:, ..., None])
    with tf.GradientTape() as tape:
        loss = temporal_losses.make_loss("rmse", cap=400)(tf.constant(TRUTH[2:, ..., None]), pred)
    grad = tape.gradient(loss, pred)
    assert float(loss) == 0.0 and np.all(np.isfinite(grad.numpy())) and not grad.numpy().any()
    # a perfect chip: RMSE 0 and a finite gradient (the square root at 0)
    pred = tf.Variable(np.maximum(TRUTH[1:2], 0)[..., None])
    with tf.GradientTape() as tape:
        loss = temporal_losses.make_loss("rmse", cap=400)(tf.constant(TRUTH[1:2, ..., None]), pred)
    assert float(loss) == 0.0 and np.all(np.isfinite(tape.gradient(loss, pred).numpy()))


def test_loss_gradient_is_that_of_the_per_chip_mean():
    pred = tf.Variable(PRED[..., None])
    with tf.GradientTape() as tape:
        loss = temporal_losses.make_loss("rmse", cap=400)(tf.constant(TRUTH[..., None]), pred)
    grad = tape.gradient(loss, pred).numpy()[..., 0]
    # d/dp of (1/2) sqrt(sum e^2 / n) = (1/2) e / (n rmse) on valid pixels, 0 elsewhere
    np.testing.assert_allclose(grad[0], 0.5 * np.array([[2, -4], [0, 0]]) / (2 * CHIP_A), rtol=1e-5)
    np.testing.assert_allclose(grad[1], 0.5 * np.array([[1, 1], [-1, 3]]) / (4 * CHIP_B), rtol=1e-5)
    assert not grad[2].any()


def test_metrics_accumulate_over_batches_and_reset():
    chip, pooled, uncapped_chip = temporal_losses.make_metrics(cap=400)
    assert (chip.name, pooled.name, uncapped_chip.name) == ("chip_rmse", "pooled_rmse", "chip_rmse_uncapped")
    for k in range(3):  # one chip per batch
        for m in (chip, pooled, uncapped_chip):
            m.update_state(tf.constant(TRUTH[k:k + 1, ..., None]), tf.constant(PRED[k:k + 1, ..., None]))
    assert float(chip.result()) == pytest.approx((CHIP_A + CHIP_B) / 2, rel=1e-6)
    assert float(pooled.result()) == pytest.approx(POOLED, rel=1e-6)
    # the checkpoint metric of the 1st place: every known pixel, above the cap too
    assert float(uncapped_chip.result()) == pytest.approx((CHIP_A_UNCAPPED + CHIP_B) / 2, rel=1e-6)
    uncapped = temporal_losses.ChipRMSE()
    uncapped.update_state(tf.constant(TRUTH[..., None]), tf.constant(PRED[..., None]))
    assert float(uncapped.result()) == pytest.approx((CHIP_A_UNCAPPED + CHIP_B) / 2, rel=1e-6)
    for m in (chip, pooled):
        m.reset_state()
        assert float(m.result()) == 0.0


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="'mae'.*rmse or pooled_rmse"):
        temporal_losses.make_loss("mae")


DISTRIBUTED = r"""
import json
import foldnet
from foldnet.engine import strategy
devices = strategy.split_cpu(2)
import numpy as np
import tensorflow as tf
from foldnet.tasks.temporal import losses as temporal_losses
keras = tf.keras
rng = np.random.default_rng(0)
x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
y = rng.uniform(0, 30, size=(4, 8, 8, 1)).astype("float32")
y[rng.random(y.shape) < 0.3] = -1.0   # unknown pixels
y[0, :2] = 500.0                      # above the cap
y[2] = -1.0                           # a chip without a valid pixel

def build():
    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(1, 3, padding="same",
                              kernel_initializer=keras.initializers.RandomNormal(stddev=2.0, seed=1))(inputs)
    return keras.Model(inputs, out)

w0 = build().get_weights()
out = {}
for kind, strat in [("single", tf.distribute.get_strategy()), ("mirrored", tf.distribute.MirroredStrategy(devices))]:
    for loss in ("rmse", "pooled_rmse"):
        with strat.scope():
            model = build()
            model.set_weights(w0)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=temporal_losses.make_loss(loss, cap=400),
                          metrics=temporal_losses.make_metrics(cap=400))
        pred0 = model.predict(x, batch_size=4, verbose=0)
        before = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
        hist = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        out[f"{kind}_{loss}"] = {"fit_loss": hist.history["loss"][0], "eval": before,
                                 "weights": [w.tolist() for w in model.get_weights()], "pred0": pred0.tolist(),
                                 "replicas": strat.num_replicas_in_sync}
out["y"] = y.tolist()
print(json.dumps(out))
"""


def test_loss_and_metrics_are_global_under_mirrored_strategy():
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    run = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    y = np.array(out["y"])[..., 0]
    for loss in ("rmse", "pooled_rmse"):
        single, mirrored = out[f"single_{loss}"], out[f"mirrored_{loss}"]
        assert single["replicas"] == 1 and mirrored["replicas"] == 2
        assert mirrored["fit_loss"] == pytest.approx(single["fit_loss"], rel=1e-5)
        for a, b in zip(single["weights"], mirrored["weights"]):  # one SGD step: the same gradient
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)
        # evaluation in batches of 2 over 2 replicas (1 chip each) = the numpy values of all 4 chips
        pred = np.array(single["pred0"])[..., 0]
        valid = (y >= 0) & (y <= 400)
        per_chip = [math.sqrt(((pred[i] - y[i])[valid[i]] ** 2).mean()) for i in range(4) if valid[i].any()]
        assert len(per_chip) == 3
        pooled = math.sqrt(((pred - y)[valid] ** 2).mean())
        for run_ in (single, mirrored):
            assert run_["eval"]["chip_rmse"] == pytest.approx(np.mean(per_chip), rel=1e-5)
            assert run_["eval"]["pooled_rmse"] == pytest.approx(pooled, rel=1e-5)
        # the global loss of the first (whole) batch = the training loss of the one step
        assert single["fit_loss"] == pytest.approx(np.mean(per_chip) if loss == "rmse" else pooled, rel=1e-5)
