"""Optimiser settings: onecycle / constant schedules, Nesterov, global-norm clipping, weight-decay
exclusions, gradient accumulation, their validation; offline pretrained weights refused up front."""
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
from foldnet.engine import config, runner, train

keras = tf.keras


def cos_anneal(start, end, fraction):
    return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)


def test_onecycle_matches_pytorch_onecyclelr_by_hand():
    # Kelp winner: max_lr 3e-4, pct_start 0.1, div_factor 2, final_div_factor 100; 1000 updates
    s = train.OneCycle(3e-4, 1000, pct_start=0.1, div_factor=2, final_div_factor=100)
    initial, final = 1.5e-4, 1.5e-6
    up_end, down_end = 99.0, 999.0  # pct_start * total - 1, total - 1
    expected = {
        0: initial,
        50: cos_anneal(initial, 3e-4, 50 / up_end),
        99: 3e-4,
        100: cos_anneal(3e-4, final, 1 / (down_end - up_end)),
        549: cos_anneal(3e-4, final, 450 / 900),  # half way down: (3e-4 + 1.5e-6) / 2
        999: final,
        5000: final,  # stays at the end value
    }
    for step, value in expected.items():
        assert float(s(step)) == pytest.approx(value, rel=1e-5), step
    assert expected[549] == pytest.approx((3e-4 + 1.5e-6) / 2)


def test_schedules_from_the_config():
    cfg = config.make_config(schedule="onecycle", lr=0.01, n_epochs=4, schedule_options={"pct_start": 0.25})
    lr = train.learning_rate(cfg, steps_per_epoch=10)
    assert isinstance(lr, train.OneCycle)
    assert (lr.total_steps, lr.pct_start, lr.div_factor, lr.final_div_factor) == (40, 0.25, 25.0, 1e4)
    assert float(lr(0)) == pytest.approx(0.01 / 25, rel=1e-5)
    assert train.learning_rate(config.make_config(schedule="constant", lr=0.002), 10) == 0.002
    cosine = train.learning_rate(config.make_config(schedule="cosine", lr=1.0, min_lr=1e-4, n_epochs=1), 10)
    assert float(cosine(10)) == pytest.approx(1e-4)  # the cosine floor is min_lr


def test_nesterov_and_clip_norm_reach_the_optimizer():
    assert train.make_optimizer("sgd", 0.1).nesterov is True  # today's default
    assert train.make_optimizer("sgd", 0.1, nesterov=False).nesterov is False
    assert train.make_optimizer("adam", 0.1).global_clipnorm is None


def test_clip_norm_clips_a_huge_gradient():
    var = tf.Variable([0.0, 0.0])
    opt = train.make_optimizer("sgd", 1.0, nesterov=False, clip_norm=3.0)
    opt.apply_gradients([(tf.constant([3e6, 4e6]), var)])
    # global norm 5e6 -> 3: gradient (1.8, 2.4); SGD lr 1, first step of momentum: -g
    np.testing.assert_allclose(var.numpy(), [-1.8, -2.4], rtol=1e-5)
    free = tf.Variable([0.0, 0.0])
    train.make_optimizer("sgd", 1.0, nesterov=False).apply_gradients([(tf.constant([3e6, 4e6]), free)])
    np.testing.assert_allclose(free.numpy(), [-3e6, -4e6])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_all_false_leaves_biases_undecayed(name):
    for decay_all in (True, False):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones"),
                                  keras.layers.BatchNormalization()])
        opt = train.make_optimizer(name, 0.1, weight_decay=0.5)
        if not decay_all:
            excluded = train.exclude_vectors_from_decay(opt, model)
            assert len(excluded) == 3  # dense bias, BN gamma, BN beta
        kernel = model.layers[0].kernel.numpy()
        zeros = [tf.zeros_like(v) for v in model.trainable_variables]
        opt.apply_gradients(zip(zeros, model.trainable_variables))  # a pure decay step
        np.testing.assert_allclose(model.layers[0].kernel.numpy(), kernel * (1 - 0.1 * 0.5), rtol=1e-6)
        bias = model.layers[0].bias.numpy()
        if decay_all:
            np.testing.assert_allclose(bias, [0.95, 0.95], rtol=1e-6)
        else:
            np.testing.assert_array_equal(bias, [1.0, 1.0])
            np.testing.assert_array_equal(model.layers[1].gamma.numpy(), [1.0, 1.0])


def linear_model():
    tf.keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=train.make_optimizer("sgd", 0.1, nesterov=False), loss="mse")
    return model


