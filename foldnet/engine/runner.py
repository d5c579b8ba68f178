"""run.py: train, predict, score and submit one ensemble member over its folds.

Jobs are words joined by '_': train, val, test, score, subm, predict, full (see
``python run.py --help``). Completed folds are skipped on rerun, an
interrupted fold resumes from its last epoch, and predictions are made only
where they are missing or stale. ``full`` trains, after the folds, one model on
every fold in ``fold_all/`` (resumable like a fold; with ``test`` it predicts the
test set there too).
"""
import logging
import os
import shutil
import time

from foldnet.core import fileio, logs
from foldnet.core.errors import ConfigError, DataError
from foldnet.engine import config
from foldnet.io import rundir
from foldnet.tasks import base as tasks

log = logging.getLogger(__name__)


def check_run_dir(cfg, task, spec, manifest, folds, jobs):
    """Every check of a run against its run dir, reading only (nothing is created or changed): the run
    dir is new or foldnet's, was trained for this task and label map, its finished folds for this
    split, and holds the checkpoints the prediction jobs need."""
    run_dir = cfg["run_dir"]
    rundir.check_run_dir_owned(run_dir)
    if not os.path.isdir(run_dir):
        if jobs & {"val", "test"} and "train" not in jobs:
            raise DataError(f"{run_dir} does not exist: nothing trained to predict with",
                            ["run --job train first, or point --run_dir at a trained member"])
        return
    trained = os.path.exists(os.path.join(run_dir, rundir.TASK_FILE)) or rundir.list_folds(run_dir)
    trained_for = rundir.read_task(run_dir) if trained else task.name  # no task.json in old runs: classification
    if trained_for != task.name:
        raise DataError(f"{run_dir} is a {trained_for} member; the records of --tfrec_dir {cfg['tfrec_dir']} "
                        f"are {task.name} records", ["give the --tfrec_dir this member was trained on, "
                                                    "or another --run_dir"])
    spec_path = os.path.join(run_dir, task.spec_file)
    if os.path.exists(spec_path):
        old = task.read_spec(spec_path)
        if old != spec and not cfg["overwrite"]:
            raise DataError(f"{run_dir} was trained with another label map",
                            [f"{spec_path}: {old!r}", f"{cfg['tfrec_dir']}: {spec!r}",
                             "use another --run_dir, or --overwrite to retrain"])
    if jobs & {"val", "test"} and "train" not in jobs:
        missing = [rundir.fold_paths(run_dir, f)["best"] for f in folds
                   if not os.path.exists(rundir.fold_paths(run_dir, f)["best"])]
        if missing:
            raise DataError("folds have no trained checkpoint", [f"{m} is missing; run --job train first"
                                                                 for m in missing])


def prepare_run_dir(cfg, task, spec):
    """Create the run dir (recorded as foldnet's), save config, spec and task (after every check)."""
    run_dir = cfg["run_dir"]
    os.makedirs(run_dir, exist_ok=True)
    rundir.record_run_dir(run_dir)
    spec.save(os.path.join(run_dir, task.spec_file))
    rundir.write_task(run_dir, task.name)
    fileio.atomic_write_text(os.path.join(run_dir, "config.yaml"), config.to_yaml(cfg))


def _warn_changed_settings(cfg, task, spec, fold, done_path):
    saved = fileio.read_json(done_path).get("settings") or {}
    from foldnet.engine import train

    now = train.model_settings(cfg, task, spec)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        log.warning(f"fold {fold}: warning: it was trained with other {', '.join(changed)} "
            f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}); its predictions use those")


