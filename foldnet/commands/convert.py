"""create_tfrecords.py: the command line of every task's converter. The layout (given, or
recognised from DATA_DIR's folders) chooses the task; the classification layouts
(Turtle Recall, generic CSV of labelled images) are the default."""
import argparse

from foldnet.core.errors import ConfigError
from foldnet.io import images
from foldnet.io.convert import DEFAULT_SHARD_SIZE
from foldnet.tasks import base as tasks
from foldnet.tasks.classification.convert import create_tfrecords  # noqa: F401 (part of this module's API)
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except for unset options, whose help text says what happens."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# every task's layouts, for --layout
LAYOUTS = tuple(layout for name in tasks.TASKS for layout in tasks.settings_module(name).LAYOUTS)


def build_parser():
    p = argparse.ArgumentParser(
        prog="create_tfrecords.py",
        description="Convert a dataset (CSV + images) into sharded TFRecords with K folds, a label map "
                    "and manifest.json (see data/README.md).",
        formatter_class=_HelpFormatter)
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--data_dir", help="dataset directory; alone: Turtle Recall layout (train.csv, "
                     "extra_images.csv, test.csv, images/)")
    io_.add_argument("--out_dir", help="output directory (local or gs://); default: DATA_DIR/tfrec")
    gen = p.add_argument_group("generic layout (used when --train_csv is given)")
    gen.add_argument("--train_csv", help="training CSV (relative to --data_dir if given); selects this layout")
    gen.add_argument("--test_csv", help="test CSV (default: no test set)")
    gen.add_argument("--images_dir", help="image directory (relative to --data_dir); default: DATA_DIR/images")
    gen.add_argument("--id_col", help="id column (default: image_id; segmentation: id)")
    gen.add_argument("--label_col", default="label", help="label column")
    gen.add_argument("--path_col", help="column with image paths relative to --images_dir "
                     "(default: search <id>.* in --images_dir)")
    gen.add_argument("--path_pattern", help='image file name from the id, e.g. "{id}.png"')
    gen.add_argument("--group_col", help="rows sharing a value stay in one fold (StratifiedGroupKFold)")
    gen.add_argument("--known_labels_csv", help="CSV listing the 'original' labels; others map to --new_label "
                     "in submissions (default: all labels are original)")
    gen.add_argument("--new_label", default=DEFAULT_NEW_LABEL, help="label for new individuals")
    fo = p.add_argument_group("folds")
    fo.add_argument("--n_folds", type=int, default=5, help="number of folds (stratified K-fold)")
    fo.add_argument("--seed", type=int, help="seed of the fold split and shard order (default: 33 for the "
                    "Turtle Recall layout, the original solution's StratifiedKFold random_state, so its folds "
                    "are the original's; 42 for every other layout)")
    fo.add_argument("--holdout_individuals", type=float, default=0.0, metavar="FRACTION",
                    help="this fraction of the individuals keep all their images in one fold, so that fold's "
                         "model never sees them and their out-of-fold predictions behave like new individuals "
                         "of a test set: the open-set rule (new label first) is fitted on them (default: off; "
                         "e.g. 0.2)")
    fo.add_argument("--group_duplicates", type=float, metavar="THRESHOLD",
                    help="keep near-identical images (cosine similarity of 16x16 grayscale thumbnails "
                         ">= THRESHOLD, e.g. 0.95) in one fold (default: off)")
    fo.add_argument("--fold_method", choices=FOLD_METHODS, default="stratified",
                    help="segmentation: stratified (group K-fold stratified on the tiles' properties) or "
                    "round_robin (groups, most tiles first, dealt in blocks of --n_folds, each block a random "
                    "permutation of the folds: the 3rd-place On Cloud N create_folds.py)")
    sh = p.add_argument_group("shards")
    sh.add_argument("--shard_size", default=DEFAULT_SHARD_SIZE,
                    help='per shard: a size ("150MB") or a number of examples ("1000")')
    sh.add_argument("--max_side", type=int, help="re-encode images so the longer side is at most this "
                    "(default: keep JPEG/PNG bytes as they are)")
    sh.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality when re-encoding a JPEG")
    sh.add_argument("--workers", type=int, default=0, help="image worker processes (0: all cores)")
    sh.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                    help="largest image accepted, in pixels (width x height); a larger one is a bad image")
    se = p.add_argument_group("segmentation layouts (--layout kelp|cloud|seg; kelp and cloud are recognised "
                              "from DATA_DIR's folders)")
    se.add_argument("--layout", choices=LAYOUTS,
                    help="classification (default): Turtle Recall or generic CSV of labelled images; kelp: Kelp "
                         "Wanted (train_satellite/, train_kelp/, metadata_fTq0l2T.csv); cloud: On Cloud N "
                         "(train_features/<chip>/B0x.tif, train_labels/, train_metadata.csv); seg: generic CSV "
                         "of tiles (--train_csv with --id_col, --image_col, --mask_col, --group_col); biomassters: The "
                         "BioMassters (train_features/{chip}_S1|S2_{MM}.tif, train_agbm/; recognised from DATA_DIR); "
                         "temporal: generic CSV of [T, H, W, C] chips (--train_csv with --id_col, --image_col, "
                         "--target_col)")
    se.add_argument("--image_col", help="seg: column of the tile's multi-band TIFF, or a pattern with {band} "
                    "naming one TIFF per band of --bands (default: image)")
    se.add_argument("--mask_col", help="seg: column of the mask TIFF, uint8 0/1 (default: mask)")
    se.add_argument("--target_col", help="temporal: column of the target TIFF [H, W] (default: target)")
    se.add_argument("--bands", help="seg: comma-separated band names (default: b0, b1, ... from the first tile)")
    se.add_argument("--missing_value", type=float, help="seg: pixel value meaning missing (default: none)")
    se.add_argument("--stratify_bins", type=int, default=3, help="segmentation folds are stratified on "
                    "has-positive x this many quantile bins of cloud share and water share (when known)")
    ru = p.add_argument_group("behaviour")
    ru.add_argument("--skip_bad", action="store_true", help="skip bad rows/images (listed in the manifest) "
                    "instead of failing")
    ru.add_argument("--overwrite", action="store_true", help="rewrite even if the shards are current")
    ru.add_argument("--allow_outside", action="store_true", help="read files whose path (from a CSV column, "
                    "a pattern, the Kelp metadata or a symlink) resolves outside the data folder (and the images "
                    "folder): every layout")
    ru.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p




