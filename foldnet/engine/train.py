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

Which epoch is kept (``select``, ``min_epochs``, ``select_window``; see
``selection``): ``best`` compares each epoch's monitored value; ``smoothed``
compares the mean of the last ``select_window`` finite values (read from the
saved history, so a resumed fold smooths the same way; epochs before a full
window are not kept) and keeps the weights of the epoch where that mean is best; ``last`` keeps every epoch in turn, so
the file ends with the last one. No epoch before ``min_epochs`` is kept
unless the schedule ends first, and early stopping waits for it too. The
value stored in the best file is the compared one (smoothed or raw). The
plateau and early-stopping counters follow the same compared value (``last``:
the raw value). ``finish_fold`` warns when the kept epoch lies in the first
or the last tenth of the schedule (picked before the model learnt, or still
improving when it stopped).

Optimiser settings (``build_compiled_model``): ``schedule`` plateau | cosine
(``CosineWarmup``, floor ``min_lr``) | constant | onecycle (``OneCycle``,
PyTorch OneCycleLR's learning rate; its momentum / beta_1 cycling is *not*
reproduced: momentum stays 0.9); ``nesterov`` (sgd); ``clip_norm`` (global
L2 norm of the gradients, ``global_clipnorm``, after loss-scale unscaling and
after accumulation); ``decay_all: false`` (no weight decay on variables of
rank <= 1: biases, norm scales and offsets; ``exclude_from_weight_decay``);
``accum_steps`` (``accumulating_train_step``: each batch of accum_steps x
batch_size examples is split into accum_steps micro-batches whose gradients
are averaged before one update). None of them changes the checkpoint's
structure, so none is a resume key beyond ``schedule``; ``input_norm`` is one
(a checkpoint's weights expect the inputs they were trained on).

The full-data model (job ``full``, fold ``rundir.FULL_FOLD`` = ``fold_all/``)
trains on every fold with the same resumable files but no validation: a fixed
number of epochs (``full_epochs``), no early stopping or plateau, and
``best.h5`` is the last epoch's weights.
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


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[name-defined]
    """PyTorch ``OneCycleLR`` (anneal_strategy cos, two phases) by optimizer step: starts at
    ``max_lr / div_factor``, rises by a cosine to ``max_lr`` at step ``pct_start * total - 1``,
    then falls by a cosine to ``max_lr / div_factor / final_div_factor`` at step ``total - 1``
    (and stays there). cos(a -> b, f) = b + (a - b) (1 + cos(pi f)) / 2."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
        self.max_lr = float(max_lr)
        self.total_steps = max(int(total_steps), 1)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        up_end = self.pct_start * self.total_steps - 1.0
        down_end = self.total_steps - 1.0

        def anneal(start, end, fraction):
            return end + (start - end) / 2.0 * (tf.cos(math.pi * tf.clip_by_value(fraction, 0.0, 1.0)) + 1.0)

        up = anneal(initial, self.max_lr, tf.math.divide_no_nan(step, up_end))
        down = anneal(self.max_lr, final, tf.math.divide_no_nan(step - up_end, down_end - up_end))
        return tf.where(step <= up_end, up, down)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}


def make_optimizer(name, lr, weight_decay=0.0, nesterov=True, clip_norm=0.0):
    """The optimizer ``name`` (adam, adamw, sgd with momentum 0.9); ``clip_norm`` > 0 clips the
    gradients to that global L2 norm before each update."""
    clip = {"global_clipnorm": float(clip_norm)} if clip_norm else {}
    if name == "adam":
        return keras.optimizers.Adam(lr, **clip)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, **clip)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=bool(nesterov), weight_decay=weight_decay or None,
                                    **clip)
    raise ValueError(f"unknown optimizer {name!r}")


def exclude_vectors_from_decay(optimizer, model):
    """No weight decay on ``model``'s trainable variables of rank <= 1 (biases, norm scales and
    offsets); returns them. Must run before the optimizer's first update."""
    vectors = [v for v in model.trainable_variables if v.shape.rank is not None and v.shape.rank <= 1]
    if vectors:
        optimizer.exclude_from_weight_decay(var_list=vectors)
    return vectors


