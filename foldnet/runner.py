"""run.py: train, predict, score and submit one ensemble member over its folds.

Jobs are words joined by '_': train, val, test, score, subm, predict (see
``python run.py --help``). Completed folds are skipped on rerun, an
interrupted fold resumes from its last epoch, and predictions are made only
where they are missing or stale.
"""
import os
import shutil
import sys
import time

import foldnet  # noqa: F401  (Keras 2 before TensorFlow)

from . import config, fileio
from .errors import ConfigError, DataError
from .labels import LabelMap


def _log(msg):
    print(msg, flush=True)


def prepare_run_dir(cfg, label_map):
    """Create the run dir, refuse one trained with another label map, save config and label map."""
    run_dir = cfg["run_dir"]
    os.makedirs(run_dir, exist_ok=True)
    lm_path = os.path.join(run_dir, "label_map.json")
    if os.path.exists(lm_path):
        old = LabelMap.load(lm_path)
        if old != label_map and not cfg["overwrite"]:
            raise DataError(f"{run_dir} was trained with another label map",
                            [f"{lm_path}: {old!r}", f"{cfg['tfrec_dir']}: {label_map!r}",
                             "use another --run_dir, or --overwrite to retrain"])
    label_map.save(lm_path)
    fileio.atomic_write_text(os.path.join(run_dir, "config.yaml"), config.to_yaml(cfg))


def run_folds(cfg, manifest, label_map, folds, jobs, extra_callbacks=(), log=_log):
    import tensorflow as tf

    from . import predict, records, strategy, train

    strategy.set_mixed_precision(cfg["mixed_precision"])
    strat = strategy.get_strategy(cfg["tpu"], logger=log)
    lm_fp = label_map.fingerprint()
    for fold in folds:
        t0 = time.time()
        log(f"=== fold {fold} of {manifest['n_folds']} ({cfg['arch']}, {os.path.basename(cfg['run_dir'])}) ===")
        tf.keras.backend.clear_session()
        train.seed_everything(cfg["seed"] + fold)
        p = train.fold_paths(cfg["run_dir"], fold)
        model = None
        if "train" in jobs:
            if train.is_done(cfg["run_dir"], fold) and not cfg["overwrite"]:
                log(f"fold {fold}: already trained ({p['done']}); skipped (use --overwrite to retrain)")
                saved = fileio.read_json(p["done"]).get("settings") or {}
                now = train.model_settings(cfg, label_map.n_classes)
                changed = [k for k in now if k in saved and saved[k] != now[k]]
                if changed:
                    log(f"fold {fold}: warning: it was trained with other {', '.join(changed)} "
                        f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}); its predictions use those")
            else:
                if cfg["overwrite"] and os.path.isdir(p["dir"]):
                    shutil.rmtree(p["dir"])
                model = train.train_fold(cfg, fold, manifest, cfg["run_dir"], strat, extra_callbacks, log=log)
        splits = []
        if "val" in jobs:
            splits.append(("oof", records.fold_files(manifest, [fold]), manifest["folds"][fold]["n_examples"]))
        if "test" in jobs and manifest["test"]["n_examples"] > 0:
            splits.append(("test", records.test_files(manifest), manifest["test"]["n_examples"]))
        if splits:
            if not os.path.exists(p["best"]):
                raise DataError(f"fold {fold} has no trained checkpoint", [f"{p['best']} is missing; run --job train first"])
            weights_fp = predict.weights_fingerprint(p["best"])
            for name, files, n_rows in splits:
                if predict.is_current(p[name], weights_fp, lm_fp, cfg["tta_number"] + 1, n_rows):
                    log(f"  {p[name]} is current; not predicted again")
                    continue
                if model is None:
                    model = train.load_fold_model(cfg, label_map.n_classes, p["best"], strat)
                predict.predict_split(model, files, p[name], cfg["dim"], cfg["batch_size"], cfg["tta_number"],
                                      lm_fp, weights_fp, n_rows, log=log)
        log(f"fold {fold}: {time.time() - t0:.1f} s")


def run_predict(cfg, log=_log):
    """--job predict: top-k labels of image files, averaged over fold checkpoints."""
    from . import predict, train

    if not cfg["images"]:
        raise ConfigError("--job predict needs --images FILE [FILE ...]")
    lm_path = os.path.join(cfg["run_dir"], "label_map.json")
    if not os.path.exists(lm_path):
        raise DataError(f"{cfg['run_dir']} has no label_map.json", ["point --run_dir at a trained member"])
    label_map = LabelMap.load(lm_path)
    weights = cfg["checkpoints"] or predict.fold_weight_files(cfg["run_dir"])
    missing = [w for w in weights if not os.path.exists(w)]
    if missing:
        raise DataError("checkpoint files not found", missing)
    _, rows = predict.predict_images(
        lambda w: train.load_fold_model(cfg, label_map.n_classes, w), weights, cfg["images"],
        cfg["dim"], cfg["tta_number"], label_map)
    log(f"{len(weights)} checkpoint(s), {cfg['tta_number'] + 1} view(s) per image")
    for path, row in zip(cfg["images"], rows):
        log(f"{path}")
        for rank, (label, prob) in enumerate(row, 1):
            log(f"  {rank}. {label:<24} {prob:.4f}")
    return rows


def run(cfg, extra_callbacks=(), log=_log):
    """Do the jobs of ``cfg`` (a dict from config.parse_config / make_config)."""
    jobs = config.job_words(cfg["job"])
    if "predict" in jobs:
        run_predict(cfg, log=log)
        return 0
    from . import records

    manifest = records.load_manifest(cfg["tfrec_dir"])
    label_map = records.load_label_map(manifest)
    folds = config.parse_folds(cfg["folds"], manifest["n_folds"])
    prepare_run_dir(cfg, label_map)
    if jobs & {"train", "val", "test"}:
        run_folds(cfg, manifest, label_map, folds, jobs, extra_callbacks, log=log)
    if "score" in jobs:
        from . import scores

        scores.score_run(cfg["run_dir"], label_map, log=log)
    if "subm" in jobs:
        from . import ensemble

        path = os.path.join(cfg["run_dir"], "submission.csv")
        rc = ensemble.main(["--runs", cfg["run_dir"], "--data_dir", cfg["data_dir"], "--tfrec_dir", cfg["tfrec_dir"],
                            "--template", cfg["template"], "--submission", path])
        if rc:
            return rc
    return 0


def main(argv=None):
    from .strategy import TPUUnavailableError

    try:
        cfg = config.parse_config(argv)
        return run(cfg)
    except (ConfigError, DataError, TPUUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
