"""Training of one fold, resumable after a kill at any moment.

Everything that must survive a kill lives in ``fold_K/state/``: a TF checkpoint
of the model and optimizer per epoch (CheckpointManager keeps the last two) and
``state.json``, written atomically after the checkpoint, naming the checkpoint
it belongs to together with the epoch count, the learning-rate and
early-stopping counters, the best value of ``--monitor`` and the history.

The best checkpoint is ``fold_K/best.h5``, replaced atomically, with
its epoch and monitored value stored in the file's attributes: after a resume
the best value is read back from it, so the tf-keras trap (ModelCheckpoint
forgets its best value after BackupAndRestore) cannot happen here.

ReduceLROnPlateau and EarlyStopping are implemented in the same callback with
the same semantics as the Keras ones (patience, factor, min_delta, min_lr) so
that their counters are part of the saved state.
"""
import json
import logging
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from foldnet.core import fileio, plots
from foldnet.core.errors import ConfigError
from foldnet.io import records, rundir, splits
from foldnet.models import backbones as models
from foldnet.tasks import base as tasks

keras = tf.keras
log = logging.getLogger(__name__)


def read_best(path):
    """(epoch, value) stored in a best checkpoint, or None if there is none."""
    import h5py

    if not os.path.exists(path):
        return None
    with h5py.File(path, "r") as f:
        if "foldnet_value" not in f.attrs:
            return None
        return int(f.attrs["foldnet_epoch"]), float(f.attrs["foldnet_value"])


def save_best(model, path, epoch, monitor, value):
    import h5py

    with fileio.atomic_path(path) as tmp:
        model.save_weights(tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs["foldnet_epoch"] = int(epoch)
            f.attrs["foldnet_monitor"] = monitor
            f.attrs["foldnet_value"] = float(value)


class CosineWarmup(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[name-defined]
    """Linear warm-up to ``peak`` then cosine decay to ``floor``, by optimizer step."""

    def __init__(self, peak, total_steps, warmup_steps=0, floor=0.0):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.floor = float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = self.floor + 0.5 * (self.peak - self.floor) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "floor": self.floor}


def make_optimizer(name, lr, weight_decay=0.0):
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=weight_decay or None)
    raise ValueError(f"unknown optimizer {name!r}")


def _current_lr(optimizer):
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(optimizer.iterations))
    return float(keras.backend.get_value(lr))


class FoldState:
    """The resumable state of one fold (``state/state.json``)."""

    def __init__(self, state_dir):
        self.dir = state_dir
        self.path = os.path.join(state_dir, "state.json")
        self.d = {"epochs_done": 0, "checkpoint": None, "plateau_wait": 0, "stop_wait": 0,
                  "best": None, "best_epoch": None, "stopped": False, "lr": None, "history": []}
        if os.path.exists(self.path):
            self.d.update(fileio.read_json(self.path))

    def save(self):
        fileio.atomic_write_json(self.path, self.d)


