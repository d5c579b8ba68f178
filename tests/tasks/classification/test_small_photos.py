"""The small-photo recipe (models/small_photos.yaml) learns a tiny photo dataset through the normal pipeline."""
import os

import pytest

import foldnet  # noqa: F401
from foldnet.core import fileio
from foldnet.engine import config, runner
from foldnet.tasks.classification import demo_data
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def test_small_photos_recipe_beats_chance_by_far(tmp_path):
    pytest.importorskip("skimage")
    from foldnet.tasks.classification.convert import create_tfrecords

    data_dir = demo_data.build_photo_dataset(str(tmp_path / "photos"), n_individuals=8, per_individual=10, size=64)
    tfrec = str(tmp_path / "tfrec")
    create_tfrecords(data_dir=data_dir, out_dir=tfrec, n_folds=2, workers=1, progress=False)
    recipe = config.load_yaml(os.path.join(ROOT, "models", "small_photos.yaml"))
    assert recipe["aug_crop_scale"] > 0 and recipe["aug_photometric"] > 0
    cfg = config.make_config(**{**recipe, "n_epochs": 30, "data_dir": data_dir, "tfrec_dir": tfrec,
                                "run_dir": str(tmp_path / "run"), "folds": "0", "job": "train_val_score",
                                "verbose": 0})
    assert runner.run(cfg) == 0
    rows = fileio.read_json(str(tmp_path / "run" / "scores.json"))["rows"]
    top1 = next(r for r in rows if r["fold"] == "0" and r["tta"] == "identity")["top1"]
    print(f"small_photos recipe, tiny photo dataset (8 individuals, 32 training images): top-1 {top1:.3f}")
    assert top1 >= 0.5  # chance is 1/8
