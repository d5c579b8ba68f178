"""Settings of run.py: one typed, validated, frozen ``Config`` built once.

Every setting is a flag; ``--config models/NAME.yaml`` supplies values for any
of them and flags given on the command line win (defaults < YAML < flags).
``Config.build`` coerces every value to its flag's type ("none" -> None in one
place), checks every value against ``CHOICES`` and the one ``BOUNDS`` table
(the augmentation code reads its limits from the same table), parses ``job``
and ``folds`` once, and fills the derived paths (tfrec_dir, run_dir;
the template's default is the task's). Every problem is reported together, before any model is built.

``Config`` is a frozen dataclass that also reads as a mapping
(``cfg["dim"]``, ``dict(cfg, dim=32)``); ``cfg.replace(dim=32)`` makes a new,
validated one. ``cfg.aug`` is the train-time augmentation as one object;
``cfg.arch_options`` (YAML ``arch_options: {width: 48}``) goes to the
architecture's builder.

Light module: no TensorFlow (``run.py --help`` stays fast).
"""
import argparse
import dataclasses
import os

import yaml

from foldnet.core import transforms
from foldnet.core.errors import ConfigError
from foldnet.core.settings import Bound, as_bool, as_mapping, none_or_str, nonfinite_paths, str_or_mapping
from foldnet.tasks import base as tasks

JOB_WORDS = ("train", "val", "test", "score", "subm", "predict")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine")
CACHE_MODES = ("auto", "decoded", "encoded", "none")


_bool, _none_or_str, _mapping, _str_or_mapping = as_bool, none_or_str, as_mapping, str_or_mapping


# Number of train-time / TTA transforms besides the identity (augment.TRANSFORMS[1:]).
N_TRANSFORMS = transforms.MAX_NUMBER

# Largest values of counts and sizes: far above any real run, low enough that a typo (an extra zero
# run, 1e30) is refused here rather than by an overflow or an out-of-memory kill later.
MAX_COUNT = 10**9
MAX_EPOCHS = 100_000
MAX_DIM = 16_384
MAX_SEED = 2**31 - 1