def run_folds(cfg, manifest, task, spec, folds, jobs, extra_callbacks=()):
    import tensorflow as tf

    from foldnet.engine import predict, strategy, train
    from foldnet.io import records

    strategy.set_mixed_precision(cfg["mixed_precision"])
    strat = strategy.get_strategy(cfg["tpu"])
    spec_fp = spec.fingerprint()
    if "full" in jobs:
        folds = [*folds, rundir.FULL_FOLD]
    for fold in folds:
        full = fold == rundir.FULL_FOLD
        t0 = time.time()
        what = "full-data model (all folds)" if full else f"fold {fold} of {manifest['n_folds']}"
        log.info(f"=== {what} ({cfg['arch']}, {os.path.basename(cfg['run_dir'])}) ===")
        tf.keras.backend.clear_session()
        train.seed_everything(cfg["seed"] + (manifest["n_folds"] if full else fold))
        p = rundir.fold_paths(cfg["run_dir"], fold)
        model = None
        if "train" in jobs or full:
            if train.is_done(cfg["run_dir"], fold) and not cfg["overwrite"]:
                log.info(f"fold {fold}: already trained ({p['done']}); skipped (use --overwrite to retrain)")
                _warn_changed_settings(cfg, task, spec, fold, p["done"])
            else:
                if cfg["overwrite"] and os.path.isdir(p["dir"]):
                    shutil.rmtree(p["dir"])
                model = train.train_fold(cfg, fold, manifest, cfg["run_dir"], strat, extra_callbacks,
                                         task=task, spec=spec)
        splits = []
        if "val" in jobs and not full:
            splits.append(("oof", records.fold_files(manifest, [fold]), manifest["folds"][fold]["n_examples"]))
        if "test" in jobs and manifest["test"]["n_examples"] > 0:
            splits.append(("test", records.test_files(manifest), manifest["test"]["n_examples"]))
        if splits:
            if not os.path.exists(p["best"]):
                raise DataError(f"fold {fold} has no trained checkpoint", [f"{p['best']} is missing; run --job train first"])
            weights_fp = rundir.weights_fingerprint(p["best"])
            # --openset_features: per-row similarity to the fold's training images (task.row_values)
            reference = (records.fold_files(manifest, [f for f in range(manifest["n_folds"]) if f != fold])
                         if row_values_on(cfg, task, spec) else None)
            keys = [k for k in (task.row_value_key, task.sim_value_key) if k]
            cache = {}
            for name, files, n_rows in splits:
                if rundir.is_current(p[name], weights_fp, spec_fp, cfg["tta_number"] + 1, n_rows) and \
                        (reference is None or all(rundir.has_key(p[name], k) for k in keys)):
                    log.info(f"  {p[name]} is current; not predicted again")
                    continue
                if model is None:
                    model = train.load_fold_model(cfg, spec, p["best"], strat, task=task)
                predict.predict_split(model, files, p[name], cfg, spec_fp, weights_fp, n_rows, task=task,
                                      reference_files=reference, cache=cache)
        log.info(f"fold {fold}: {time.time() - t0:.1f} s")


def row_values_on(cfg, task, spec):
    """Whether prediction files store the task's per-row values: ``openset_features`` true, or ``auto``
    (the default) and the task wants them for this spec (classification: a dataset with a new label)."""
    if not task.row_value_key:
        return False
    want = cfg["openset_features"]
    return task.row_values_default(spec) if want == "auto" else bool(want)


def run_predict(cfg):
    """--job predict: top-k labels of image files, averaged over fold checkpoints (classification)."""
    from foldnet.engine import predict, train
    from foldnet.tasks.classification import openset

    if not cfg["images"]:
        raise ConfigError("--job predict needs --images FILE [FILE ...]")
    task = tasks.get(tasks.DEFAULT_TASK)
    trained_for = rundir.read_task(cfg["run_dir"]) if os.path.isdir(cfg["run_dir"]) else task.name
    if trained_for != task.name:
        # Its inputs depend on files of the run dir that trained the checkpoints (segmentation:
        # index_ranges.json); the test job predicts with them, beside its own checkpoints.
        raise ConfigError(f"--job predict takes image files of a {task.name} member; {cfg['run_dir']} is a "
                          f"{trained_for} member: convert the tiles with create_tfrecords.py and run "
                          "--job test (maps of the test tiles with that run dir's checkpoints and settings)")
    lm_path = os.path.join(cfg["run_dir"], task.spec_file)
    if not os.path.exists(lm_path):
        raise DataError(f"{cfg['run_dir']} has no {task.spec_file}", ["point --run_dir at a trained member"])
    label_map = task.read_spec(lm_path)
    weights = cfg["checkpoints"] or rundir.best_checkpoints(cfg["run_dir"])
    missing = [w for w in weights if not os.path.exists(w)]
    if missing:
        raise DataError("checkpoint files not found", missing)
    rule = openset.load_rule(cfg["run_dir"])  # None for runs scored before the rule existed
    _, rows = predict.predict_images(
        lambda w: train.load_fold_model(cfg, label_map, w, task=task), weights, cfg["images"],
        cfg["dim"], cfg["tta_number"], label_map, rule=rule)
    log.info(f"{len(weights)} checkpoint(s), {cfg['tta_number'] + 1} view(s) per image; "
             f"{openset.describe(rule)}")
    for path, row in zip(cfg["images"], rows):
        log.info(f"{path}")
        for rank, (label, prob) in enumerate(row, 1):
            log.info(f"  {rank}. {label:<24} {prob:.4f}")
    return rows


