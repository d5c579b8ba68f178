"""The segmentation task end to end: synthetic Kelp tiles -> create_tfrecords.py -> run_training.sh
(run.py over every fold) -> run_inference.sh -> TIFF submission scored against the hidden masks."""
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError
from foldnet.engine import config, runner
from foldnet.io import rundir
from foldnet.raster import submission as seg_submission
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation import demo_data as seg_demo_data
from foldnet.tasks.segmentation import evaluate as seg_evaluate
from foldnet.tasks.segmentation import metrics as seg_metrics
from tests.engine.test_training import KillAfterEpoch, Killer
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR
MEMBER = """arch: tiny
weights: none
arch_options: {decoder_filters: [32, 16, 8]}
indices: [NDVI, NDWI, CIG]
loss: {dice: 1.0, bce: 0.5}
sampler: {has_positive: 2.0}
tiles_per_epoch: 16
batch_size: 8
lr: 0.003
n_epochs: 2
early_stop_patience: 0
monitor: val_dice
aug_number: 3
tta_number: 1
verbose: 2
"""


def run(args, env=None):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHON=sys.executable, **(env or {})))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def kelp(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data = root / "kelp"
    seg_demo_data.build_kelp_dataset(str(data), n_places=8, acquisitions=2, size=32, seed=3)
    return convert_and_train(root, data, MEMBER, "seg_tiny")


def convert_and_train(root, data, member_yaml, name, n_folds=2):
    """create_tfrecords.py on ``data``, then run_training.sh with the member ``name`` (YAML text
    ``member_yaml``) under ``root/runs``: (root, data, run dir, env of the scripts, training stdout)."""
    run([sys.executable, "create_tfrecords.py", "--data_dir", str(data), "--n_folds", str(n_folds)])
    member = root / f"{name}.yaml"
    member.write_text(member_yaml)
    env = {"DATA_DIR": str(data), "MODELS": str(member), "RUNS_DIR": str(root / "runs")}
    train_out = run(["bash", "run_training.sh"], env)
    return root, data, root / "runs" / name, env, train_out


def _tiff(path):
    return tifffile.imread(str(path))


def test_train_val_test_score_writes_maps_and_scores(kelp):
    root, data, run_dir, _, out = kelp
    assert out.count("done, best val_dice") == 2
    assert rundir.read_task(str(run_dir)) == "segmentation"
    tfrec = data / "tfrec"
    folds = pd.read_csv(tfrec / "folds.csv", dtype={"id": str})
    tiles = pd.read_csv(tfrec / "tiles.csv", dtype={"id": str})
    n_test = int((tiles["split"] == "test").sum())
    task = tasks.get("segmentation")
    for fold in (0, 1):
        p = rundir.fold_paths(str(run_dir), fold)
        assert os.path.getsize(p["best"]) > 0 and os.path.exists(p["done"])
        oof = rundir.load_predictions(p["oof"])
        ids = set(folds.loc[folds["fold"] == fold, "id"])
        assert set(oof["ids"]) == ids
        assert oof["outputs"].dtype == np.uint8 and oof["outputs"].shape == (2, len(ids), 32, 32)
        assert [str(t) for t in oof["tta_names"]] == ["identity", "flip_lr"]
        assert oof["labels"].dtype == np.uint8 and oof["labels"].shape == (len(ids), 32, 32)
        for i, tile_id in enumerate(oof["ids"]):  # the stored truth is the layout's mask
            np.testing.assert_array_equal(oof["labels"][i], _tiff(data / "train_kelp" / f"{tile_id}_kelp.tif"))
        test = rundir.load_predictions(p["test"])
        assert test["outputs"].dtype == np.uint8 and test["outputs"].shape == (2, n_test, 32, 32)
    # scores.json agrees with seg_metrics on the stored OOF maps (TTA mean, all folds)
    ids, truth, probs = rundir.load_oof(str(run_dir), task)
    assert probs.dtype == np.float32 and probs.shape == (len(folds), 32, 32)
    rows = json.loads((run_dir / "scores.json").read_text())["rows"]
    row = next(r for r in rows if r["fold"] == "all" and r["tta"] == "mean")
    assert row["n"] == len(folds)
    assert row["dice"] == pytest.approx(seg_metrics.pooled_dice(probs >= 0.5, truth), abs=1e-12)
    assert row["iou"] == pytest.approx(seg_metrics.pooled_iou(probs >= 0.5, truth), abs=1e-12)
    _, best = seg_metrics.threshold_table(probs, truth)
    assert (row["dice_best"], row["threshold"]) == (pytest.approx(best["dice"]), best["threshold"])
    assert row["dice_best"] >= row["dice"]
    assert (run_dir / "oof.threshold.md").read_text().count("\n|") > 80 and (run_dir / "oof.threshold.png").exists()


def test_inference_writes_the_thresholded_submission(kelp):
    root, data, run_dir, env, _ = kelp
    sub = root / "sub.tar"
    out = run(["bash", "run_inference.sh"], dict(env, SUBMISSION=str(sub)))
    assert "is current; not predicted again" in out and "fitted on the ensemble's OOF: threshold" in out
    meta = pd.read_csv(data / "metadata_fTq0l2T.csv", dtype=str)
    test_ids = sorted(meta.loc[meta["in_train"].str.lower() == "false", "tile_id"])
    with tarfile.open(sub) as tar:
        assert sorted(tar.getnames()) == sorted(f"{i}_kelp.tif" for i in test_ids)
    masks = seg_submission.read_masks(str(sub), "kelp")
    # the masks are the fold x TTA mean of the test maps at the OOF-fitted threshold
    task = tasks.get("segmentation")
    _, truth, probs = rundir.load_oof(str(run_dir), task)
    threshold = seg_metrics.threshold_table(probs, truth)[1]["threshold"]
    mean = {}
    for _, path in rundir.prediction_files(str(run_dir), "test"):
        t = rundir.load_predictions(path)
        for tile_id, maps in zip(t["ids"], task.decode_outputs(t["outputs"]).mean(axis=0) / 2):
            mean[str(tile_id)] = mean.get(str(tile_id), 0) + maps
    for tile_id in test_ids:
        m = masks[tile_id]
        assert m.dtype == np.uint8 and m.shape == (32, 32) and set(np.unique(m)) <= {0, 1}
        clear = np.abs(mean[tile_id] - threshold) > 1e-5
        np.testing.assert_array_equal(m[clear], (mean[tile_id] >= threshold)[clear].astype(np.uint8))
    # the ensemble's Dice-vs-threshold table and curve, whose best threshold is the submission's
    md = (root / "sub.threshold.md").read_text()
    assert (root / "sub.threshold.png").stat().st_size > 0 and md.count("\n|") > 80
    best = re.search(r"Best dice [0-9.]+ at threshold ([0-9.]+)", md)
    assert best and float(best.group(1)) == pytest.approx(threshold, abs=5e-3)
    assert f"threshold {threshold:.2f}" in out
    answers = seg_submission.read_masks(str(data / "answers"), "kelp")
    scores = seg_evaluate.score_masks(masks, answers)
    ids = sorted(answers)
    assert scores["dice"] == pytest.approx(seg_metrics.pooled_dice([masks[i] for i in ids], [answers[i] for i in ids]))


def test_bad_segmentation_settings_are_named_before_any_model(kelp, tmp_path):
    _, data, _, _, _ = kelp
    cfg = config.make_config(data_dir=str(data), run_dir=str(tmp_path / "r"), arch="tiny", monitor="val_acc",
                             loss={"dice": 1.0, "focall": 0.1}, indices=["NDVI", "XYZ"], seg_bands=["NIR", "B9"])
    with pytest.raises(ConfigError) as e:
        runner.run(cfg)
    text = str(e.value)
    for needle in ("focall", "XYZ", "B9", "val_acc"):
        assert needle in text
    # nothing of the run was written (the run lock may leave the empty directory)
    assert not os.path.exists(tmp_path / "r") or not [n for n in os.listdir(tmp_path / "r") if not n.startswith(".")]


def test_uint8_maps_round_trip_and_csv_submission_refused(tmp_path):
    task = tasks.get("segmentation")
    p = np.array([[[[0.0, 0.2], [0.5, 1.0]]]], np.float32)
    stored = task.encode_outputs(p)
    assert stored.dtype == np.uint8 and stored.tolist() == [[[[0, 51], [128, 255]]]]
    assert np.abs(task.decode_outputs(stored) - p).max() <= 0.5 / 255 + 1e-7
    spec = task.load_spec({"image": {"shape": [2, 2, 7], "bands": list("ABCDEFG")}, "submission_naming": "{id}.tif"})
    with pytest.raises(ConfigError, match="directory of TIFFs or a .tar"):
        task.write_submission(["a"], p[0], spec, None, str(tmp_path / "s.csv"), 5)
    assert not os.listdir(tmp_path)


def test_default_members_are_the_classification_ensemble():
    out = subprocess.run(["bash", "-c", f'here={ROOT}; unset MODELS; source scripts/members.sh; member_list'],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    listed = set(out.stdout.split())
    assert out.returncode == 0 and {"ef1b7", "beitl"} <= listed
    assert not listed & {"seg_demo", "kelp_b5", "cloud_unet", "demo", "small_photos"}


def _member_cfg(data, run_dir, **kw):
    return config.make_config(**dict(yaml.safe_load(MEMBER), data_dir=str(data), run_dir=str(run_dir), **kw))


def test_kill_mid_fold_then_rerun_resumes(kelp, tmp_path, log_lines):
    _, data, _, _, _ = kelp
    run_dir = tmp_path / "member"
    cfg = _member_cfg(data, run_dir, n_epochs=3, folds="0", job="train_val", verbose=0)
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    state = json.loads((run_dir / "fold_0" / "state" / "state.json").read_text())
    assert state["epochs_done"] == 1 and not (run_dir / "fold_0" / "done.json").exists()
    log_lines.clear()
    runner.run(cfg)
    assert any("fold 0: resuming after epoch 1" in line for line in log_lines)
    assert pd.read_csv(run_dir / "fold_0" / "history.csv")["epoch"].tolist() == [1, 2, 3]
    p = rundir.fold_paths(str(run_dir), 0)
    assert os.path.exists(p["done"])
    oof = rundir.load_predictions(p["oof"])
    folds = pd.read_csv(data / "tfrec" / "folds.csv", dtype={"id": str})
    assert set(oof["ids"]) == set(folds.loc[folds["fold"] == 0, "id"])
    assert oof["outputs"].dtype == np.uint8 and oof["outputs"].shape[1:] == (len(oof["ids"]), 32, 32)
    assert oof["outputs"].max() > oof["outputs"].min()  # real maps, not a constant


def test_index_ranges_fitted_for_training_are_the_ones_prediction_uses(kelp, tmp_path, monkeypatch):
    from foldnet.tasks.segmentation import task as segmentation

    _, data, run_dir, _, _ = kelp
    manifest = dict(json.loads((data / "tfrec" / "manifest.json").read_text()), dir=str(data / "tfrec"))
    # the converter's statistics (every training tile) scale CIG: nothing was fitted for training
    assert json.loads((run_dir / "index_ranges.json").read_text()) == {}
    features = segmentation.SegmentationTask().features(manifest, _member_cfg(data, tmp_path / "s"))
    assert set(features.index_stats) == {"NDVI", "NDWI", "CIG"}
    assert features.index_stats["CIG"]["q99"] == manifest["index_stats"]["stats"]["ClGreen"]["q99"]
    # an older manifest (no index_stats): the run fits ranges on the first tiles once and stores them
    manifest.pop("index_stats")
    monkeypatch.setattr(segmentation, "INDEX_FIT_TILES", 1)  # so that the tile fitted on matters
    cfg = _member_cfg(data, tmp_path / "r")
    os.makedirs(cfg["run_dir"])
    task = segmentation.SegmentationTask()
    task.features(manifest, cfg)
    assert os.listdir(cfg["run_dir"]) == []  # building datasets writes nothing
    task.prepare_run(manifest, cfg)
    stored = json.loads((tmp_path / "r" / "index_ranges.json").read_text())
    trained = task.features(manifest, cfg).index_ranges
    assert set(stored) == {"CIG"} and stored["CIG"] == list(trained["CIG"])
    # prediction on another fold set (other tiles first) in a new process: fitting again would differ ...
    other = dict(manifest, folds=[dict(f, fold=1 - f["fold"]) for f in manifest["folds"]])
    refit = segmentation.SegmentationTask().features(other, _member_cfg(data, tmp_path / "other")).index_ranges
    assert refit["CIG"] != trained["CIG"]
    # ... but the ranges stored in the run dir are read back, and a second prepare_run keeps them
    assert segmentation.SegmentationTask().features(other, cfg).index_ranges["CIG"] == trained["CIG"]
    segmentation.SegmentationTask().prepare_run(other, cfg)
    assert json.loads((tmp_path / "r" / "index_ranges.json").read_text()) == stored


def test_segmentation_notebook_runs_headless(kelp):
    """notebook/segmentation.ipynb on the trained member: one test tile's channels, probability map
    and thresholded mask drawn."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    _, data, run_dir, _, _ = kelp
    nb_path = os.path.join(ROOT, "notebook", "segmentation.ipynb")
    nb = nbformat.read(nb_path, as_version=4)
    env = {"FOLDNET_RUN_DIR": str(run_dir), "FOLDNET_FOLD": "0", "FOLDNET_TFREC": str(data / "tfrec")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": os.path.dirname(nb_path)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    rows = json.loads((run_dir / "scores.json").read_text())["rows"]
    fitted = next(r["threshold"] for r in rows if r["fold"] == "all" and r["tta"] == "mean")
    assert f"threshold {fitted:.2f}" in text and "channels: SWIR, NIR, R, G, B, QA, DEM, NDVI, NDWI, CIG" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not drawn"
