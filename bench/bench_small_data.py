"""Training recipes for a small photo dataset, from scratch on a CPU (small_cnn).

    .venv/bin/python bench/bench_small_data.py [--folds 3] [--only NAME,NAME] [--out PATH]

The dataset is ``foldnet.tasks.classification.demo_data.build_photo_dataset`` (36 individuals x 12
photos of ~100 px; 345 training images, 87 test), converted with
``create_tfrecords`` into ``--folds`` stratified folds. Every recipe is trained
with ``foldnet.engine.runner.run`` on every fold (``train_val_score``, no TTA) and
scored out of fold: top-1, MAP@5 over all classes, MAP@5 with ``new_turtle``
(the competition metric), wall time of the whole recipe. All recipes run in
one process, one after the other, with the same folds and seed; the machine is
shared and noisy, so wall times are rough and differences of a few points of
top-1 are within the seed noise (the table has a second seed of one recipe).

Recipes start from ``models/demo.yaml`` at dim 96 and change one thing at a
time; ``photo aug`` = ``aug_crop_scale 0.25, aug_rotate 15, aug_photometric
0.5`` plus left-right flips (``aug_number 1, aug_probability 0.5``). The last
rows are ``models/small_photos.yaml`` and changes of it. Prints a Markdown table and
writes it to bench/out/small_data.md. Not a test. About 50 minutes on 2 cores.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import common  # bench/common.py: puts the repository on sys.path

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.core import fileio
from foldnet.engine import config
from foldnet.tasks.classification import demo_data

ROOT = common.ROOT

OUT = os.path.join(ROOT, "bench", "out", "small_data.md")
FLIP = {"aug_number": 1, "aug_probability": 0.5}
PHOTO = {**FLIP, "aug_crop_scale": 0.25, "aug_rotate": 15.0, "aug_photometric": 0.5}
LONG = {"batch_size": 32, "n_epochs": 40}  # 40 epochs of ~7 steps instead of 15 of ~3
P40 = {**PHOTO, **LONG}

DEMO, RECIPE = "models/demo.yaml", "models/small_photos.yaml"

# (name, what changes, base config, overrides). DEMO rows run at dim 96.
RECIPES = [
    # the digits recipe, one augmentation change at a time
    ("demo", "demo.yaml at dim 96: no aug, 15 epochs, batch 64, lr 3e-3", DEMO, {}),
    ("flip_lr", "+ left-right flips (aug_number 1)", DEMO, FLIP),
    ("flips", "+ both flips (aug_number 2)", DEMO, {"aug_number": 2, "aug_probability": 0.5}),
    ("aug9", "+ all 9 flips/rotations (aug_number 9)", DEMO, {"aug_number": 9, "aug_probability": 0.5}),
    ("photo", "+ photo aug", DEMO, PHOTO),
    # longer training (40 epochs of ~7 steps instead of 15 of ~3)
    ("long", "40 epochs, batch 32, no aug", DEMO, LONG),
    ("long_flip_lr", "40 epochs, batch 32, flip_lr", DEMO, {**LONG, **FLIP}),
    ("long_aug9", "40 epochs, batch 32, all 9 flips/rotations", DEMO,
     {**LONG, "aug_number": 9, "aug_probability": 0.5}),
    ("photo_40ep", "40 epochs, batch 32, photo aug", DEMO, P40),
    ("photo_40ep_s2", "photo_40ep, seed 2 (seed noise)", DEMO, {**P40, "seed": 2}),
    ("lr1e-3", "photo_40ep, lr 1e-3", DEMO, {**P40, "lr": 1e-3}),
    ("lr1e-2", "photo_40ep, lr 1e-2", DEMO, {**P40, "lr": 1e-2}),
    ("no_photometric", "photo_40ep without aug_photometric", DEMO, {**P40, "aug_photometric": 0.0}),
    ("no_shift_scale", "photo_40ep without aug_crop_scale / aug_rotate", DEMO,
     {**P40, "aug_crop_scale": 0.0, "aug_rotate": 0.0}),
    ("no_flip", "photo_40ep without flips", DEMO, {**P40, "aug_number": 0, "aug_probability": 0.0}),
    ("photo_aug9", "photo_40ep with all 9 flips/rotations instead of flip_lr", DEMO, {**P40, "aug_number": 9}),
    ("no_smoothing", "photo_40ep, label_smoothing 0", DEMO, {**P40, "label_smoothing": 0.0}),
    ("dropout", "photo_40ep, dropout 0.3", DEMO, {**P40, "dropout": 0.3}),
    ("photo_70ep", "photo_40ep, 70 epochs", DEMO, {**P40, "n_epochs": 70}),
    # input size: small_cnn pools its stem output down to <= 24 px
    ("dim64", "photo_40ep at dim 64 (stages 16-8-4 px)", DEMO, {**P40, "dim": 64}),
    ("dim100", "photo_40ep at dim 100 (stages 13-7-4 px)", DEMO, {**P40, "dim": 100}),
    ("dim100_s32", "photo_40ep at dim 100, start_size 32 (stages 25-13-7 px)", DEMO,
     {**P40, "dim": 100, "arch_options": {"start_size": 32}}),
    # small_cnn shape
    ("dim64_w48", "photo_40ep at dim 64, width 48 (48-96-192)", DEMO, {**P40, "dim": 64, "arch_options": {"width": 48}}),
    ("dim64_blocks2", "photo_40ep at dim 64, 2 blocks per stage", DEMO, {**P40, "dim": 64, "arch_options": {"blocks": 2}}),
    # the committed recipe: photo aug, 70 epochs, batch 32, dim 64
    ("small_photos", "models/small_photos.yaml", RECIPE, {}),
    ("small_photos_s2", "small_photos, seed 2 (seed noise)", RECIPE, {"seed": 2}),
    ("small_photos_no_shift", "small_photos without aug_crop_scale / aug_rotate", RECIPE,
     {"aug_crop_scale": 0.0, "aug_rotate": 0.0}),
    ("small_photos_100ep", "small_photos, 100 epochs", RECIPE, {"n_epochs": 100}),
]


def make_tfrecords(root, n_folds):
    from foldnet.tasks.classification.convert import create_tfrecords

    data_dir = demo_data.build_photo_dataset(os.path.join(root, "photos"))
    create_tfrecords(data_dir=data_dir, out_dir=os.path.join(root, "tfrec"), n_folds=n_folds, workers=2,
                     progress=False)
    return data_dir, os.path.join(root, "tfrec")


def run_recipe(base, overrides, data_dir, tfrec_dir, run_dir):
    """(scores row of all folds, identity view; seconds; resolved config)."""
    from foldnet.engine import runner

    settings = config.load_yaml(os.path.join(ROOT, base))
    if base == DEMO:
        settings["dim"] = 96
    settings.update(overrides)
    cfg = config.make_config(**{**settings, "data_dir": data_dir, "tfrec_dir": tfrec_dir, "run_dir": run_dir,
                                "job": "train_val_score", "verbose": 0, "overwrite": True})
    start = time.time()
    runner.run(cfg)
    seconds = time.time() - start
    rows = fileio.read_json(os.path.join(run_dir, "scores.json"))["rows"]
    row = next(r for r in rows if r["fold"] == "all" and r["tta"] == "identity")
    return row, seconds, cfg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3, help="number of folds (default: %(default)s)")
    parser.add_argument("--only", default=None, help="comma list of recipe names to run (default: all)")
    parser.add_argument("--out", default=OUT, help="Markdown output (default: bench/out/small_data.md)")
    args = parser.parse_args(argv)
    recipes = RECIPES
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {r[0] for r in RECIPES})
        if unknown:
            parser.error(f"unknown recipes {unknown}")
        recipes = [r for r in RECIPES if r[0] in wanted]

    import tensorflow as tf

    root = tempfile.mkdtemp(prefix="bench-small-data-")
    lines = []
    try:
        data_dir, tfrec_dir = make_tfrecords(root, args.folds)
        manifest = json.load(open(os.path.join(tfrec_dir, "manifest.json")))
        for name, what, base, overrides in recipes:
            row, seconds, cfg = run_recipe(base, overrides, data_dir, tfrec_dir, os.path.join(root, "runs", name))
            lines.append(f"| {name} | {what} | {row['top1']:.3f} | {row['map5']:.3f} | {row['map5_new']:.3f} | "
                         f"{cfg['n_epochs']} | {seconds:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join([
        f"Recipes for a small photo dataset trained from scratch: `build_photo_dataset` (36 individuals, 27 "
        f"original; {manifest['n_examples']} training images of 100 px), {args.folds} folds, out-of-fold "
        f"scores without TTA. {common.machine()}, TF {tf.__version__}, shared "
        f"machine: wall times are rough. Chance top-1: {1 / manifest['n_classes']:.3f}. "
        f"photo aug = aug_crop_scale 0.25, aug_rotate 15, aug_photometric 0.5, flip_lr (p 0.5).",
        "",
        "| recipe | settings | top-1 | MAP@5 | MAP@5 new_turtle | epochs | wall s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *lines,
        "",
    ])
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