# Numeric bounds of the shared settings (the tasks' settings carry their own; see TASK_SETTINGS).
# Every int and float setting has one (tests/engine/test_config.py sweeps them); a bound never
# holds NaN or an infinity (core.settings.Bound).
BOUNDS = {
    "dim": Bound(1, MAX_DIM, False),
    "batch_size": Bound(1, MAX_COUNT, False),
    "n_epochs": Bound(1, MAX_EPOCHS, False),
    "steps_per_epoch": Bound(0, MAX_COUNT, False),
    "lr": Bound(0, 10.0, False, True),
    "weight_decay": Bound(0, 10.0, False),
    "dropout": Bound(0.0, 1.0, True),
    "warmup_epochs": Bound(0, MAX_EPOCHS, False),
    "lr_patience": Bound(0, MAX_EPOCHS, False),
    "lr_factor": Bound(0.0, 1.0, True, True),
    "min_lr": Bound(0.0, 10.0, False),
    "early_stop_patience": Bound(0, MAX_EPOCHS, False),
    "min_delta": Bound(0.0, 1e9, False),
    "aug_number": Bound(0, N_TRANSFORMS, False),
    "tta_number": Bound(0, N_TRANSFORMS, False),
    "aug_probability": Bound(0.0, 1.0, False),
    "aug_crop_scale": Bound(0.0, transforms.MAX_CROP_SCALE, False),
    "aug_rotate": Bound(0.0, transforms.MAX_ROTATE_DEGREES, False),
    "aug_photometric": Bound(0.0, transforms.MAX_PHOTOMETRIC, False),
    "cache_budget_mb": Bound(0, MAX_COUNT, False),
    "shuffle_buffer": Bound(1, MAX_COUNT, False),
    "tiles_per_epoch": Bound(0, MAX_COUNT, False),
    "seed": Bound(0, MAX_SEED, False),
    "verbose": Bound(-1, 2, False),
}


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
    ("run_dir", _none_or_str, None, "Output directory of this member (default: runs/<config name>)"),
    ("template", _none_or_str, None,
     "Submission template (default: the task's: DATA_DIR/sample_submission.csv for classification, "
     "TFREC_DIR/tiles.csv for segmentation)"),
    # model
    ("arch", str, "small_cnn", "Architecture name (see foldnet.models.backbones.list_architectures)"),
    ("weights", _none_or_str, None,
     "Pretrained weights: a name the backbone offers (imagenet, imagenet21k-ft1k, noisy_student, ...), "
     "none, or a path to a local .h5 file"),
    ("dim", int, 64, "Side of the square model input in pixels"),
    ("dropout", float, 0.0, "Dropout before the classifier"),
    # optimisation
    ("batch_size", int, 32, "Global batch size (split across replicas)"),
    ("lr", float, 1e-3, "Learning rate (peak learning rate for the cosine schedule)"),
    ("n_epochs", int, 20, "Maximum number of epochs per fold"),
    ("steps_per_epoch", int, 0, "Steps per epoch; 0 = tiles_per_epoch (or the fold's training examples) // batch_size"),
    ("tiles_per_epoch", int, 0, "Examples per epoch (segmentation: tiles drawn by the sampler); 0 = the fold's "
     "training examples"),
    ("optimizer", str, "adam", f"Optimizer: {', '.join(OPTIMIZERS)}"),
    ("weight_decay", float, 0.0, "Decoupled weight decay (adamw) or L2-free decay for sgd"),
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
    ("aug_in_model", _bool, False,
     "Run the augmentation inside the model (first layer, training only) instead of in the input pipeline: "
     "for accelerators whose host has few CPU cores; same distribution"),
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
    ("quiet", _bool, False, "Log warnings and errors only (foldnet's own lines; Keras progress follows --verbose)"),
    ("arch_options", dict, None,
     "Options of the architecture's builder as a YAML mapping, e.g. '{width: 48, depth: 4}' "
     "(small_cnn: width, depth, blocks; kecam: drop_connect_rate, ...)"),
    # map tasks (ignored by classification)
    ("loss", _str_or_mapping, None,
     "Segmentation loss: a term (dice, jaccard, focal, bce) or a YAML mapping of weights, e.g. "
     "'{jaccard: 1.0, focal: 0.1, per_image: true}' (default: dice)"),
]