def test_accum_steps_2_of_batch_4_is_one_update_of_batch_8():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    whole = linear_model()
    whole.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    accumulated = linear_model()
    accumulated.train_step = train.accumulating_train_step(accumulated, 2)
    history = accumulated.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert accumulated.optimizer.iterations.numpy() == whole.optimizer.iterations.numpy() == 1
    for a, b in zip(accumulated.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a static batch size (drop_remainder, as on TPU) takes fixed-size slices: the same update
    static = linear_model()
    static.train_step = train.accumulating_train_step(static, 2)
    static.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True), epochs=1, verbose=0)
    for a, b in zip(static.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # two separate updates of batch 4 land elsewhere: the accumulation is not a no-op
    twice = linear_model()
    twice.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(twice.get_weights()[0], whole.get_weights()[0])
    # the logged loss is the loss of the 8 examples before the update
    w0, b0 = linear_model().get_weights()
    assert history.history["loss"][0] == pytest.approx(float(np.mean((x @ w0 + b0 - y) ** 2)), rel=1e-5)


def test_accum_steps_with_a_batch_smaller_than_the_steps_stays_finite():
    x = np.ones((1, 3), "float32")
    model = linear_model()
    model.train_step = train.accumulating_train_step(model, 3)
    model.fit(x, np.ones((1, 1), "float32"), batch_size=1, epochs=1, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("values, needle", [
    ({"clip_norm": -1.0}, "clip_norm must be in [0, 1e+06], got -1.0"),
    ({"clip_norm": float("nan")}, "clip_norm must be in [0, 1e+06], got nan"),
    ({"lr": float("inf")}, "lr must be in (0, 10], got inf"),
    ({"accum_steps": 0}, "accum_steps must be in [1, 1e+09], got 0"),
    ({"schedule": "step"}, "schedule='step'"),
    ({"input_norm": "imagenet"}, "input_norm='imagenet'"),
    ({"schedule": "onecycle", "schedule_options": {"pct_start": 1.5}}, "schedule_options.pct_start must be in (0, 1)"),
    ({"schedule": "onecycle", "schedule_options": {"div_factor": float("nan")}}, "schedule_options.div_factor"),
    ({"schedule": "onecycle", "schedule_options": {"max_lr": 1}}, "schedule_options.max_lr: unknown"),
    ({"schedule_options": {"pct_start": 0.1}}, "schedule_options is for schedule onecycle"),
    ({"arch_options": {"decoder_attention": "cbam"}}, "arch_options.decoder_attention='cbam'"),
])
def test_bad_optimiser_settings_are_refused(values, needle):
    with pytest.raises(ConfigError) as e:
        config.make_config(**values)
    assert needle in str(e.value)


def test_defaults_are_todays():
    cfg = config.make_config()
    assert (cfg["nesterov"], cfg["clip_norm"], cfg["decay_all"], cfg["accum_steps"], cfg["input_norm"],
            cfg["schedule"], cfg["schedule_options"]) == (True, 0.0, True, 1, "backbone", "plateau", None)
    assert "schedule_options" not in config.to_yaml(cfg)


def test_offline_imagenet_weights_are_one_clear_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    def offline(fname, origin=None, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no cached weights
    monkeypatch.setattr(tf.keras.utils, "get_file", offline)
    run_dir = tmp_path / "runs" / "member"
    rc = runner.main(["--arch", "efficientnet_b0", "--weights", "imagenet", "--job", "train",
                      "--run_dir", str(run_dir), "--tfrec_dir", str(tmp_path / "tfrec")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--weights none" in err and "URL fetch failure" in err and "Traceback" not in err
    assert not os.path.exists(run_dir)


MIRRORED = r"""
import json
import numpy as np
import foldnet
from foldnet.engine import strategy
devices = strategy.split_cpu(2)
import tensorflow as tf
from foldnet.engine import train
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 3)).astype("float32")
y = rng.normal(size=(8, 1)).astype("float32")
out = {}
for name, accum, strat in (("whole", 1, tf.distribute.get_strategy()),
                           ("mirrored_accum", 2, strategy.get_strategy(devices=devices))):
    with strat.scope():
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1, bias_initializer="ones")])
        opt = train.make_optimizer("sgd", 0.1, weight_decay=0.5, nesterov=False, clip_norm=0.5)
        train.exclude_vectors_from_decay(opt, model)
        model.compile(optimizer=opt, loss="mse")
        if accum > 1:
            model.train_step = train.accumulating_train_step(model, accum)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    out[name] = [w.tolist() for w in model.get_weights()] + [strat.num_replicas_in_sync]
print(json.dumps(out))
"""


def test_accumulation_clipping_and_decay_exclusions_under_two_replicas():
    """2 replicas x 2 micro-batches of 2 = one update of 8, with clipping and decay exclusions
    (no control flow in the step, so MirroredStrategy can aggregate)."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")  # as tests/engine/test_distributed.py
    out = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["whole"][-1] == 1 and got["mirrored_accum"][-1] == 2
    for a, b in zip(got["whole"][:-1], got["mirrored_accum"][:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_input_norm_is_a_resume_key_and_old_runs_still_resume():
    assert "input_norm" in train.RESUME_KEYS
    with pytest.raises(ConfigError, match="input_norm: 'none' then, 'backbone' now"):
        train.check_same_settings({"arch": "tiny", "input_norm": "none"}, {"arch": "tiny", "input_norm": "backbone"}, 0)
    train.check_same_settings({"arch": "tiny"}, {"arch": "tiny", "input_norm": "backbone"}, 0)  # recorded before it
