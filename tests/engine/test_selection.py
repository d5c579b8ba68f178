"""Which epoch a fold keeps (engine.train FoldCallback: select best | smoothed | last, min_epochs), the
warning on an epoch at either edge of the schedule, and the task defaults of --select auto."""
import math

import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.engine import train
from foldnet.tasks import base as tasks

# A validation curve like the leave-one-sensor-out cloud fold: a lucky first epoch, a dip, then a
# steady rise with noise (higher is better).
CURVE = [0.80, 0.30, 0.45, 0.55, 0.62, 0.66, 0.70, 0.76, 0.69, 0.72, 0.73, 0.74]


def _drive(tmp_path, values, select, min_epochs=0, window=3, mode="max", stop_patience=0, start=0, state=None):
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="mse")
    fold_dir = tmp_path / "fold_0"
    fold_dir.mkdir(parents=True, exist_ok=True)
    state = state or train.FoldState(str(fold_dir / "state"))
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(fold_dir / "state"), max_to_keep=2)
    cb = train.FoldCallback(str(fold_dir), state, manager, "val_iou", mode, "cosine", 4, 0.5, 0.0, stop_patience,
                            0.0, select=select, min_epochs=min_epochs, select_window=window, n_epochs=len(values))
    cb.set_model(model)
    for epoch in range(start, len(values)):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"val_iou": values[epoch], "loss": 1.0})
        if model.stop_training:
            break
    return train.read_best(str(fold_dir / "best.h5")), state


def test_best_keeps_the_lucky_first_epoch_unless_min_epochs(tmp_path):
    (epoch, value), _ = _drive(tmp_path, CURVE, "best")
    assert (epoch, value) == (0, pytest.approx(0.80))
    (epoch, value), _ = _drive(tmp_path / "m", CURVE, "best", min_epochs=3)
    assert (epoch, value) == (7, pytest.approx(0.76))  # the best epoch from the third on


def test_smoothed_keeps_the_best_mean_of_the_window(tmp_path):
    (epoch, value), _ = _drive(tmp_path, CURVE, "smoothed", window=3)
    means = {e: np.mean(CURVE[e - 2:e + 1]) for e in range(2, len(CURVE))}
    best = max(means, key=means.get)
    assert epoch == best == 11 and value == pytest.approx(means[best])
    # the lucky single epoch 0 (0.80) never counted: epochs before a full window are not kept
    (epoch, _), _ = _drive(tmp_path / "w1", CURVE[:3], "smoothed", window=3)
    assert epoch == 2


def test_last_keeps_the_last_epoch_and_min_epochs_holds_early_stopping(tmp_path):
    (epoch, value), _ = _drive(tmp_path, CURVE, "last")
    assert (epoch, value) == (11, pytest.approx(0.74))
    falling = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0]
    _, state = _drive(tmp_path / "stop", falling, "best", min_epochs=0, stop_patience=2)
    assert state.d["stopped"] and state.d["epochs_done"] == 3
    best, state = _drive(tmp_path / "hold", falling, "best", min_epochs=6, stop_patience=2)
    assert state.d["stopped"] and state.d["epochs_done"] == 6 and best[0] == 5  # kept epoch 6, stopped after it


def test_smoothing_survives_a_resume(tmp_path):
    _, state = _drive(tmp_path, CURVE[:6], "smoothed")
    state.save()
    resumed = train.FoldState(state.dir)
    (epoch, value), _ = _drive(tmp_path, CURVE, "smoothed", start=6, state=resumed)
    (epoch2, value2), _ = _drive(tmp_path / "once", CURVE, "smoothed")
    assert (epoch, value) == (epoch2, pytest.approx(value2))


def test_min_epochs_beyond_a_short_run_still_keeps_the_last_epoch(tmp_path):
    (epoch, _), _ = _drive(tmp_path, [float("nan"), 0.2, 0.1], "best", min_epochs=50)
    assert epoch == 2  # the run ended before min_epochs: its last epoch is kept rather than nothing


def test_edge_warning_names_the_first_and_last_tenth():
    assert "first tenth" in train.edge_warning(1, 20, "best")
    assert "first tenth" in train.edge_warning(2, 20, "smoothed")
    assert train.edge_warning(3, 20, "best") is None
    assert "last tenth" in train.edge_warning(20, 20, "best") and "last tenth" in train.edge_warning(19, 20, "best")
    assert train.edge_warning(20, 20, "last") is None and train.edge_warning(1, 8, "best") is None


def test_auto_selection_is_smoothed_after_a_quarter_for_map_tasks():
    cfg = {"select": "auto", "min_epochs": -1, "select_window": 3, "n_epochs": 14}
    assert train.selection(cfg, tasks.get("segmentation")) == ("smoothed", math.ceil(14 / 4), 3)
    assert train.selection(cfg, tasks.get("temporal_regression")) == ("smoothed", 4, 3)
    assert train.selection(cfg, tasks.get("classification")) == ("best", 0, 3)
    assert train.selection(dict(cfg, select="last", min_epochs=2), tasks.get("segmentation")) == ("last", 2, 3)


def test_selection_settings_are_checked_with_the_others():
    from foldnet.core.errors import ConfigError
    from foldnet.engine import config

    cfg = config.parse_config(["--select", "smoothed", "--select_window", "5", "--min_epochs", "2"])
    assert (cfg["select"], cfg["select_window"], cfg["min_epochs"]) == ("smoothed", 5, 2)
    with pytest.raises(ConfigError) as e:
        config.parse_config(["--select", "median", "--select_window", "0", "--min_epochs", "-2"])
    assert all(name in str(e.value) for name in ("select", "select_window", "min_epochs"))
