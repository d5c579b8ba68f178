"""Flags and YAML configs for run.py.

Every setting is a flag; ``--config models/NAME.yaml`` supplies values for any
of them and flags given on the command line win. ``resolve`` fills the
derived paths (tfrec_dir, run_dir) so the rest of the code receives explicit,
complete settings.
"""
import argparse
import os

import yaml

from .errors import ConfigError

JOB_WORDS = ("train", "val", "test", "score", "subm", "predict")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine")
CACHE_MODES = ("auto", "decoded", "encoded", "none")


def _bool(s):
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _none_or_str(s):
    if s is None:
        return None
    return None if str(s).strip().lower() in ("", "none", "null") else str(s)


# name, type, default, help. The order is the order of --help.
FLAGS = [
    # what to do
    ("job", str, "train_val_test_score",
     "What to do: words joined by '_' from train, val (predict the held-out fold), test "
     "(predict the test set), score (out-of-fold scores), subm (this member's submission), "
     "predict (the files given with --images)"),
    ("folds", str, "all", "Folds to run: 'all' or a comma list such as '0,2'"),
    ("overwrite", _bool, False, "Retrain folds that are already done (otherwise they are skipped)"),
    # where
    ("data_dir", str, "data", "Dataset directory (CSV files, sample_submission.csv)"),
    ("tfrec_dir", _none_or_str, None, "TFRecord directory made by create_tfrecords.py (default: DATA_DIR/tfrec)"),
    ("run_dir", _none_or_str, None, "Output directory of this member (default: models/<config name>)"),
    ("template", _none_or_str, None, "Submission template CSV (default: DATA_DIR/sample_submission.csv)"),
    # model
    ("arch", str, "small_cnn", "Architecture name (see foldnet.models.list_architectures)"),
    ("weights", _none_or_str, None,
     "Pretrained weights: a name the backbone offers (imagenet, imagenet21k-ft1k, noisy_student, ...), "
     "none, or a path to a local .h5 file"),
    ("dim", int, 64, "Side of the square model input in pixels"),
    ("dropout", float, 0.0, "Dropout before the classifier"),
    # optimisation
    ("batch_size", int, 32, "Global batch size (split across replicas)"),
    ("lr", float, 1e-3, "Learning rate (peak learning rate for the cosine schedule)"),
    ("n_epochs", int, 20, "Maximum number of epochs per fold"),
    ("steps_per_epoch", int, 0, "Steps per epoch; 0 = training examples of the fold // batch_size"),
    ("optimizer", str, "adam", f"Optimizer: {', '.join(OPTIMIZERS)}"),
    ("weight_decay", float, 0.0, "Decoupled weight decay (adamw) or L2-free decay for sgd"),
    ("label_smoothing", float, 0.0, "Label smoothing of the cross-entropy loss"),
    ("schedule", str, "plateau",
     "Learning-rate schedule: plateau (ReduceLROnPlateau on --monitor) or cosine (cosine decay after warm-up)"),
    ("warmup_epochs", float, 0.0, "Linear warm-up epochs (cosine schedule)"),
    ("lr_patience", int, 4, "ReduceLROnPlateau patience in epochs"),
    ("lr_factor", float, 0.5, "ReduceLROnPlateau factor"),
    ("min_lr", float, 1e-8, "Lower bound of the learning rate"),
    ("early_stop_patience", int, 8, "EarlyStopping patience in epochs (0 = no early stopping)"),
    ("min_delta", float, 1e-4, "Smallest change of --monitor that counts as an improvement"),
    ("monitor", str, "val_loss", "Quantity that selects the best checkpoint: val_loss, val_acc or val_top5"),
    # data
    ("aug_number", int, 9,
     "Train-time transforms to draw from (flips, 90- and 45-degree rotations, in that order); 0 = none"),
    ("aug_probability", float, 0.5, "Probability that a training image is transformed"),
    ("aug_crop_scale", float, 0.0,
     "Train-time random zoom and shift, for photos: zoom 1/(1+x)..(1+x), shift up to x/2 of the side "
     "(0.25: 0.8x-1.25x, +-12.5%%); 0 = off"),
    ("aug_rotate", float, 0.0, "Train-time random rotation by up to this many degrees either way (photos: 10-20); 0 = off"),
    ("aug_photometric", float, 0.0,
     "Strength of train-time brightness/contrast/saturation/white-balance jitter (0.5 mild, 1 strong); 0 = off"),
    ("tta_number", int, 0, "Test-time transforms besides the identity (same list as --aug_number)"),
    ("cache", str, "auto",
     "Cache of the training data: decoded (resized pixels), encoded (file bytes), none, or auto "
     "(decoded if it fits in --cache_budget_mb, else encoded if it fits, else none)"),
    ("cache_budget_mb", int, 2048, "Memory the cache may use in MB (cache=auto)"),
    ("shuffle_buffer", int, 2048, "Shuffle buffer in examples"),
    # hardware
    ("tpu", _none_or_str, None, "TPU: a name, a grpc:// address, 'local' on a TPU VM, or none"),
    ("mixed_precision", str, "none", f"Mixed precision policy: {', '.join(MIXED_PRECISION)}"),
    ("jit_compile", _bool, False, "Compile the training step with XLA"),
    ("seed", int, 42, "Random seed (fold K uses seed + K)"),
    ("verbose", int, -1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch, -1 auto (bar on a terminal)"),
    # prediction of files
    ("images", list, None, "Image files for --job predict"),
    ("checkpoints", list, None, "Weight files for --job predict (default: every fold's best checkpoint in --run_dir)"),
]

FLAG_NAMES = [f[0] for f in FLAGS]
DEFAULTS = {name: default for name, _, default, _ in FLAGS}


def build_parser():
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Train, predict and score one ensemble member over K folds. "
        "Settings come from --config YAML; flags given here override it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file with any of the settings below")
    for name, typ, default, help_ in FLAGS:
        if typ is list:
            p.add_argument(f"--{name}", nargs="+", default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        else:
            p.add_argument(f"--{name}", type=typ, default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
    return p


def load_yaml(path):
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FLAG_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {', '.join(FLAG_NAMES)}")
    return d


def _coerce(name, value, source):
    typ = next(t for n, t, _, _ in FLAGS if n == name)
    if value is None:
        return None
    try:
        if typ is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return typ(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{source}: bad value for {name}: {value!r} ({e})") from None


def parse_config(argv=None):
    """Return the settings as a dict: defaults < YAML config < command line."""
    args = vars(build_parser().parse_args(argv))
    cfg = dict(DEFAULTS)
    cfg["config"] = args.pop("config")
    if cfg["config"]:
        for k, v in load_yaml(cfg["config"]).items():
            cfg[k] = _coerce(k, v, cfg["config"])
    cfg.update(args)
    return resolve(cfg)


def make_config(**overrides):
    """Settings for use from Python: defaults updated with ``overrides``, resolved."""
    unknown = sorted(set(overrides) - set(FLAG_NAMES) - {"config"})
    if unknown:
        raise ConfigError(f"unknown settings {unknown}")
    cfg = dict(DEFAULTS, config=None)
    cfg.update(overrides)
    return resolve(cfg)


def job_words(job):
    words = [w for w in str(job).replace(",", "_").split("_") if w]
    bad = [w for w in words if w not in JOB_WORDS]
    if bad or not words:
        raise ConfigError(f"--job {job!r}: unknown words {bad}; use words from {', '.join(JOB_WORDS)} joined by '_'")
    return set(words)


def parse_folds(folds, n_folds):
    if folds is None or str(folds).strip().lower() == "all":
        return list(range(n_folds))
    try:
        out = sorted({int(x) for x in str(folds).split(",") if x.strip() != ""})
    except ValueError:
        raise ConfigError(f"--folds {folds!r}: expected 'all' or a comma list of integers") from None
    bad = [f for f in out if not 0 <= f < n_folds]
    if bad or not out:
        raise ConfigError(f"--folds {folds!r}: folds must be in 0..{n_folds - 1}")
    return out


def resolve(cfg):
    """Check values and fill derived paths. Returns a new dict."""
    cfg = dict(cfg)
    problems = []

    def choice(name, allowed):
        if cfg[name] not in allowed:
            problems.append(f"{name}={cfg[name]!r}: choose one of {', '.join(allowed)}")

    cfg["mixed_precision"] = (cfg.get("mixed_precision") or "none").lower()
    choice("mixed_precision", MIXED_PRECISION)
    choice("optimizer", OPTIMIZERS)
    choice("schedule", SCHEDULES)
    choice("cache", CACHE_MODES)
    for name in ("dim", "batch_size", "n_epochs"):
        if cfg[name] <= 0:
            problems.append(f"{name} must be positive, got {cfg[name]}")
    if not 0.0 <= cfg["aug_probability"] <= 1.0:
        problems.append(f"aug_probability must be in [0, 1], got {cfg['aug_probability']}")
    if cfg["aug_number"] < 0 or cfg["tta_number"] < 0:
        problems.append("aug_number and tta_number must be >= 0")
    for name, upper in (("aug_crop_scale", 1.0), ("aug_rotate", 180.0), ("aug_photometric", 2.0)):
        if not 0.0 <= cfg[name] <= upper:
            problems.append(f"{name} must be in [0, {upper:g}], got {cfg[name]}")
    if not cfg["monitor"].startswith("val_"):
        problems.append(f"monitor={cfg['monitor']!r}: must be a validation quantity such as val_loss or val_acc")
    try:
        job_words(cfg["job"])
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("bad settings:\n  - " + "\n  - ".join(problems))
    if cfg["weights"] is not None and str(cfg["weights"]).lower() in ("none", "null", ""):
        cfg["weights"] = None
    if not cfg.get("tfrec_dir"):
        cfg["tfrec_dir"] = os.path.join(cfg["data_dir"], "tfrec")
    if not cfg.get("template"):
        cfg["template"] = os.path.join(cfg["data_dir"], "sample_submission.csv")
    if not cfg.get("run_dir"):
        stem = os.path.splitext(os.path.basename(cfg["config"]))[0] if cfg.get("config") else cfg["arch"]
        base = os.path.dirname(cfg["config"]) if cfg.get("config") else "models"
        cfg["run_dir"] = os.path.join(base, stem)
    return cfg


def to_yaml(cfg):
    keep = {k: cfg[k] for k in FLAG_NAMES if k in cfg and k not in ("images", "checkpoints")}
    return yaml.safe_dump(keep, sort_keys=False)
