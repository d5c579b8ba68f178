"""run.py end to end on tiny TFRecords: train, resume after a kill, predict, score."""
import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest

import foldnet  # noqa: F401
from foldnet.engine import config, runner, train
from foldnet.tasks.classification import metrics
from foldnet.tasks.classification.labels import LabelMap
from tests.paths import ROOT as ROOT_DIR

N_FOLDS = 3


def tiny_cfg(data_dir, tfrec_dir, run_dir, **kw):
    base = dict(arch="tiny_cnn", dim=16, batch_size=8, lr=3e-3, n_epochs=3, data_dir=data_dir,
                tfrec_dir=tfrec_dir, run_dir=str(run_dir), job="train_val_test_score", tta_number=2,
                aug_number=9, aug_probability=0.5, verbose=0, early_stop_patience=0, seed=1)
    base.update(kw)
    return config.make_config(**base)


class KillAfterEpoch(Exception):
    pass


class Killer(train.keras.callbacks.Callback):
    """Raises at the end of epoch ``n`` (1-based), after foldnet saved its state: a kill mid-fold."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            raise KillAfterEpoch(f"killed after epoch {self.n}")


def _folds(tfrec):
    return pd.read_csv(os.path.join(tfrec, "folds.csv"), dtype={"id": str})


def check_fold_outputs(run_dir, fold, tfrec, data_dir, n_epochs, tta_number, monitor="val_loss"):
    d = os.path.join(run_dir, f"fold_{fold}")
    done = json.load(open(os.path.join(d, "done.json")))
    hist = pd.read_csv(os.path.join(d, "history.csv"))
    # one row per epoch, each epoch once
    assert hist["epoch"].tolist() == list(range(1, n_epochs + 1))
    assert done["epochs"] == n_epochs
    # the best checkpoint is the best epoch of the history
    best_row = hist.loc[hist[monitor].idxmin()]
    assert done["best_epoch"] == int(best_row["epoch"])
    assert done["best_value"] == pytest.approx(float(best_row[monitor]), rel=1e-5)
    with h5py.File(os.path.join(d, "best.h5"), "r") as f:
        assert f.attrs["foldnet_epoch"] + 1 == done["best_epoch"]
    with open(os.path.join(d, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(d, "state"))
    lm = LabelMap.load(os.path.join(tfrec, "label_map.json"))
    folds = _folds(tfrec)
    for split, expected_ids in (("oof", folds[folds.fold == fold]["id"]),
                                ("test", pd.read_csv(os.path.join(data_dir, "test.csv"), dtype=str)["image_id"])):
        with np.load(os.path.join(d, f"{split}.npz")) as z:
            assert sorted(z["ids"].tolist()) == sorted(expected_ids.tolist())
            assert z["outputs"].shape == (tta_number + 1, len(expected_ids), lm.n_classes)
            np.testing.assert_allclose(z["outputs"].sum(-1), 1.0, rtol=1e-4)
            assert str(z["label_map_fingerprint"]) == lm.fingerprint()
            assert z["tta_names"][0] == "identity"
            if split == "oof":
                by_id = dict(zip(folds["id"], folds["label"]))
                assert lm.decode(z["labels"]) == [by_id[i] for i in z["ids"]]
            else:
                assert (z["labels"] == -1).all()


def test_train_predict_score_end_to_end(tiny_turtle_dir, tiny_tfrec, tmp_path):
    run_dir = tmp_path / "member"
    # 6 epochs: at 4, top-1 on these 60 images varied 0.43-0.58 between runs (flaky against 0.5)
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=6)
    assert runner.run(cfg) == 0
    for fold in range(N_FOLDS):
        check_fold_outputs(str(run_dir), fold, tiny_tfrec, tiny_turtle_dir, 6, 2)
    # scores.json holds what the metrics give on the saved OOF predictions
    scores = json.load(open(run_dir / "scores.json"))
    lm = LabelMap.load(os.path.join(tiny_tfrec, "label_map.json"))
    with np.load(run_dir / "fold_1" / "oof.npz") as z:
        expected = metrics.score_all(z["labels"], z["outputs"].mean(0), lm)
    row = next(r for r in scores["rows"] if r["fold"] == "1" and r["tta"] == "mean")
    for k, v in expected.items():
        assert row[k] == pytest.approx(v)
    all_mean = next(r for r in scores["rows"] if r["fold"] == "all" and r["tta"] == "mean")
    assert all_mean["n"] == len(_folds(tiny_tfrec))
    # 6 well separated classes: a tiny CNN beats chance (1/6) by far in 6 epochs
    assert all_mean["top1"] > 0.5
    md = (run_dir / "scores.md").read_text()
    assert "| fold | tta |" in md and "map5_new" in md
    assert os.path.exists(run_dir / "config.yaml") and os.path.exists(run_dir / "label_map.json")


def test_rerun_skips_finished_folds_and_current_predictions(tiny_turtle_dir, tiny_tfrec, tmp_path, log_lines):
    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=1, folds="0", job="train_val_test")
    runner.run(cfg)
    files = [run_dir / "fold_0" / n for n in ("best.h5", "oof.npz", "test.npz", "done.json")]
    before = [f.stat().st_mtime_ns for f in files]
    lines = log_lines
    lines.clear()  # only what follows
    runner.run(cfg)
    assert [f.stat().st_mtime_ns for f in files] == before
    assert any("already trained" in line for line in lines)
    assert sum("is current" in line for line in lines) == 2
    # a changed TTA count makes the predictions stale: they are redone, training is not
    runner.run(dict(cfg, tta_number=1))
    assert files[0].stat().st_mtime_ns == before[0]
    with np.load(files[1]) as z:
        assert z["outputs"].shape[0] == 2


def test_kill_mid_fold_then_rerun_resumes(tiny_turtle_dir, tiny_tfrec, tmp_path, log_lines):
    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=4, folds="0,1", job="train_val_test")
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(2)])
    state = json.load(open(run_dir / "fold_0" / "state" / "state.json"))
    assert state["epochs_done"] == 2 and len(state["history"]) == 2
    assert not (run_dir / "fold_0" / "done.json").exists()
    best_before = train.read_best(str(run_dir / "fold_0" / "best.h5"))
    assert best_before is not None and best_before[0] in (0, 1)

    lines = log_lines
    lines.clear()  # only what follows
    runner.run(cfg)
    assert any("fold 0: resuming after epoch 2" in line for line in lines)
    for fold in (0, 1):
        check_fold_outputs(str(run_dir), fold, tiny_tfrec, tiny_turtle_dir, 4, 2)
    hist = pd.read_csv(run_dir / "fold_0" / "history.csv")
    # the resumed epochs continued from the saved optimizer: its step counter kept counting
    assert hist["epoch"].tolist() == [1, 2, 3, 4]


def test_best_value_survives_resume(tiny_turtle_dir, tiny_tfrec, tmp_path):
    """The tf-keras trap: after a resume, a worse epoch must not replace a better best checkpoint."""
    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=3, folds="0", job="train")
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    best = run_dir / "fold_0" / "best.h5"
    # pretend epoch 1 was excellent: any real epoch afterwards is worse
    with h5py.File(best, "a") as f:
        f.attrs["foldnet_value"] = -1.0
    runner.run(cfg)
    assert train.read_best(str(best)) == (0, -1.0)
    assert json.load(open(run_dir / "fold_0" / "done.json"))["best_epoch"] == 1


def test_plateau_reduces_learning_rate_and_early_stop(tiny_turtle_dir, tiny_tfrec, tmp_path):
    run_dir = tmp_path / "member"
    # min_delta so large that no epoch after the first counts as an improvement
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=6, folds="0", job="train",
                   min_delta=100.0, lr_patience=1, lr_factor=0.5, early_stop_patience=3, lr=1e-3)
    runner.run(cfg)
    hist = pd.read_csv(run_dir / "fold_0" / "history.csv")
    done = json.load(open(run_dir / "fold_0" / "done.json"))
    assert done["stopped_early"] and done["epochs"] == 4 and done["best_epoch"] == 1
    # lr column is the rate used in each epoch: halved after every epoch without improvement
    np.testing.assert_allclose(hist["lr"].tolist(), [1e-3, 1e-3, 5e-4, 2.5e-4], rtol=1e-5)


def test_predict_job_on_image_files(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys, log_lines):
    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=2, job="train", folds="0,1")
    runner.run(cfg)
    test_ids = pd.read_csv(os.path.join(tiny_turtle_dir, "test.csv"), dtype=str)["image_id"][:2]
    images = [os.path.join(tiny_turtle_dir, "images", f"{i}.JPG") for i in test_ids]
    lines = log_lines
    lines.clear()  # only what follows
    rows = runner.run(dict(cfg, job="predict", images=images, tta_number=1))
    assert rows == 0
    lm = LabelMap.load(os.path.join(tiny_tfrec, "label_map.json"))
    ranked = [line for line in lines if line.strip()[:2] in ("1.", "2.", "3.", "4.", "5.")]
    assert len(ranked) == 10  # 5 per image
    assert "2 checkpoint(s), 2 view(s) per image" in lines[0]
    for line in ranked:
        label = line.split()[1]
        assert label in lm.original or label == lm.new_label
    # an unreadable image: one clear error naming it (and the CLI exits 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    rc = runner.main(["--job", "predict", "--run_dir", str(run_dir), "--arch", "tiny_cnn", "--dim", "16",
                      "--images", images[0], str(bad), str(tmp_path / "missing.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.jpg" in err and "missing.png" in err


def test_notebook_runs_headless(tiny_turtle_dir, tiny_tfrec, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    run_dir = tmp_path / "member"
    runner.run(tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=1, job="train", folds="0"))
    image = sorted((p for p in os.listdir(os.path.join(tiny_turtle_dir, "images"))))[0]
    nb_path = os.path.join(ROOT_DIR, "notebook", "demo.ipynb")
    nb = nbformat.read(nb_path, as_version=4)
    env = {"FOLDNET_RUN_DIR": str(run_dir), "FOLDNET_FOLD": "0",
           "FOLDNET_IMAGE": os.path.join(tiny_turtle_dir, "images", image)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": os.path.dirname(nb_path)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "1. " in text and "5. " in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not drawn"


def test_mixed_precision_trains_and_predicts_float32(tiny_turtle_dir, tiny_tfrec, tmp_path):
    import tensorflow as tf

    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=1, folds="0", job="train_val",
                   mixed_precision="mixed_bfloat16", tta_number=0)
    try:
        runner.run(cfg)
        assert tf.keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        runner.run(dict(cfg, job="val", mixed_precision="none"))  # also resets the global policy
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    with np.load(run_dir / "fold_0" / "oof.npz") as z:
        assert z["outputs"].dtype == np.float32
        np.testing.assert_allclose(z["outputs"].sum(-1), 1.0, rtol=1e-3)


def test_resume_with_other_model_settings_is_refused(tiny_turtle_dir, tiny_tfrec, tmp_path, log_lines):
    from foldnet.core.errors import ConfigError

    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=2, folds="0", job="train")
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    with pytest.raises(ConfigError) as e:
        runner.run(dict(cfg, dim=24))
    assert "dim: 16 then, 24 now" in str(e.value) and "--overwrite" in str(e.value)
    # the same settings resume; a finished fold run with other settings is skipped with a warning
    runner.run(cfg)
    lines = log_lines
    lines.clear()  # only what follows
    runner.run(dict(cfg, dim=24))
    assert any("warning: it was trained with other dim (dim=16)" in line for line in lines)


def test_augmentation_in_the_model_trains_resumes_and_predicts(tiny_turtle_dir, tiny_tfrec, tmp_path, monkeypatch):
    from foldnet.models import backbones as models
    from foldnet.tasks.classification import data

    calls = []
    original = data.train_dataset

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "train_dataset", recording)
    built = []
    build = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: built.append(k.get("augment_layer")) or build(*a, **k))
    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=2, folds="0", job="train_val_test", tta_number=1,
                   aug_in_model=True, aug_crop_scale=0.2, aug_photometric=0.5)
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    runner.run(cfg)  # resumes the fold whose model holds the augmentation layer
    # the pipeline did not augment; the model's first layer did, with the config's settings
    args, kwargs = calls[-1]
    assert len(args) == 4 and not any(v for k, v in kwargs.items() if k.startswith("aug_"))
    layer = [b for b in built if b is not None][-1]
    assert layer.settings == {"aug_number": 9, "aug_probability": 0.5, "crop_scale": 0.2, "rotate_degrees": 0.0}
    assert layer.photometric_strength == 0.5
    check_fold_outputs(str(run_dir), 0, tiny_tfrec, tiny_turtle_dir, n_epochs=2, tta_number=1)
    from foldnet.tasks.classification import task as classification

    # best.h5 loads into the model with or without the layer (no weights); at inference both agree
    x = np.random.RandomState(0).rand(4, 16, 16, 3).astype("float32")
    outs = []
    for layer_ in (None, classification.augment_layer(cfg.aug)):
        model = build("tiny_cnn", n_classes=6, dim=16, augment_layer=layer_)
        model.load_weights(str(run_dir / "fold_0" / "best.h5"))
        outs.append(model.predict(x, verbose=0))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    with np.load(run_dir / "fold_0" / "oof.npz") as z:
        assert z["outputs"].shape[0] == 2 and np.isfinite(z["outputs"]).all()


def test_full_job_trains_on_every_fold_resumes_and_joins_the_ensemble(tiny_turtle_dir, tiny_tfrec, tmp_path,
                                                                        log_lines):
    """Job full: one model on all folds in fold_all/, fixed epochs, killed and resumed like a fold."""
    from foldnet.ensemble import cli as ensemble
    from foldnet.io import rundir

    run_dir = tmp_path / "member"
    runner.run(tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=2, folds="0", job="train_test"))
    fold0_best = json.load(open(run_dir / "fold_0" / "done.json"))["best_epoch"]
    # full_epochs 0: the mean best epoch of the finished folds (only fold 0 here)
    auto = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=9)
    assert train.full_epochs(auto, str(run_dir), N_FOLDS)[0] == fold0_best
    assert train.full_epochs(auto.replace(full_epochs=4), str(run_dir), N_FOLDS)[0] == 4

    cfg = tiny_cfg(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=9, full_epochs=3, folds="0",
                   job="full_test")
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg, extra_callbacks=[Killer(1)])
    full = run_dir / "fold_all"
    state = json.load(open(full / "state" / "state.json"))
    assert state["epochs_done"] == 1 and state["settings"]["full_epochs"] == 3
    assert not (full / "done.json").exists()
    log_lines.clear()
    runner.run(cfg)
    assert any("fold all: resuming after epoch 1" in line for line in log_lines)
    # trained on every example of every fold, nothing held out
    n_all = len(_folds(tiny_tfrec))
    assert any(f"fold all: {n_all} training images" in line and " 0 validation" in line for line in log_lines)
    done = json.load(open(full / "done.json"))
    hist = pd.read_csv(full / "history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3] and not any(c.startswith("val_") for c in hist.columns)
    # no validation: best.h5 holds the last epoch's weights
    assert done["epochs"] == 3 and done["best_epoch"] == 3 and done["monitor"] == "loss"
    assert train.read_best(str(full / "best.h5"))[0] == 2
    assert not (full / "state").exists() and not (full / "oof.npz").exists()
    with np.load(full / "test.npz") as z:
        n_test = len(pd.read_csv(os.path.join(tiny_turtle_dir, "test.csv")))
        assert z["outputs"].shape[:2] == (3, n_test)
        full_test = z["outputs"].mean(0)
    # a rerun skips it like a finished fold
    log_lines.clear()
    runner.run(cfg)
    assert any("fold all: already trained" in line for line in log_lines)

    lm = LabelMap.load(os.path.join(tiny_tfrec, "label_map.json"))
    for mode in ("only", "with"):
        sub = tmp_path / mode / "submission.csv"
        ensemble.make_ensemble([str(run_dir)], str(sub), os.path.join(tiny_turtle_dir, "sample_submission.csv"),
                               tfrec_dir=tiny_tfrec, full=mode)
        with np.load(tmp_path / mode / "submission.probs.npz") as z:
            ids = z["ids"].tolist()
            got = z["outputs"][0]
        fold0 = rundir.read_arrays(str(run_dir / "fold_0" / "test.npz"), ["ids", "outputs"])
        with np.load(full / "test.npz") as z:
            order = [z["ids"].tolist().index(i) for i in ids]
        f0_order = [fold0[0].tolist().index(i) for i in ids]
        expected = full_test[order] if mode == "only" else (full_test[order] + fold0[1].mean(0)[f0_order]) / 2
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert lm.n_classes == got.shape[1]

    # the fine-tune of the 1st place of The BioMassters: start from fold 0's best weights at another lr
    tune = cfg.replace(full_from=0, full_lr=1e-4, full_epochs=1, overwrite=True, job="full")
    log_lines.clear()
    runner.run(tune)
    fold0 = str(run_dir / "fold_0" / "best.h5")
    assert any(f"lr 0.0001, from {fold0}" in line for line in log_lines)
    done = json.load(open(full / "done.json"))
    assert done["epochs"] == 1 and done["settings"]["weights"] == fold0
    assert not (run_dir / "fold_1").exists()  # the folds were not retrained
    from foldnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="full_from 1: fold 1 .* is not trained"):
        runner.run(tune.replace(full_from=1))
