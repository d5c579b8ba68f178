"""The temporal regression task end to end: synthetic BioMassters chips -> create_tfrecords.py ->
run_training.sh (run.py over every fold) -> run_inference.sh -> float32 TIFF submission; resume."""
import json
import os
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
from foldnet.tasks import base as tasks
from foldnet.tasks.temporal import demo_data as temporal_demo_data
from foldnet.tasks.temporal import metrics as temporal_metrics
from tests.engine.test_training import KillAfterEpoch, Killer
from tests.tasks.segmentation.test_segmentation import convert_and_train, run

MEMBER = """arch: tiny
weights: none
arch_options: {widths: [8, 16, 16], decoder_filters: [16, 8, 8], output_scale: 100.0}
temporal_input: all
month_dropout: 0.2
target_cap: 400
batch_size: 4
lr: 0.003
optimizer: adamw
weight_decay: 0.01
n_epochs: 2
early_stop_patience: 0
monitor: val_chip_rmse
aug_number: 3
tta_number: 1
verbose: 2
"""


@pytest.fixture(scope="module")
def biomass(tmp_path_factory):
    root = tmp_path_factory.mktemp("bio")
    data = root / "bio"
    temporal_demo_data.build_biomass_dataset(str(data), n_train=12, n_test=3, size=32, seed=5)
    return convert_and_train(root, data, MEMBER, "bio_tiny")


def test_train_val_test_score_writes_maps_and_scores(biomass):
    root, data, run_dir, _, out = biomass
    assert out.count("done, best val_chip_rmse") == 2
    assert rundir.read_task(str(run_dir)) == "temporal_regression"
    folds = pd.read_csv(data / "tfrec" / "folds.csv", dtype={"id": str})
    n_test = 3
    task = tasks.get("temporal_regression")
    for fold in (0, 1):
        p = rundir.fold_paths(str(run_dir), fold)
        assert os.path.getsize(p["best"]) > 0 and os.path.exists(p["done"])
        oof = rundir.load_predictions(p["oof"])
        ids = set(folds.loc[folds["fold"] == fold, "id"])
        assert set(oof["ids"]) == ids
        assert oof["outputs"].dtype == np.float16 and oof["outputs"].shape == (2, len(ids), 32, 32)
        assert [str(t) for t in oof["tta_names"]] == ["identity", "flip_lr"]
        assert oof["labels"].dtype == np.float32 and oof["labels"].shape == (len(ids), 32, 32)
        for i, chip in enumerate(oof["ids"]):  # the stored truth is the layout's target map
            np.testing.assert_array_equal(oof["labels"][i], tifffile.imread(data / "train_agbm" / f"{chip}_agbm.tif"))
        assert oof["outputs"].min() >= 0 and np.ptp(oof["outputs"].astype(np.float32)) > 0  # softplus, real maps
        test = rundir.load_predictions(p["test"])
        assert test["outputs"].dtype == np.float16 and test["outputs"].shape == (2, n_test, 32, 32)
    # scores.json = temporal_metrics on the stored OOF maps (TTA mean, all folds)
    ids, truth, maps = rundir.load_oof(str(run_dir), task)
    assert maps.dtype == np.float32 and maps.shape == (len(folds), 32, 32)
    rows = json.loads((run_dir / "scores.json").read_text())["rows"]
    row = next(r for r in rows if r["fold"] == "all" and r["tta"] == "mean")
    assert row["n"] == len(folds)
    assert row["rmse"] == pytest.approx(temporal_metrics.chip_rmse(truth, maps), rel=1e-9)
    assert row["pooled_rmse"] == pytest.approx(temporal_metrics.pooled_rmse(truth, maps), rel=1e-9)
    assert row["rmse_capped"] == pytest.approx(temporal_metrics.chip_rmse(truth, maps, cap=400), rel=1e-9)
    # by hand for one chip
    t0, m0 = truth[0], maps[0]
    known = t0 >= 0
    manual = [np.sqrt(np.mean((maps[i] - truth[i])[truth[i] >= 0] ** 2)) for i in range(len(truth))]
    assert row["rmse"] == pytest.approx(np.mean(manual), rel=1e-6) and known.any() and np.isfinite(m0).all()


def test_inference_writes_float32_tiffs_of_the_fold_tta_mean(biomass):
    root, data, run_dir, env, _ = biomass
    sub = root / "sub.tar"
    run(["bash", "run_inference.sh"], dict(env, SUBMISSION=str(sub)))
    test_ids = sorted(f[:-len("_agbm.tif")] for f in os.listdir(data / "answers"))
    with tarfile.open(sub) as tar:
        assert sorted(tar.getnames()) == sorted(f"{i}_agbm.tif" for i in test_ids)
        got = {name[:-len("_agbm.tif")]: tifffile.imread(tar.extractfile(name)) for name in tar.getnames()}
    task = tasks.get("temporal_regression")
    mean = {}
    for _, path in rundir.prediction_files(str(run_dir), "test"):
        t = rundir.load_predictions(path)
        for chip, maps in zip(t["ids"], task.decode_outputs(t["outputs"]).mean(axis=0) / 2):
            mean[str(chip)] = mean.get(str(chip), 0) + maps
    for chip in test_ids:
        assert got[chip].dtype == np.float32 and got[chip].shape == (32, 32)
        np.testing.assert_allclose(got[chip], mean[chip], rtol=1e-5, atol=1e-4)