class FoldCallback(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Best checkpoint, plateau LR, early stopping, history and resume state, per epoch.

    Order inside on_epoch_end: (1) best weights, (2) counters, (3) model +
    optimizer checkpoint, (4) state.json pointing at that checkpoint. A kill
    between any two steps leaves the previous state.json valid, and its
    checkpoint is still kept (max_to_keep=2), so the rerun repeats at most
    the epoch that was interrupted.
    """

    def __init__(self, fold_dir, state, manager, monitor, mode, schedule, lr_patience, lr_factor, min_lr,
                 early_stop_patience, min_delta):
        super().__init__()
        self.fold_dir = fold_dir
        self.state = state
        self.manager = manager
        self.monitor = monitor
        self.mode = mode  # "min" or "max" (the task's monitor_mode)
        self.schedule = schedule
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.min_lr = min_lr
        self.early_stop_patience = early_stop_patience
        self.min_delta = min_delta
        self.best_path = os.path.join(fold_dir, rundir.BEST)
        self._t0 = None

    def improved(self, value):
        best = self.state.d["best"]
        if best is None:
            return True
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.monitor not in logs:
            raise KeyError(f"--monitor {self.monitor!r} is not among the logged values {sorted(logs)}")
        diverged = {k: float(v) for k, v in logs.items()
                    if k in ("loss", "val_loss") and not math.isfinite(float(v))}
        if diverged:
            # NaN weights give NaN maps, whose thresholded metrics look finite (a NaN probability is
            # never >= 0.5): the run stops here, before this epoch is saved or counted.
            raise TrainingDiverged(
                f"training diverged at epoch {epoch + 1}: {', '.join(f'{k} = {v}' for k, v in diverged.items())}; "
                "nothing of this epoch was kept. Lower --lr (or the loss weights, --clip_norm), check the "
                "inputs for NaN, and run again: the fold resumes from its last finite epoch")
        value = float(logs[self.monitor])
        d = self.state.d
        lr = _current_lr(self.model.optimizer)
        if not math.isfinite(value):
            log.info(f"  epoch {epoch + 1}: {self.monitor} is {value}; not a candidate for the best checkpoint")
        elif self.improved(value):
            save_best(self.model, self.best_path, epoch, self.monitor, value)
            d["best"], d["best_epoch"] = value, epoch
            d["plateau_wait"] = d["stop_wait"] = 0
        else:
            d["plateau_wait"] += 1
            d["stop_wait"] += 1
            if self.schedule == "plateau" and d["plateau_wait"] >= self.lr_patience and lr > self.min_lr:
                new_lr = max(lr * self.lr_factor, self.min_lr)
                self.model.optimizer.learning_rate.assign(new_lr)
                log.info(f"  epoch {epoch + 1}: {self.monitor} did not improve for {d['plateau_wait']} epochs; "
                         f"learning rate {lr:.3g} -> {new_lr:.3g}")
                d["plateau_wait"] = 0
            if self.early_stop_patience and d["stop_wait"] >= self.early_stop_patience:
                d["stopped"] = True
                self.model.stop_training = True
                log.info(f"  epoch {epoch + 1}: early stop, no improvement of {self.monitor} "
                         f"for {d['stop_wait']} epochs")
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "lr": lr,
               "seconds": round(time.time() - (self._t0 or time.time()), 2)}
        d["history"] = [r for r in d["history"] if r["epoch"] < epoch + 1] + [row]
        d["lr"] = _current_lr(self.model.optimizer)
        d["checkpoint"] = self.manager.save(checkpoint_number=epoch + 1)
        d["epochs_done"] = epoch + 1
        self.state.save()
        write_history(self.fold_dir, d["history"])


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite: the model's outputs are no result (exit 2, see core.cli)."""


def write_history(fold_dir, history):
    import pandas as pd

    if not history:
        return
    fileio.atomic_write_text(os.path.join(fold_dir, "history.csv"), pd.DataFrame(history).to_csv(index=False))


def is_done(run_dir, fold):
    p = rundir.fold_paths(run_dir, fold)
    if not (os.path.exists(p["done"]) and os.path.exists(p["best"])):
        return False
    try:
        fileio.read_json(p["done"])
    except (OSError, json.JSONDecodeError):
        return False
    return read_best(p["best"]) is not None


# Settings every task's resumed fold must share with its interrupted run (the checkpoint's structure);
# each task adds its own (``Task.resume_keys``).
RESUME_KEYS = ("arch", "dim", "weights", "dropout", "optimizer", "schedule", "arch_options")


def model_settings(cfg, task, spec):
    """The settings a resumed fold must share with its interrupted run. ``arch_options`` is left out
    while unset, so folds interrupted before it was a resume key still resume."""
    keys = [k for k in (*RESUME_KEYS, *task.resume_keys) if not (k == "arch_options" and cfg[k] is None)]
    return {**{k: cfg[k] for k in keys}, **task.spec_settings(spec)}


def check_same_settings(saved, current, fold):
    if not saved:
        return
    # a setting the interrupted run did not record (it became a resume key later) cannot be compared
    diff = [f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in current
            if k in saved and saved.get(k) != current.get(k)]
    if diff:
        raise ConfigError(f"fold {fold} was interrupted while training with other settings ({'; '.join(diff)}); "
                          "rerun with the same settings to resume, or use --overwrite to start the fold again")


def build_compiled_model(cfg, task, spec, steps_per_epoch, strategy):
    with strategy.scope():
        model = task.build_model(cfg, spec, cfg["weights"])
        lr = cfg["lr"]
        if cfg["schedule"] == "cosine":
            lr = CosineWarmup(cfg["lr"], total_steps=steps_per_epoch * cfg["n_epochs"],
                              warmup_steps=int(cfg["warmup_epochs"] * steps_per_epoch), floor=cfg["min_lr"])
        task.compile_model(model, cfg, spec, make_optimizer(cfg["optimizer"], lr, cfg["weight_decay"]))
    return model


def _num_workers(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or "MultiWorker" not in type(strategy).__name__:
        return 1
    return max(resolver.cluster_spec().num_tasks("worker"), 1)


def _keras_verbose(v):
    if v >= 0:
        return v
    import sys

    return 1 if sys.stdout.isatty() else 2


def train_fold(cfg, fold, manifest, run_dir, strategy, extra_callbacks=(), task=None, spec=None):
    """Train fold ``fold`` (resuming if it was interrupted). Returns the model with its best weights.

    ``task`` / ``spec`` default to the manifest's task and its spec (``tasks``).
    """
    task = task or tasks.for_manifest(manifest)
    spec = spec if spec is not None else task.load_spec(manifest)
    p = rundir.fold_paths(run_dir, fold)
    n_folds = manifest["n_folds"]
    train_folds = [f for f in range(n_folds) if f != fold]
    train_files = records.fold_files(manifest, train_folds)
    val_files = records.fold_files(manifest, [fold])
    n_train = sum(manifest["folds"][f]["n_examples"] for f in train_folds)
    batch_size = cfg["batch_size"]
    steps = cfg["steps_per_epoch"] or max((cfg["tiles_per_epoch"] or n_train) // batch_size, 1)
    is_tpu = "TPU" in type(strategy).__name__
    os.makedirs(p["dir"], exist_ok=True)

    state = FoldState(p["state"])
    model = build_compiled_model(cfg, task, spec, steps, strategy)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, p["state"], max_to_keep=2)
    initial_epoch = 0
    if state.d["checkpoint"] and os.path.exists(state.d["checkpoint"] + ".index"):
        ckpt.restore(state.d["checkpoint"]).expect_partial()
        initial_epoch = state.d["epochs_done"]
        if cfg["schedule"] == "plateau" and state.d["lr"] is not None:
            model.optimizer.learning_rate.assign(state.d["lr"])
        log.info(f"fold {fold}: resuming after epoch {initial_epoch} from {state.d['checkpoint']}")
    elif state.d["epochs_done"]:
        log.warning(f"fold {fold}: resume state names a missing checkpoint; starting the fold again")
        shutil.rmtree(p["state"], ignore_errors=True)
        state = FoldState(p["state"])
    settings = dict(model_settings(cfg, task, spec), split=splits.fold_split(manifest, fold))
    if initial_epoch > 0:
        check_same_settings(state.d.get("settings"), settings, fold)
    state.d["settings"] = settings
    best = read_best(p["best"])
    if best is not None and initial_epoch > 0:
        # The best file is the truth about the best value (it may be newer than state.json).
        state.d["best_epoch"], state.d["best"] = best
    elif initial_epoch == 0 and os.path.exists(p["best"]):
        os.remove(p["best"])

    encoded_mb = sum(tf.io.gfile.stat(f).length for f in train_files) / 2**20
    cache = task.cache_mode(cfg, n_train, encoded_mb)
    train_ds = task.train_dataset(train_files, spec, cfg, seed=cfg["seed"] + fold, cache=cache,
                                  drop_remainder=is_tpu, n_workers=_num_workers(strategy))
    val_ds = task.eval_dataset(val_files, spec, cfg)

    controller = FoldCallback(p["dir"], state, manager, cfg["monitor"], task.monitor_mode(cfg["monitor"]),
                              cfg["schedule"], cfg["lr_patience"],
                              cfg["lr_factor"], cfg["min_lr"], cfg["early_stop_patience"], cfg["min_delta"])
    callbacks = [controller, keras.callbacks.TensorBoard(os.path.join(p["dir"], "tb"), profile_batch=0),
                 *extra_callbacks]
    log.info(f"fold {fold}: {n_train} training images ({len(train_files)} shards, cache={cache}), "
        f"{manifest['folds'][fold]['n_examples']} validation, {steps} steps/epoch of {batch_size}, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    if state.d["stopped"] or initial_epoch >= cfg["n_epochs"]:
        log.info(f"fold {fold}: training had already finished; finalising")
    else:
        model.fit(train_ds, steps_per_epoch=steps, epochs=cfg["n_epochs"], initial_epoch=initial_epoch,
                  validation_data=val_ds, callbacks=callbacks, verbose=_keras_verbose(cfg["verbose"]))
    return finish_fold(model, p, state, cfg["monitor"], fold)


def finish_fold(model, p, state, monitor, fold):
    best = read_best(p["best"])
    if best is None:
        raise RuntimeError(f"fold {fold}: no best checkpoint was saved ({monitor} was never finite)")
    model.load_weights(p["best"])
    history = state.d["history"]
    write_history(p["dir"], history)
    plots.plot_history(history, p["curves"], title=f"fold {fold}", monitor=monitor)
    fileio.atomic_write_json(p["done"], {
        "fold": fold, "epochs": state.d["epochs_done"], "best_epoch": best[0] + 1,
        "best_value": best[1], "monitor": monitor, "stopped_early": bool(state.d["stopped"]),
        "settings": state.d.get("settings"),
    })
    shutil.rmtree(p["state"], ignore_errors=True)
    log.info(f"fold {fold}: done, best {monitor} = {best[1]:.4f} at epoch {best[0] + 1}")
    return model


def load_fold_model(cfg, spec, weights_path, strategy=None, *, task):
    """A model of ``cfg['arch']`` for ``spec`` with the weights of ``weights_path`` (no pretrained download)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = task.build_model(cfg, spec, None)
    models.load_checkpoint(model, weights_path)
    return model


def seed_everything(seed):
    keras.utils.set_random_seed(int(seed))
    np.random.seed(int(seed) % 2**32)