def accumulating_train_step(model, accum_steps):
    """A ``train_step`` for ``model`` that splits each batch into ``accum_steps`` consecutive
    micro-batches, runs forward and backward on one after the other (each waits for the previous
    one's gradients, so only one micro-batch's activations are alive), averages their gradients
    weighted by size and applies them once: the update of the whole batch, with the activation
    memory of a micro-batch. BatchNorm sees micro-batch statistics (as PyTorch accumulation does).
    No control flow, so it runs under any distribution strategy. A micro-batch that would be empty
    (a batch smaller than accum_steps) reruns the first example with gradient weight 0."""
    accum_steps = int(accum_steps)

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        first = tf.nest.flatten(x)[0]
        static = first.shape[0] is not None  # a static batch (TPU, drop_remainder): slices of fixed size for XLA
        n = first.shape[0] if static else tf.shape(first)[0]
        size = (n + accum_steps - 1) // accum_steps
        variables = model.trainable_variables
        total = [tf.zeros_like(v) for v in variables]
        for i in range(accum_steps):
            if static:
                start, stop = min(i * size, n), min(i * size + size, n)
                share = (stop - start) / max(n, 1)
                start, stop = (start, stop) if stop > start else (0, 1)
            else:
                start = tf.minimum(i * size, n)
                stop = tf.minimum(start + size, n)
                share = tf.cast(stop - start, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32)
                start, stop = tf.where(stop > start, start, 0), tf.where(stop > start, stop, 1)

            def part(t, start=start, stop=stop):
                return t[start:stop]

            xi = tf.nest.map_structure(part, x)
            yi = None if y is None else tf.nest.map_structure(part, y)
            wi = None if sample_weight is None else tf.nest.map_structure(part, sample_weight)
            with tf.control_dependencies(total if i else []):
                with tf.GradientTape() as tape:
                    y_pred = model(xi, training=True)
                    loss = model.compute_loss(xi, yi, y_pred, wi)
            pairs = model.optimizer.compute_gradients(loss, variables, tape)
            total = [t if g is None else t + tf.cast(share, t.dtype) * tf.cast(tf.convert_to_tensor(g), t.dtype)
                     for t, (g, _) in zip(total, pairs)]
            model.compute_metrics(xi, yi, y_pred, wi)
        model.optimizer.apply_gradients(zip(total, variables))
        return model.get_metrics_result()

    return train_step


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
                  "best": None, "best_epoch": None, "track": None, "stopped": False, "lr": None, "history": []}
        if os.path.exists(self.path):
            self.d.update(fileio.read_json(self.path))

    def save(self):
        fileio.atomic_write_json(self.path, self.d)


SELECTIONS = ("best", "smoothed", "last")


def selection(cfg, task):
    """(select, min_epochs, window) of the run settings, ``auto`` / -1 resolved with the task's defaults."""
    select = cfg["select"]
    if select in (None, "auto"):
        select = task.default_select
    min_epochs = int(cfg["min_epochs"])
    if min_epochs < 0:
        min_epochs = int(math.ceil(task.default_min_epochs_share * cfg["n_epochs"]))
    return select, min(min_epochs, int(cfg["n_epochs"])), int(cfg["select_window"])


def smoothed_value(history, monitor, epoch, value, window):
    """Mean of ``value`` (epoch ``epoch``, 0-based) and the finite ``monitor`` values of the ``window - 1``
    epochs before it in ``history``."""
    earlier = [float(r[monitor]) for r in history if r["epoch"] < epoch + 1 and monitor in r
               and math.isfinite(float(r[monitor]))]
    values = (earlier[-(window - 1):] if window > 1 else []) + [value]
    return float(np.mean(values))


