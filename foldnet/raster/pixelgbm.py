"""Per-pixel gradient boosting over a K-fold TFRecord directory, written as a run directory.

The strong non-neural baseline of the map tasks (segmentation, temporal
regression): every pixel is one row of features (raw bands, spectral indices,
per-band month statistics: whatever the task's ``PixelSource`` yields, NaN
where a value is missing, which scikit-learn's HistGradientBoosting treats
natively), with no spatial context at all.

``fit_run`` fits one model per fold on a random sample of the usable pixels
of the other folds (at most ``cap`` pixels per fold, spread evenly over the
training tiles), predicts its held-out fold (out-of-fold maps) and the test
tiles, and writes ``RUN_DIR/fold_K/oof.npz`` and ``test.npz`` with
``rundir.save_predictions`` in the task's encoding (one TTA view,
``identity``); ``fit_member`` adds ``task.json`` and the task's spec file, with
the run dir's owner record and lock. So the ensemble command scores, thresholds and weights such a run
like any trained member.

The tiles are read once for sampling, then once per fold for prediction;
prediction goes block by block (``PixelSource.blocks``). No TensorFlow here:
the task's source parses the records.
"""
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Callable, Iterator, List, Optional

import numpy as np

from foldnet.core import fileio
from foldnet.core.errors import DataError
from foldnet.io import rundir

log = logging.getLogger(__name__)

KINDS = ("classifier", "regressor")
DEFAULT_CAP = 60000
DEFAULT_PARAMS = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 40,
                  "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.1,
                  "n_iter_no_change": 15}
META_FILE = "baseline.json"


@dataclasses.dataclass
class PixelSource:
    """What a task hands to ``fit_run``.

    blocks(files): yields ``(ids, features float32 [b, H, W, F] (NaN = missing), targets [b, H, W],
    usable bool [b, H, W])`` blocks of the records of ``files`` in file order; ``usable`` marks the
    pixels whose target may be learnt from. encode_outputs / encode_targets: the task's prediction-file
    encodings of ``[n_tta, n, H, W]`` maps and ``[n, H, W]`` targets. clip: output range (regression).
    """

    blocks: Callable[[list], Iterator[tuple]]
    feature_names: List[str]
    kind: str
    encode_outputs: Callable
    encode_targets: Callable
    clip: Optional[tuple] = None


def make_model(kind, seed, params=None):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    options = {**DEFAULT_PARAMS, **(params or {}), "random_state": int(seed)}
    return (HistGradientBoostingClassifier if kind == "classifier" else HistGradientBoostingRegressor)(**options)


def sample_pixels(source, fold_files, cap, seed):
    """{fold: (features [m, F], targets [m])}: a random sample of each fold's usable pixels.

    Each tile gives at most ``ceil(cap / tiles of the smallest training set)`` pixels, so every
    fold's training set (the other folds) holds about ``cap`` pixels.
    """
    rng = np.random.default_rng(seed)
    sizes = {f: n for f, (_, n) in fold_files.items()}
    total = sum(sizes.values())
    smallest_train = max(1, min(total - n for n in sizes.values()) if len(sizes) > 1 else total)
    per_tile = max(1, int(np.ceil(cap / smallest_train)))
    out = {}
    for fold, (files, _) in fold_files.items():
        xs, ys = [], []
        for _, x, y, usable in source.blocks(files):
            for k in range(len(x)):
                where = np.flatnonzero(usable[k].reshape(-1))
                if not len(where):
                    continue
                take = where if len(where) <= per_tile else rng.choice(where, per_tile, replace=False)
                xs.append(x[k].reshape(-1, x.shape[-1])[take])
                ys.append(np.asarray(y[k]).reshape(-1)[take])
        n_features = len(source.feature_names)
        out[fold] = (np.concatenate(xs) if xs else np.zeros([0, n_features], np.float32),
                     np.concatenate(ys) if ys else np.zeros([0]))
    return out


