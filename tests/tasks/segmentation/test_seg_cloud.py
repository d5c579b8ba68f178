"""On Cloud N end to end: synthetic chips in the real layout (train_features/<chip>/B0x.tif, train_labels,
metadata with location) -> create_tfrecords.py -> run_training.sh (cloud_unet.yaml settings, tiny: jaccard +
focal per image, SGD, folds by location, location-IoU monitor, flip TTA) -> run_inference.sh -> one uint8
<chip>.tif per test chip, scored against the hidden masks."""
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

import foldnet  # noqa: F401
from foldnet.commands import demo_data
from foldnet.io import rundir
from foldnet.raster import submission as seg_submission
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation import evaluate as seg_evaluate
from foldnet.tasks.segmentation import metrics as seg_metrics
from tests.tasks.segmentation.test_segmentation import ROOT, run

# models/cloud_unet.yaml with a tiny UNet from scratch and a few steps
TINY = {"arch": "tiny", "weights": "none", "arch_options": {"decoder_filters": [32, 16, 8]}, "batch_size": 6,
        "n_epochs": 2, "early_stop_patience": 0, "lr": 0.05, "verbose": 2}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud")
    data = root / "cloud"
    assert demo_data.main(["--kind", "cloud", "--out_dir", str(data), "--n_places", "8", "--acquisitions", "3",
                           "--image_size", "32", "--seed", "1"]) == 0
    run([sys.executable, "create_tfrecords.py", "--data_dir", str(data), "--n_folds", "2", "--no_progress"])
    cfg = yaml.safe_load(open(os.path.join(ROOT, "models", "cloud_unet.yaml")))
    cfg.update(TINY)
    member = root / "cloud_tiny.yaml"
    member.write_text(yaml.safe_dump(cfg))
    env = {"DATA_DIR": str(data), "MODELS": str(member), "RUNS_DIR": str(root / "runs")}
    out = run(["bash", "run_training.sh"], env)
    sub = root / "submission"
    out += run(["bash", "run_inference.sh"], dict(env, SUBMISSION=str(sub)))
    return root, data, root / "runs" / "cloud_tiny", sub, cfg, out


def test_recipe_settings_are_the_cloud_recipe(cloud):
    _, _, run_dir, _, cfg, out = cloud
    assert cfg["loss"] == {"jaccard": 1.0, "focal": 0.1, "per_image": True, "gamma": 2}
    assert (cfg["optimizer"], cfg["monitor"], cfg["tta_number"], cfg["norm"]) == ("sgd", "val_location_iou", 1,
                                                                                   "zscore")
    assert out.count("done, best val_location_iou") == 2
    history = pd.read_csv(run_dir / "fold_0" / "history.csv")
    assert "val_location_iou" in history.columns and history["val_location_iou"].between(0, 1).all()


def test_folds_by_location_and_oof_location_iou(cloud):
    _, data, run_dir, _, _, _ = cloud
    tiles = pd.read_csv(data / "tfrec" / "tiles.csv", dtype={"id": str, "group": str})
    train = tiles[tiles["split"] == "train"]
    assert train.groupby("group")["fold"].nunique().max() == 1 and train["fold"].nunique() == 2
    rows = json.loads((run_dir / "scores.json").read_text())["rows"]
    row = next(r for r in rows if r["fold"] == "all" and r["tta"] == "mean")
    ids, truth, probs = rundir.load_oof(str(run_dir), tasks.get("segmentation"))
    where = dict(zip(train["id"], train["group"]))
    expected, per = seg_metrics.location_iou(probs >= 0.5, truth, [where[i] for i in ids])
    assert row["location_iou"] == pytest.approx(expected, abs=1e-12) and len(per) == train["group"].nunique()
    assert row["iou"] == pytest.approx(seg_metrics.pooled_iou(probs >= 0.5, truth), abs=1e-12)
    assert "location_iou" in (run_dir / "scores.md").read_text()


def test_submission_one_uint8_tif_per_test_chip(cloud):
    root, data, _, sub, _, out = cloud
    test_chips = sorted(pd.read_csv(data / "test_metadata.csv", dtype=str)["chip_id"])
    assert sorted(os.listdir(sub)) == [f"{c}.tif" for c in test_chips]
    for c in test_chips:
        m = tifffile.imread(str(sub / f"{c}.tif"))
        assert m.dtype == np.uint8 and m.shape == (32, 32) and set(np.unique(m)) <= {0, 1}
    masks = seg_submission.read_masks(str(sub), "cloud")
    answers = seg_submission.read_masks(str(data / "answers"), "cloud")
    assert sorted(masks) == sorted(answers) == test_chips
    scores = seg_evaluate.score_masks(masks, answers)
    assert scores["iou"] == pytest.approx(seg_metrics.pooled_iou([masks[c] for c in test_chips],
                                                                 [answers[c] for c in test_chips]))
    assert "location_iou" in (root / "submission.scores.md").read_text()


def test_gbm_member_joins_the_unet_through_run_inference(cloud):
    root, data, run_dir, _, cfg, _ = cloud
    gbm = root / "runs" / "cloud_gbm"
    run([sys.executable, "-m", "foldnet", "baseline", "--method", "gbm", "--data_dir", str(data),
         "--run_dir", str(gbm), "--cap", "4000"])
    env = {"DATA_DIR": str(data), "MODELS": str(root / "cloud_tiny.yaml"), "RUNS_DIR": str(root / "runs"),
           "EXTRA_RUNS": str(gbm), "FIT_WEIGHTS": "1", "FIT_METRIC": "dice_best"}
    sub = root / "with_gbm"
    out = run(["bash", "run_inference.sh"], dict(env, SUBMISSION=str(sub)))
    assert "ensembling 2 member(s)" in out
    assert len(os.listdir(sub)) == len(pd.read_csv(data / "test_metadata.csv"))
    text = (root / "with_gbm.scores.md").read_text()
    oof = text.split("## Out-of-fold scores")[1]
    header = next(line for line in oof.splitlines() if line.startswith("| model"))
    column = [c.strip() for c in header.split("|")].index("dice_best")
    dice_best = {line.split("|")[1].strip(): float(line.split("|")[column]) for line in oof.splitlines()
                 if line.startswith("| ") and not line.startswith("| model")}
    assert set(dice_best) >= {str(run_dir), str(gbm), "ensemble (fitted weights)"}
    # FIT_METRIC reached the weight fit: never below the best member on the metric it maximised
    assert "fitted on OOF dice_best" in text
    assert dice_best["ensemble (fitted weights)"] >= max(dice_best[str(run_dir)], dice_best[str(gbm)]) - 1e-9