def test_bad_temporal_settings_are_named_before_any_model(biomass, tmp_path):
    _, data, _, _, _ = biomass
    # a UNet option of the wrong type is refused when the settings are built (shared by both map tasks)
    with pytest.raises(ConfigError, match=r"arch_options.decoder_filters=\['wide'\]"):
        config.make_config(arch="tiny", arch_options={"decoder_filters": ["wide"]})
    cfg = config.make_config(data_dir=str(data), run_dir=str(tmp_path / "r"), arch="tiny", monitor="val_dice",
                             loss="mae", temporal_input="month:99", nonneg="abs", tta_number=9)
    with pytest.raises(ConfigError) as e:
        runner.run(cfg)
    text = str(e.value)
    for needle in ("val_dice", "'mae'", "month:99", "'abs'", "tta_number 9"):
        assert needle in text, needle
    assert not os.path.exists(tmp_path / "r") or not [n for n in os.listdir(tmp_path / "r") if not n.startswith(".")]


def test_float16_maps_round_trip_and_csv_submission_refused(tmp_path):
    task = tasks.get("temporal_regression")
    maps = np.array([[[[0.0, 27.3], [399.9, 1e6]]]], np.float32)
    stored = task.encode_outputs(maps)
    assert stored.dtype == np.float16 and stored.nbytes == maps.nbytes // 2
    back = task.decode_outputs(stored)
    assert back.dtype == np.float32 and back[0, 0, 1, 1] == 65504.0  # clipped to float16's range
    np.testing.assert_allclose(back[..., :1, :], maps[..., :1, :], rtol=2 ** -11)
    assert abs(back[0, 0, 1, 0] - 399.9) <= 0.125
    with pytest.raises(ConfigError, match="directory of TIFFs or a .tar"):
        task.write_submission(["a"], maps[0], None, None, str(tmp_path / "s.csv"), 1)
    assert not os.listdir(tmp_path)


def test_kill_mid_fold_then_rerun_resumes(biomass, tmp_path, log_lines):
    _, data, _, _, _ = biomass
    run_dir = tmp_path / "member"
    cfg = config.make_config(**dict(yaml.safe_load(MEMBER), data_dir=str(data), run_dir=str(run_dir), n_epochs=3,
                                    folds="0", job="train_val", verbose=0))
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    state = json.loads((run_dir / "fold_0" / "state" / "state.json").read_text())
    assert state["epochs_done"] == 1 and not (run_dir / "fold_0" / "done.json").exists()
    log_lines.clear()
    runner.run(cfg)
    assert any("fold 0: resuming after epoch 1" in line for line in log_lines)
    assert pd.read_csv(run_dir / "fold_0" / "history.csv")["epoch"].tolist() == [1, 2, 3]
    oof = rundir.load_predictions(rundir.fold_paths(str(run_dir), 0)["oof"])
    folds = pd.read_csv(data / "tfrec" / "folds.csv", dtype={"id": str})
    assert set(oof["ids"]) == set(folds.loc[folds["fold"] == 0, "id"])
    assert oof["outputs"].dtype == np.float16 and np.ptp(oof["outputs"].astype(np.float32)) > 0


def test_streaming_scorer_equals_the_scores_of_all_rows():
    task = tasks.get("temporal_regression")
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 500, (7, 6, 5)).astype(np.float32)
    targets[rng.random(targets.shape) < 0.2] = -1.0
    targets[3] = -1.0                                   # a chip without a known pixel
    targets[4][targets[4] <= 400] = 450.0               # a chip with no pixel under the cap
    outputs = (targets + rng.normal(0, 30, targets.shape)).astype(np.float32)
    whole = task.score(targets, outputs, None)
    a, b = task.scorer(None), task.scorer(None)
    a.add(targets[:2], outputs[:2]).add(targets[2:5], outputs[2:5])
    b.add(targets[5:], outputs[5:])
    got = a.merge(b).scores()
    assert set(got) == set(task.score_keys) and all(np.isfinite(v) for v in got.values())
    for key in task.score_keys:
        assert got[key] == pytest.approx(whole[key], rel=1e-12), key
    known = targets >= 0
    err = outputs.astype(np.float64) - targets
    per_chip = [np.sqrt(np.mean(err[i][known[i]] ** 2)) for i in range(7) if known[i].any()]
    assert got["rmse"] == pytest.approx(np.mean(per_chip), rel=1e-9) and len(per_chip) == 6
    assert a.metric("neg_rmse") == -got["rmse"] and a.post() is None


def test_biomass_notebook_runs_headless(biomass):
    """notebook/biomass.ipynb on a trained member: months as RGB, attention weights per month, map vs target."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    from tests.paths import ROOT

    _, data, run_dir, _, _ = biomass
    nb_path = os.path.join(ROOT, "notebook", "biomass.ipynb")
    nb = nbformat.read(nb_path, as_version=4)
    env = {"FOLDNET_RUN_DIR": str(run_dir), "FOLDNET_FOLD": "1", "FOLDNET_TFREC": str(data / "tfrec")}
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
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # months, attention, maps
    # the attention weights of a pixel sum to 1 over the months
    assert float(text.split("sum over months (1 per pixel): ")[1].split()[0]) == pytest.approx(1.0, abs=1e-4)
    per_month = json.loads(text.split("at the first tap: ")[1].splitlines()[0])
    assert len(per_month) == 12 and sum(per_month) == pytest.approx(1.0, abs=12 * 5e-4)  # printed to 3 decimals
    rmse = float(text.split("RMSE of this chip: ")[1].split()[0])
    assert 0 < rmse < 400  # a finite error in Mg/ha for the held-out chip