SHARED_FLAGS = list(FLAGS)
# Each task's own settings (tasks/<task>/settings.py), in registry order: flags and YAML keys like the shared ones.
TASK_SETTINGS = tasks.all_settings()
FLAGS = SHARED_FLAGS + [(st.name, st.type, st.default, st.help) for st in TASK_SETTINGS]
BOUNDS.update({st.name: st.bound for st in TASK_SETTINGS if st.bound is not None})

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
        if typ is dict:
            p.add_argument(f"--{name}", type=_mapping, default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        elif typ is list:
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


_TYPES = {name: typ for name, typ, _, _ in FLAGS}


def _coerce(name, value):
    """``value`` as flag ``name``'s type; ValueError / TypeError / ArgumentTypeError if it is not one."""
    typ = _TYPES[name]
    if value is None:
        return None
    if typ is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if isinstance(v, (list, tuple, dict, set)) or v is None]
        if bad:
            raise ValueError(f"expected a list of names, got nested values {bad}")
        return [str(v) for v in items]
    if typ is dict:
        return _mapping(value)
    if typ is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    if typ in (int, float) and isinstance(value, bool):
        raise ValueError("not a number")
    if typ in (int, float) and isinstance(value, (list, tuple, dict, set)):
        raise ValueError("not a number")
    if typ is str and isinstance(value, (list, tuple, dict, set)):
        raise ValueError("not a text value")
    return typ(value)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation settings, one object (see augment and data.train_dataset)."""

    number: int = 0            # transforms drawn from augment.TRANSFORMS[1:number + 1]
    probability: float = 0.0   # chance a training image gets one of them
    crop_scale: float = 0.0    # random zoom / shift strength
    rotate: float = 0.0        # random rotation in degrees either way
    photometric: float = 0.0   # brightness / contrast / saturation / white balance strength

    def kwargs(self):
        """The keyword arguments of ``data.train_dataset``."""
        return {"aug_number": self.number, "aug_probability": self.probability, "aug_crop_scale": self.crop_scale,
                "aug_rotate": self.rotate, "aug_photometric": self.photometric}


def job_words(job):
    words = [w for w in str(job).replace(",", "_").split("_") if w]
    bad = [w for w in words if w not in JOB_WORDS]
    if bad or not words:
        raise ConfigError(f"--job {job!r}: unknown words {bad}; use words from {', '.join(JOB_WORDS)} joined by '_'")
    return frozenset(words)


def _fold_spec(folds):
    """None for 'all', else the sorted tuple of fold numbers (range checked against the manifest later)."""
    if folds is None or str(folds).strip().lower() == "all":
        return None
    try:
        out = tuple(sorted({int(x) for x in str(folds).split(",") if x.strip() != ""}))
    except ValueError:
        raise ConfigError(f"--folds {folds!r}: expected 'all' or a comma list of integers") from None
    if not out:
        raise ConfigError(f"--folds {folds!r}: expected 'all' or a comma list of integers")
    return out


def parse_folds(folds, n_folds):
    """Fold numbers of ``folds`` ('all' or '0,2') for a dataset of ``n_folds`` folds."""
    spec = _fold_spec(folds)
    if spec is None:
        return list(range(n_folds))
    bad = [f for f in spec if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"--folds {folds!r}: folds must be in 0..{n_folds - 1}")
    return list(spec)


def _problems(values):
    """Every problem of a dict of coerced settings, as lines."""
    problems = []
    for name, allowed in CHOICES.items():
        if values[name] not in allowed:
            problems.append(f"{name}={values[name]!r}: choose one of {', '.join(allowed)}")
    for name, bound in BOUNDS.items():
        if values[name] is not None and not bound.contains(values[name]):
            problems.append(f"{name} must be {bound.text()}, got {values[name]}")
    for name in FLAG_NAMES:
        if _TYPES[name] in (dict, list) or isinstance(values[name], (dict, list)):
            bad = nonfinite_paths(values[name])
            if bad:
                problems.append(f"{name}: NaN or infinite number at {', '.join(bad)}; use finite numbers")
    if not str(values["monitor"]).startswith("val_"):
        problems.append(f"monitor={values['monitor']!r}: must be a validation quantity such as val_loss or val_acc")
    for check in (lambda: job_words(values["job"]), lambda: _fold_spec(values["folds"])):
        try:
            check()
        except ConfigError as e:
            problems.append(str(e))
    return problems


def _config_fields():
    fields = [("config", "str | None", dataclasses.field(default=None))]
    for name, typ, default, _ in FLAGS:
        fields.append((name, typ, dataclasses.field(default=default)))
    return fields


class _Mapping:
    """Read access as a mapping of the settings (``cfg["dim"]``, ``dict(cfg)``, ``cfg.get``)."""

    def __getitem__(self, key):
        if key not in SETTING_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return list(SETTING_NAMES)

    def __iter__(self):
        return iter(SETTING_NAMES)

    def __len__(self):
        return len(SETTING_NAMES)

    def __contains__(self, key):
        return key in SETTING_NAMES

    def get(self, key, default=None):
        return getattr(self, key) if key in SETTING_NAMES else default

    def items(self):
        return [(k, getattr(self, k)) for k in SETTING_NAMES]

    @property
    def jobs(self):
        """The job words, parsed once."""
        return self._derived["jobs"]

    @property
    def aug(self):
        """The train-time augmentation settings as one ``Augmentation``."""
        return self._derived["aug"]

    def folds_for(self, n_folds):
        """Fold numbers to run for a dataset of ``n_folds`` folds."""
        return parse_folds(self.folds, n_folds)

    def replace(self, **changes):
        """A new validated Config with ``changes``."""
        return Config.build(dict(self, **changes))

    @classmethod
    def build(cls, values, source="settings"):
        """Validated Config from a mapping of settings (missing ones take their defaults)."""
        if isinstance(values, Config):
            return values
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"unknown settings {unknown}")
        merged = dict(DEFAULTS, config=None)
        merged.update(values)
        problems = []
        for name in FLAG_NAMES:
            try:
                merged[name] = _coerce(name, merged[name])
            except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                problems.append(f"{source}: bad value for {name}: {merged[name]!r} ({e})")
        if problems:
            raise ConfigError("bad settings:\n  - " + "\n  - ".join(problems))
        merged["mixed_precision"] = (merged["mixed_precision"] or "none").lower()
        problems = _problems(merged)
        if problems:
            raise ConfigError("bad settings:\n  - " + "\n  - ".join(problems))
        if not merged["tfrec_dir"]:
            merged["tfrec_dir"] = os.path.join(merged["data_dir"], "tfrec")
        if not merged["run_dir"]:
            merged["run_dir"] = default_run_dir(merged["config"], merged["arch"])
        cfg = cls(**merged)
        object.__setattr__(cfg, "_derived", {
            "jobs": job_words(merged["job"]),
            "aug": Augmentation(merged["aug_number"], merged["aug_probability"], merged["aug_crop_scale"],
                                merged["aug_rotate"], merged["aug_photometric"]),
        })
        return cfg


Config = dataclasses.make_dataclass("Config", _config_fields(), bases=(_Mapping,), frozen=True)
Config.__doc__ = "The settings of one run.py call (see the module doc); frozen, validated by ``Config.build``."
SETTING_NAMES = ("config", *FLAG_NAMES)

CHOICES = {"mixed_precision": MIXED_PRECISION, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "cache": CACHE_MODES,
           **{st.name: st.choices for st in TASK_SETTINGS if st.choices}}


RUNS_DIR = "runs"


def default_run_dir(config_path, arch):
    """runs/<config name> (or runs/<arch> without a config), in the current directory.

    A run directory that earlier versions made beside the config (models/<config name>/, holding
    task.json or fold_*/) is still used when runs/<config name> does not exist, so runs made
    before the move resume and ensemble as they were."""
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else arch
    new = os.path.join(RUNS_DIR, name)
    if config_path and not os.path.exists(new):
        old = os.path.join(os.path.dirname(config_path), name)
        if os.path.isdir(old) and (os.path.exists(os.path.join(old, "task.json"))
                                   or any(n.startswith("fold_") for n in os.listdir(old))):
            return old
    return new


def parse_config(argv=None):
    """The Config of a command line: defaults < YAML config < command line."""
    args = vars(build_parser().parse_args(argv))
    values = {"config": args.pop("config")}
    source = "settings"
    if values["config"]:
        source = values["config"]
        for k, v in load_yaml(values["config"]).items():
            try:
                values[k] = _coerce(k, v)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                raise ConfigError(f"{source}: bad value for {k}: {v!r} ({e})") from None
    values.update(args)
    return Config.build(values, source)


def make_config(**overrides):
    """The Config for use from Python: defaults updated with ``overrides``."""
    return Config.build(overrides)


def to_yaml(cfg):
    keep = {k: cfg[k] for k in FLAG_NAMES if k not in ("images", "checkpoints", "quiet")}
    if keep.get("arch_options") is None:
        keep.pop("arch_options", None)
    return yaml.safe_dump(keep, sort_keys=False)


def main(argv=None):
    """``python -m foldnet.engine.config [run.py flags] --print NAME``: print one resolved setting (for shell scripts)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--print" not in argv or argv.index("--print") + 1 >= len(argv):
        print("usage: python -m foldnet.engine.config [run.py flags] --print NAME", file=sys.stderr)
        return 2
    i = argv.index("--print")
    name = argv[i + 1]
    try:
        cfg = parse_config(argv[:i] + argv[i + 2:])
        print(cfg[name])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"error: no setting {name!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
