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
import math
import os

import yaml

from foldnet.core import transforms
from foldnet.core.errors import ConfigError
from foldnet.core.settings import Bound, as_bool, as_mapping, none_or_str, nonfinite_paths, str_or_mapping
from foldnet.io import rundir
from foldnet.models import unet_options
from foldnet.tasks import base as tasks

JOB_WORDS = ("train", "val", "test", "score", "subm", "predict", "full")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine", "constant", "onecycle")
INPUT_NORMS = ("backbone", "none")
# schedule onecycle: PyTorch OneCycleLR's keys, its defaults, and their bounds (low, high, high open)
ONECYCLE_DEFAULTS = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
ONECYCLE_BOUNDS = {"pct_start": Bound(1e-12, 1.0, True), "div_factor": Bound(1e-12, None, False),
                   "final_div_factor": Bound(1e-12, None, False)}
CACHE_MODES = ("auto", "decoded", "encoded", "none")
SELECTIONS = ("auto", "best", "smoothed", "last")


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
    "min_epochs": Bound(-1, MAX_COUNT, False),
    "select_window": Bound(1, MAX_COUNT, False),
    "clip_norm": Bound(0.0, 1e6, False),
    "accum_steps": Bound(1, MAX_COUNT, False),
    "full_epochs": Bound(0, MAX_COUNT, False),
    "full_from": Bound(-1, MAX_COUNT, False),
    "full_lr": Bound(0, 10, False),
}


# name, type, default, help. The order is the order of --help.
FLAGS = [
    # what to do
    ("job", str, "train_val_test_score",
     "What to do: words joined by '_' from train, val (predict the held-out fold), test "
     "(predict the test set), score (out-of-fold scores), subm (this member's submission), "
     "full (after the folds: one model on every fold in fold_all/, no validation, --full_epochs; "
     "with test, its test predictions), "
     "predict (the files given with --images)"),
    ("folds", str, "all", "Folds to run: 'all' or a comma list such as '0,2'"),
    ("overwrite", _bool, False, "Retrain folds that are already done (otherwise they are skipped)"),
    ("full_epochs", int, 0,
     "Epochs of the full-data model (job full): 0 = the rounded mean best epoch of the finished folds "
     "(n_epochs if none has finished); fixed when it starts, so a resume keeps it"),
    ("full_from", int, -1,
     "Job full starts from: -1 = the weights setting (as a fold), K = fold K's best.h5 (a fine-tune: the "
     "1st place of The BioMassters fine-tuned its one fold's model on all data)"),
    ("full_lr", float, 0.0, "Peak learning rate of the full-data model; 0 = lr"),
    ("full_models", str, "with",
     "How subm / the ensemble use the full-data model (fold_all/): with (averaged as one more fold), "
     "only (instead of the fold models), no (left out)"),
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
    ("input_norm", str, "backbone",
     "Input normalisation: backbone (the pixel normalisation the backbone's pretrained weights expect) or none "
     "(the inputs go straight into the backbone)"),
    # optimisation
    ("batch_size", int, 32, "Global batch size (split across replicas)"),
    ("lr", float, 1e-3, "Learning rate (peak learning rate for the cosine schedule)"),
    ("n_epochs", int, 20, "Maximum number of epochs per fold"),
    ("steps_per_epoch", int, 0, "Steps per epoch; 0 = tiles_per_epoch (or the fold's training examples) // batch_size"),
    ("tiles_per_epoch", int, 0, "Examples per epoch (segmentation: tiles drawn by the sampler); 0 = the fold's "
     "training examples"),
    ("optimizer", str, "adam", f"Optimizer: {', '.join(OPTIMIZERS)}"),
    ("weight_decay", float, 0.0, "Decoupled weight decay (adamw) or L2-free decay for sgd"),
    ("decay_all", _bool, True,
     "Weight decay on every variable; false: not on biases and other 1-D variables (norm scales and offsets)"),
    ("nesterov", _bool, True, "Nesterov momentum for --optimizer sgd (momentum 0.9)"),
    ("clip_norm", float, 0.0, "Clip the gradients to this global L2 norm before each update; 0 = off"),
    ("accum_steps", int, 1,
     "Gradient accumulation: each update averages the gradients of this many batches of --batch_size "
     "(one update per accum_steps x batch_size examples; the steps of an epoch count updates)"),
    ("schedule", str, "plateau",
     "Learning-rate schedule: plateau (ReduceLROnPlateau on --monitor), cosine (cosine decay after warm-up), "
     "constant, or onecycle (PyTorch OneCycleLR by update: --lr is max_lr; see --schedule_options)"),
    ("schedule_options", dict, None,
     "onecycle: a YAML mapping of pct_start (0.3), div_factor (25), final_div_factor (1e4): starts at "
     "lr/div_factor, cosine up to lr over pct_start of the updates, cosine down to lr/div_factor/final_div_factor"),
    ("warmup_epochs", float, 0.0, "Linear warm-up epochs (cosine schedule)"),
    ("lr_patience", int, 4, "ReduceLROnPlateau patience in epochs"),
    ("lr_factor", float, 0.5, "ReduceLROnPlateau factor"),
    ("min_lr", float, 1e-8, "Lower bound of the learning rate"),
    ("early_stop_patience", int, 8, "EarlyStopping patience in epochs (0 = no early stopping)"),
    ("min_delta", float, 1e-4, "Smallest change of --monitor that counts as an improvement"),
    ("monitor", str, "val_loss", "Quantity that selects the best checkpoint: val_loss, val_acc or val_top5"),
    ("select", str, "auto",
     "Which epoch's weights a fold keeps: best (best --monitor value), smoothed (best mean of --monitor over the "
     "last select_window epochs: one lucky or unlucky epoch on an unrepresentative validation fold does not "
     "decide), last (the last epoch of the schedule), auto (the task's: best for classification, smoothed for "
     "the map tasks)"),
    ("select_window", int, 3, "Epochs averaged by --select smoothed"),
    ("min_epochs", int, -1,
     "Epochs a fold trains before an epoch may be kept (and before early stopping); -1 = the task's "
     "(classification 0, map tasks a quarter of n_epochs)"),
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
    ("map_aug", dict, None,
     "Map tasks: paired image/mask augmentation after the flips and turns, a YAML mapping of "
     "p (affine probability), rotate (degrees), rotate_p, scale_sd (zoom ~ N(1, sd)), scale_p, shift "
     "(centre shift, fraction of the side), target_interp (nearest | bilinear), cutout_p, elastic_p, "
     "photometric_p (see foldnet.raster.views.paired_augment); default: none of them"),
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
     "(small_cnn: width, depth, blocks; kecam: drop_connect_rate, ...; UNets: decoder_filters, encoder_taps, "
     "decoder_attention, decoder_norm, head_kernel, stem: see foldnet.models.unet_options)"),
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