DEFAULT_SEED = 42  # fold seed of every layout but Turtle Recall's (classification.convert.TURTLE_FOLD_SEED)

# flags of the map layouts (the rest are shared or classification's)
MAP_FLAGS = ("image_col", "mask_col", "bands", "missing_value", "stratify_bins", "target_col", "fold_method")
FOLD_METHODS = ("stratified", "round_robin")
# map flags with a default (not None) the classification layouts accept at that default
MAP_DEFAULTS = {"stratify_bins": 3, "fold_method": "stratified"}




# flags of the classification layouts and their defaults: set on a map layout, they are refused
CLASSIFICATION_ONLY = {"images_dir": None, "label_col": "label", "path_col": None, "path_pattern": None,
                        "known_labels_csv": None, "max_side": None, "jpeg_quality": 95,
                        "new_label": DEFAULT_NEW_LABEL, "max_pixels": images.DEFAULT_MAX_PIXELS,
                        "holdout_individuals": 0.0}


def load(ref):
    """The object named by ``"module:attribute"``."""
    import importlib

    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def detect_layout(data_dir):
    """The layout some task recognises in ``data_dir``'s folders (each task's ``LAYOUT_DETECTOR``), or None."""
    for name in tasks.TASKS:
        detector = tasks.settings_module(name).LAYOUT_DETECTOR
        layout = load(detector)(data_dir) if detector else None
        if layout:
            return layout
    return None


def task_of_layout(layout):
    """The name of the task that converts ``layout`` (None: the default task)."""
    for name in tasks.TASKS:
        if layout in tasks.settings_module(name).LAYOUTS:
            return name
    return tasks.DEFAULT_TASK


def main(argv=None):
    """Command line entry point; returns the exit code (2 on bad input or flags)."""
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    kwargs["progress"] = not kwargs.pop("no_progress")
    from foldnet.core.cli import run_main

    def go():
        layout = kwargs.pop("layout")
        if layout is None and kwargs["train_csv"] is None and kwargs["data_dir"] is not None:
            layout = detect_layout(kwargs["data_dir"])
        map_kwargs = {k: kwargs.pop(k) for k in MAP_FLAGS}
        task = task_of_layout(layout)
        if task == tasks.DEFAULT_TASK:
            set_map = [f"--{k}" for k, v in map_kwargs.items() if v is not None and k not in MAP_DEFAULTS]
            set_map += [f"--{k}" for k, v in MAP_DEFAULTS.items() if k != "stratify_bins" and map_kwargs[k] != v]
            if set_map:
                raise ConfigError(f"{', '.join(set_map)} apply to segmentation layouts only (--layout)")
        else:
            refused = {**CLASSIFICATION_ONLY, **tasks.settings_module(task).REFUSED_FLAGS}
            foreign = [f"--{k}" for k, default in refused.items() if {**kwargs, **map_kwargs}.get(k) != default]
            if foreign:
                raise ConfigError(f"{', '.join(foreign)} do not apply to the {layout} layout")
            kwargs.update(map_kwargs)
            if kwargs["seed"] is None:
                kwargs["seed"] = DEFAULT_SEED
        load(tasks.settings_module(task).CONVERTER)(layout, kwargs)

    return run_main(go)