def edge_warning(best_epoch, n_epochs, select):
    """A warning text when the kept epoch (1-based) is in the first or last tenth of ``n_epochs``, else None."""
    tenth = max(1, n_epochs // 10)
    if n_epochs < 10 or select == "last":
        return None
    if best_epoch <= tenth:
        return (f"the kept epoch {best_epoch} of {n_epochs} is in the first tenth of the schedule: the validation "
                "fold may be unrepresentative (try --select smoothed, --min_epochs, or folds by group)")
    if best_epoch > n_epochs - tenth:
        return (f"the kept epoch {best_epoch} of {n_epochs} is in the last tenth of the schedule: the model was "
                "still improving (try more --n_epochs)")
    return None


class FoldCallback(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Best checkpoint, plateau LR, early stopping, history and resume state, per epoch.

    Order inside on_epoch_end: (1) best weights, (2) counters, (3) model +
    optimizer checkpoint, (4) state.json pointing at that checkpoint. A kill
    between any two steps leaves the previous state.json valid, and its
    checkpoint is still kept (max_to_keep=2), so the rerun repeats at most
    the epoch that was interrupted.
    """

    def __init__(self, fold_dir, state, manager, monitor, mode, schedule, lr_patience, lr_factor, min_lr,
                 early_stop_patience, min_delta, select="best", min_epochs=0, select_window=3, n_epochs=None):
        # mode "last" (the full-data model): every epoch's weights become best.h5, no counters
        super().__init__()
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        self.select, self.min_epochs, self.select_window = select, int(min_epochs), int(select_window)
        self.n_epochs = n_epochs
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

    def improved(self, value, key="best"):
        best = self.state.d.get(key)
        if best is None:
            return True
        if self.mode == "last":
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
        raw = float(logs[self.monitor])
        d = self.state.d
        lr = _current_lr(self.model.optimizer)
        value = raw
        if self.select == "smoothed" and math.isfinite(raw):
            value = smoothed_value(d["history"], self.monitor, epoch, raw, self.select_window)
        last_epoch = self.n_epochs is not None and epoch + 1 >= self.n_epochs
        full = self.select != "smoothed" or epoch + 1 >= self.select_window  # a smoothed value needs its window
        candidate = (epoch + 1 >= self.min_epochs and full) or (last_epoch and d["best"] is None)
        if math.isfinite(value) and candidate and (self.select == "last" or self.improved(value)):
            save_best(self.model, self.best_path, epoch, self.monitor, value)
            d["best"], d["best_epoch"] = value, epoch
        # the counters follow the compared value over every epoch (min_epochs only gates what is kept)
        if not math.isfinite(value):
            log.info(f"  epoch {epoch + 1}: {self.monitor} is {value}; not a candidate for the best checkpoint")
        elif self.improved(value, "track"):
            d["track"] = value
            d["plateau_wait"] = d["stop_wait"] = 0
        elif self.mode == "last":
            pass
        else:
            d["plateau_wait"] += 1
            d["stop_wait"] += 1
            if self.schedule == "plateau" and d["plateau_wait"] >= self.lr_patience and lr > self.min_lr:
                new_lr = max(lr * self.lr_factor, self.min_lr)
                self.model.optimizer.learning_rate.assign(new_lr)
                log.info(f"  epoch {epoch + 1}: {self.monitor} did not improve for {d['plateau_wait']} epochs; "
                         f"learning rate {lr:.3g} -> {new_lr:.3g}")
                d["plateau_wait"] = 0
            if (self.early_stop_patience and d["stop_wait"] >= self.early_stop_patience
                    and epoch + 1 >= self.min_epochs and d["best"] is not None):
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


# Settings every task's resumed fold must share with its interrupted run (the checkpoint's structure, or
# what its weights mean: input_norm changes the inputs the backbone learnt on); each task adds its own
# (``Task.resume_keys``). Runs made before a key existed did not record it and still resume.
RESUME_KEYS = ("arch", "dim", "weights", "dropout", "optimizer", "schedule", "arch_options", "input_norm")


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


def learning_rate(cfg, steps_per_epoch):
    """The learning rate (a float, or a schedule by optimizer step) of ``cfg``'s ``schedule``."""
    total = steps_per_epoch * cfg["n_epochs"]
    if cfg["schedule"] == "cosine":
        return CosineWarmup(cfg["lr"], total_steps=total, warmup_steps=int(cfg["warmup_epochs"] * steps_per_epoch),
                            floor=cfg["min_lr"])
    if cfg["schedule"] == "onecycle":
        from foldnet.engine import config

        return OneCycle(cfg["lr"], total, **config.schedule_options(cfg))
    return cfg["lr"]  # plateau (FoldCallback lowers it) or constant


def build_compiled_model(cfg, task, spec, steps_per_epoch, strategy):
    with strategy.scope():
        model = task.build_model(cfg, spec, cfg["weights"])
        optimizer = make_optimizer(cfg["optimizer"], learning_rate(cfg, steps_per_epoch), cfg["weight_decay"],
                                   nesterov=cfg["nesterov"], clip_norm=cfg["clip_norm"])
        if not cfg["decay_all"]:
            exclude_vectors_from_decay(optimizer, model)
        task.compile_model(model, cfg, spec, optimizer)
        if cfg["accum_steps"] > 1:
            model.train_step = accumulating_train_step(model, cfg["accum_steps"])
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


def full_epochs(cfg, run_dir, n_folds):
    """(epochs, why) of the full-data model: ``full_epochs`` if set, else the rounded mean best
    epoch of the finished folds of ``run_dir``, else ``n_epochs``."""
    if cfg["full_epochs"]:
        return int(cfg["full_epochs"]), "full_epochs"
    best = []
    for fold in range(n_folds):
        if is_done(run_dir, fold):
            best.append(int(fileio.read_json(rundir.fold_paths(run_dir, fold)["done"])["best_epoch"]))
    if not best:
        return int(cfg["n_epochs"]), "n_epochs (no finished fold)"
    return max(1, int(round(sum(best) / len(best)))), f"mean best epoch of folds {best}"


def train_fold(cfg, fold, manifest, run_dir, strategy, extra_callbacks=(), task=None, spec=None):
    """Train fold ``fold`` (resuming if it was interrupted). Returns the model with its best weights.

    ``fold`` may be ``rundir.FULL_FOLD``: the full-data model (see module doc).
    ``task`` / ``spec`` default to the manifest's task and its spec (``tasks``).
    """
    task = task or tasks.for_manifest(manifest)
    spec = spec if spec is not None else task.load_spec(manifest)
    p = rundir.fold_paths(run_dir, fold)
    n_folds = manifest["n_folds"]
    full = fold == rundir.FULL_FOLD
    state = FoldState(p["state"])
    if full:
        epochs, why = full_epochs(cfg, run_dir, n_folds)
        saved = (state.d.get("settings") or {}).get("full_epochs")
        if saved and not cfg["full_epochs"]:
            epochs, why = int(saved), "fixed when this model started"
        changes = {"n_epochs": epochs, "lr": cfg["full_lr"] or cfg["lr"]}
        if cfg["full_from"] >= 0:
            if cfg["full_from"] >= n_folds or not is_done(run_dir, cfg["full_from"]):
                raise ConfigError(f"full_from {cfg['full_from']}: fold {cfg['full_from']} of {run_dir} is not "
                                  f"trained (train it first, e.g. --job train_full --folds {cfg['full_from']})")
            changes["weights"] = rundir.fold_paths(run_dir, cfg["full_from"])["best"]
        cfg = cfg.replace(**changes)
        log.info(f"full-data model: {epochs} epochs ({why}), on all {n_folds} folds, no validation, "
                 f"lr {cfg['lr']:g}, from {cfg['weights'] or 'random weights'}")
    train_folds = [f for f in range(n_folds) if f != fold]
    train_files = records.fold_files(manifest, train_folds)
    val_files = [] if full else records.fold_files(manifest, [fold])
    n_train = sum(manifest["folds"][f]["n_examples"] for f in train_folds)
    batch_size = cfg["batch_size"] * cfg["accum_steps"]  # examples per update (accum_steps micro-batches)
    steps = cfg["steps_per_epoch"] or max((cfg["tiles_per_epoch"] or n_train) // batch_size, 1)
    is_tpu = "TPU" in type(strategy).__name__
    os.makedirs(p["dir"], exist_ok=True)

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
    if full:
        settings = dict(model_settings(cfg, task, spec), split=sorted(map(str, splits.split_fingerprints(manifest).values())),
                        full_epochs=cfg["n_epochs"])
    else:
        settings = dict(model_settings(cfg, task, spec), split=splits.fold_split(manifest, fold))
    if initial_epoch > 0:
        check_same_settings(state.d.get("settings"), settings, fold)
    state.d["settings"] = settings
    best = read_best(p["best"])
    if best is not None and initial_epoch > 0:
        # The best file is the truth about the best value (it may be newer than state.json).
        state.d["best_epoch"], state.d["best"] = best
        if state.d.get("track") is None:  # a state written before the counters had their own value
            state.d["track"] = state.d["best"]
    elif initial_epoch == 0 and os.path.exists(p["best"]):
        os.remove(p["best"])

    encoded_mb = sum(tf.io.gfile.stat(f).length for f in train_files) / 2**20
    cache = task.cache_mode(cfg, n_train, encoded_mb)
    data_cfg = cfg if cfg["accum_steps"] == 1 else cfg.replace(batch_size=batch_size)
    seed = cfg["seed"] + (n_folds if full else fold)
    train_ds = task.train_dataset(train_files, spec, data_cfg, seed=seed, cache=cache,
                                  drop_remainder=is_tpu, n_workers=_num_workers(strategy))
    val_ds = None if full else task.eval_dataset(val_files, spec, cfg)
    monitor, mode = ("loss", "last") if full else (cfg["monitor"], task.monitor_mode(cfg["monitor"]))
    # the full-data model keeps its last epoch: no selection window, no minimum epoch
    select, min_epochs, window = ("last", 0, 1) if full else selection(cfg, task)
    controller = FoldCallback(p["dir"], state, manager, monitor, mode,
                              "none" if full else cfg["schedule"], cfg["lr_patience"],
                              cfg["lr_factor"], cfg["min_lr"], 0 if full else cfg["early_stop_patience"],
                              cfg["min_delta"], select=select, min_epochs=min_epochs, select_window=window,
                              n_epochs=cfg["n_epochs"])
    callbacks = [controller, keras.callbacks.TensorBoard(os.path.join(p["dir"], "tb"), profile_batch=0),
                 *extra_callbacks]
    n_val = 0 if full else manifest["folds"][fold]["n_examples"]
    log.info(f"fold {fold}: {n_train} training images ({len(train_files)} shards, cache={cache}), "
        f"{n_val} validation, {steps} steps/epoch of {batch_size}, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    if state.d["stopped"] or initial_epoch >= cfg["n_epochs"]:
        log.info(f"fold {fold}: training had already finished; finalising")
    else:
        model.fit(train_ds, steps_per_epoch=steps, epochs=cfg["n_epochs"], initial_epoch=initial_epoch,
                  validation_data=val_ds, callbacks=callbacks, verbose=_keras_verbose(cfg["verbose"]))
    return finish_fold(model, p, state, monitor, fold, n_epochs=None if full else cfg["n_epochs"], select=select)


def finish_fold(model, p, state, monitor, fold, n_epochs=None, select="best"):
    best = read_best(p["best"])
    if best is None:
        raise RuntimeError(f"fold {fold}: no best checkpoint was saved ({monitor} was never finite)")
    model.load_weights(p["best"])
    history = state.d["history"]
    write_history(p["dir"], history)
    plots.plot_history(history, p["curves"], title=f"fold {fold}", monitor=monitor)
    warning = edge_warning(best[0] + 1, n_epochs, select) if n_epochs else None
    if warning:
        log.warning(f"fold {fold}: warning: {warning}")
    fileio.atomic_write_json(p["done"], {
        "fold": fold, "epochs": state.d["epochs_done"], "best_epoch": best[0] + 1,
        "best_value": best[1], "monitor": monitor, "stopped_early": bool(state.d["stopped"]),
        "settings": state.d.get("settings"), "select": select,
        **({"warning": warning} if warning else {}),
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