def run(cfg, extra_callbacks=()):
    """Do the jobs of ``cfg`` (a ``config.Config``, or a mapping of settings validated into one).

    Everything checkable is checked before a model is built (preflight); the
    run directory is locked for the whole run (one writer; workers.writable_run_dir).
    """
    from foldnet.engine import preflight, workers

    cfg = config.Config.build(cfg)
    jobs = cfg.jobs
    preflight.check_run(cfg, jobs)
    if "predict" in jobs:
        run_predict(cfg)
        return 0
    check_jobs(cfg, jobs)  # every check of the run, before the run dir is created or changed
    if workers.is_chief():
        rundir.record_run_dir(cfg["run_dir"])  # foldnet's from now on (its owner record, beside it)
    with workers.writable_run_dir(cfg["run_dir"]) as run_dir:
        return run_jobs(cfg.replace(run_dir=run_dir), jobs, extra_callbacks)


def check_jobs(cfg, jobs):
    """The checks of ``run_jobs``, reading only; returns (manifest, task, spec, folds)."""
    from foldnet.io import records, splits

    manifest = records.load_manifest(cfg["tfrec_dir"])
    task = tasks.for_manifest(manifest)
    spec = task.load_spec(manifest)
    folds = cfg.folds_for(manifest["n_folds"])
    problems = task.check_config(cfg, spec)
    if problems:
        raise ConfigError("bad settings:\n  - " + "\n  - ".join(problems))
    check_run_dir(cfg, task, spec, manifest, folds, jobs)
    if jobs & {"train", "val", "score"}:
        splits.check_run_splits(cfg["run_dir"], manifest, folds if "train" in jobs and cfg["overwrite"] else ())
    if "subm" in jobs:
        fileio.check_owned_output(os.path.join(cfg["run_dir"], task.submission_name), flag="the submission",
                                  kind=None)
    return manifest, task, spec, folds


def run_jobs(cfg, jobs, extra_callbacks=()):
    manifest, task, spec, folds = check_jobs(cfg, jobs)  # again, now that the run dir is locked
    prepare_run_dir(cfg, task, spec)
    if jobs & {"train", "val", "test", "full"}:
        task.prepare_run(manifest, cfg)
        run_folds(cfg, manifest, task, spec, folds, jobs, extra_callbacks)
    if "score" in jobs:
        from foldnet.ensemble import scores

        scores.score_run(cfg["run_dir"], spec, task=task, groups=task.groups(cfg["tfrec_dir"]))
    if "subm" in jobs:
        from foldnet.ensemble import cli as ensemble

        template = cfg["template"] or task.default_template(cfg["data_dir"], cfg["tfrec_dir"])
        ensemble.make_ensemble([cfg["run_dir"]], os.path.join(cfg["run_dir"], task.submission_name),
                               template=template, tfrec_dir=cfg["tfrec_dir"], task=task,
                               full=cfg["full_models"])
    return 0


def main(argv=None):
    from foldnet.core.cli import run_main
    from foldnet.engine.strategy import TPUUnavailableError

    result = []

    def go():
        cfg = config.parse_config(argv)
        logs.setup(-1 if cfg.quiet else 0)
        result.append(run(cfg))

    rc = run_main(go, extra_errors=(TPUUnavailableError,))
    return rc or result[0]