def predict_maps(model, source, x):
    """Maps ``[b, H, W]`` of the model on features ``[b, H, W, F]`` (probability of class 1, or the value)."""
    flat = x.reshape(-1, x.shape[-1])
    if source.kind == "classifier":
        classes = list(model.classes_)
        pred = model.predict_proba(flat)[:, classes.index(1)] if 1 in classes else np.zeros(len(flat))
    else:
        pred = model.predict(flat)
    if source.clip is not None:
        pred = np.clip(pred, *source.clip)
    return pred.reshape(x.shape[:3]).astype(np.float32)


def predict_files(model, source, files):
    """(ids, targets [n, H, W], maps float32 [n, H, W]) of the records of ``files``, block by block."""
    ids, targets, maps = [], [], []
    for block_ids, x, y, _ in source.blocks(files):
        ids += list(block_ids)
        targets.append(np.asarray(y))
        maps.append(predict_maps(model, source, x))
    if not ids:
        return [], None, None
    return ids, np.concatenate(targets), np.concatenate(maps)


def model_fingerprint(meta, fold):
    return hashlib.sha256(json.dumps({**meta, "fold": int(fold)}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit_run(manifest, source, run_dir, spec_fp, *, cap=DEFAULT_CAP, seed=0, params=None, folds=None, threads=1):
    """Fit one model per fold (module doc) and write its OOF and test maps into ``run_dir``.

    ``threads``: OpenMP threads of scikit-learn (default 1: on a shared or busy machine OpenMP's
    spinning threads made a fit ~12x slower than one thread; None = all cores).

    Returns ``{"folds": [per fold: fold, n_pixels, n_iter, seconds], "oof": (ids, targets, maps)}``
    with the OOF maps of all folds in fold order (for the caller's score line). DataError when a fold
    has no usable training pixel.
    """
    from foldnet.io import records

    n_folds = int(manifest["n_folds"])
    if n_folds < 2:
        raise DataError(f"{manifest['dir']}: {n_folds} fold(s); the out-of-fold baseline needs at least 2")
    folds = list(range(n_folds)) if folds is None else [int(f) for f in folds]
    fold_files = {f: (records.fold_files(manifest, [f]), int(manifest["folds"][f]["n_examples"]))
                  for f in range(n_folds)}
    test_files = records.test_files(manifest)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _fit_folds(manifest, source, run_dir, spec_fp, cap, seed, params, folds, fold_files, test_files)


def fit_member(task, manifest, spec, source, run_dir, *, cap=None, seed=0):
    """The GBM member of a map task written into ``run_dir`` like any trained member: refused unless
    the folder is new, empty or foldnet's; recorded as foldnet's and locked (one writer) while the
    task's name and spec and the fold maps are written (``fit_run``). Returns the OOF scores
    (``task.score``)."""
    from foldnet.core.runlock import run_dir_lock

    rundir.check_run_dir_owned(run_dir)
    if os.path.isdir(run_dir) and os.path.exists(os.path.join(run_dir, rundir.TASK_FILE)) and \
            rundir.read_task(run_dir) != task.name:
        raise DataError(f"{run_dir} is a {rundir.read_task(run_dir)} member, these records are {task.name} records",
                        ["give another --run_dir"])
    os.makedirs(run_dir, exist_ok=True)
    rundir.record_run_dir(run_dir)
    with run_dir_lock(run_dir):
        fileio.clean_debris(run_dir)
        spec.save(os.path.join(run_dir, task.spec_file))
        rundir.write_task(run_dir, task.name)
        result = fit_run(manifest, source, run_dir, spec.fingerprint(), cap=cap or DEFAULT_CAP, seed=seed)
    _, targets, maps = result["oof"]
    return task.score(targets, maps, spec)


def command(fit, describe):
    """A GBM baseline command's body: ``fit()`` (returning the OOF scores) through ``cli.run_main``
    (a user error: one line, exit 2), then ``describe(scores)`` printed; the exit code."""
    from foldnet.core import logs
    from foldnet.core.cli import run_main

    logs.setup(0)
    result = []
    rc = run_main(lambda: result.append(fit()))
    if rc:
        return rc
    print(describe(result[0]))
    return 0


def _fit_folds(manifest, source, run_dir, spec_fp, cap, seed, params, folds, fold_files, test_files):
    n_folds = len(fold_files)
    t0 = time.time()
    samples = sample_pixels(source, fold_files, cap, seed)
    meta = {"model": f"HistGradientBoosting{source.kind.title()}", "params": {**DEFAULT_PARAMS, **(params or {})},
            "features": list(source.feature_names), "cap": int(cap), "seed": int(seed),
            "tfrec_fingerprint": manifest.get("fingerprint")}
    empty = [f for f in folds if sum(len(samples[g][1]) for g in samples if g != f) == 0]
    if empty:
        raise DataError("no usable training pixel for the per-pixel model",
                        [f"fold {f}: the other folds have no pixel with a known target" for f in empty])
    log.info(f"sampled {sum(len(s[1]) for s in samples.values())} pixels of {n_folds} folds "
             f"({len(source.feature_names)} features) in {time.time() - t0:.1f} s")
    rows, oof = [], ([], [], [])
    for fold in folds:
        t1 = time.time()
        x = np.concatenate([samples[g][0] for g in samples if g != fold])
        y = np.concatenate([samples[g][1] for g in samples if g != fold])
        model = make_model(source.kind, seed + fold, params)
        if source.kind == "classifier":
            y = (y > 0).astype(np.int64)
            if len(np.unique(y)) < 2:  # one class only: a constant model
                model = _Constant(float(y[0]) if len(y) else 0.0)
        model.fit(x, y)
        p = rundir.fold_paths(run_dir, fold)
        os.makedirs(p["dir"], exist_ok=True)
        wfp = model_fingerprint(meta, fold)
        ids, targets, maps = predict_files(model, source, fold_files[fold][0])
        rundir.save_predictions(p["oof"], ids, source.encode_outputs(maps[None]), source.encode_targets(targets),
                                ["identity"], spec_fp, wfp)
        oof[0].extend(ids)
        oof[1].append(targets)
        oof[2].append(maps)
        if test_files:
            t_ids, t_targets, t_maps = predict_files(model, source, test_files)
            rundir.save_predictions(p["test"], t_ids, source.encode_outputs(t_maps[None]),
                                    source.encode_targets(t_targets), ["identity"], spec_fp, wfp)
        row = {"fold": fold, "n_pixels": int(len(y)), "n_iter": int(getattr(model, "n_iter_", 0)),
               "seconds": round(time.time() - t1, 2)}
        fileio.atomic_write_json(p["done"], {**row, "model": meta["model"]})
        rows.append(row)
        log.info(f"fold {fold}: {row['n_pixels']} pixels, {row['n_iter']} iterations, {row['seconds']} s")
    fileio.atomic_write_json(os.path.join(run_dir, META_FILE), {**meta, "folds": rows})
    return {"folds": rows, "oof": (oof[0], np.concatenate(oof[1]), np.concatenate(oof[2]))}


class _Constant:
    """A classifier that always gives probability ``p`` of class 1 (a training set with one class)."""

    def __init__(self, p):
        self.p = p
        self.classes_ = [0, 1]
        self.n_iter_ = 0

    def fit(self, x, y):
        return self

    def predict_proba(self, x):
        return np.tile([1.0 - self.p, self.p], (len(x), 1))


def nan_month_stats(values, present):
    """Per-value statistics over months: ``values`` [T, ..., C], ``present`` bool of the same shape.

    Returns float32 ``[..., C, 5]``: mean, std, min, max, median over the months where the value is
    present (missing months excluded); NaN where no month has it.
    """
    import warnings

    v = np.where(present, values.astype(np.float32), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, as wanted
        stats = [np.nanmean(v, 0), np.nanstd(v, 0), np.nanmin(v, 0), np.nanmax(v, 0), np.nanmedian(v, 0)]
    return np.stack(stats, -1).astype(np.float32)


STAT_NAMES = ("mean", "std", "min", "max", "median")