def schedule_options(values):
    """The onecycle keys of ``values["schedule_options"]`` with PyTorch's defaults filled in."""
    return {**ONECYCLE_DEFAULTS, **{k: float(v) for k, v in (values["schedule_options"] or {}).items()}}


def _schedule_option_problems(options):
    problems = []
    for key, value in (options or {}).items():
        if key not in ONECYCLE_BOUNDS:
            problems.append(f"schedule_options.{key}: unknown; known: {', '.join(ONECYCLE_BOUNDS)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not ONECYCLE_BOUNDS[key].contains(value):
            text = "in (0, 1)" if key == "pct_start" else "a finite number > 0"
            problems.append(f"schedule_options.{key} must be {text}, got {value!r}")
    return problems


def _problems(values):
    """Every problem of a dict of coerced settings, as lines."""
    problems = [f"{name} must be a finite number, got {values[name]}" for name, typ, _, _ in FLAGS
                if typ is float and name not in BOUNDS and values[name] is not None and not math.isfinite(values[name])]
    for name, allowed in CHOICES.items():
        if values[name] not in allowed:
            problems.append(f"{name}={values[name]!r}: choose one of {', '.join(allowed)}")
    for name, bound in BOUNDS.items():
        if values[name] is not None and not bound.contains(values[name]):
            problems.append(f"{name} must be {bound.text()}, got {values[name]}")
    problems += transforms.map_aug_problems(values["map_aug"])
    if values["map_aug"] and (values["aug_crop_scale"] or values["aug_rotate"]) and any(
            values["map_aug"].get(k) for k in ("p", "rotate", "scale_sd", "shift")):
        problems.append("map_aug's affine (p, rotate, scale_sd, shift) and aug_crop_scale / aug_rotate are both set: "
                        "keep one of them")
    for name in FLAG_NAMES:
        if _TYPES[name] in (dict, list) or isinstance(values[name], (dict, list)):
            bad = nonfinite_paths(values[name])
            if bad:
                problems.append(f"{name}: NaN or infinite number at {', '.join(bad)}; use finite numbers")
    if not str(values["monitor"]).startswith("val_"):
        problems.append(f"monitor={values['monitor']!r}: must be a validation quantity such as val_loss or val_acc")
    problems += _schedule_option_problems(values["schedule_options"])
    if values["schedule_options"] and values["schedule"] != "onecycle":
        problems.append(f"schedule_options is for schedule onecycle, not {values['schedule']}")
    problems += unet_options.problems(values["arch_options"])
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
           "select": SELECTIONS, "input_norm": INPUT_NORMS, "full_models": rundir.FULL_MODES,
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
    for key in ("arch_options", "schedule_options"):
        if keep.get(key) is None:
            keep.pop(key, None)
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
    from foldnet.core.cli import run_main

    def show():
        cfg = parse_config(argv[:i] + argv[i + 2:])
        if name not in cfg:
            raise ConfigError(f"no setting {name!r}")
        print(cfg[name])

    return run_main(show)


if __name__ == "__main__":
    raise SystemExit(main())
