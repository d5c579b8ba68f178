"""Adding a task is adding a Task subclass and registering it: a toy regression task defined in
this file (its own record format: .npz files, no conversion) trains, predicts, scores and makes a
submission through the shared engine and ensemble, with nothing else edited for it."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from foldnet.engine import runner
from foldnet.tasks import base as tasks

SIDE = 4


class MeanSpec:
    """The toy task's spec: nothing but a name (its fingerprint)."""

    name = "mean-of-pixels-v1"

    def fingerprint(self):
        return self.name

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.name)

    def __eq__(self, other):
        return isinstance(other, MeanSpec)


def read_npz(files):
    parts = [np.load(f) for f in files]
    return (np.concatenate([p["ids"] for p in parts]).astype(str), np.concatenate([p["x"] for p in parts]),
            np.concatenate([p["y"] for p in parts]))


class MeanOfPixels(tasks.Task):
    """Regress the mean of a SIDE x SIDE image; examples are .npz files of ids, x [n, S, S, 1], y [n]."""

    name = "toy_mean_of_pixels"
    spec_file = "toy_spec.txt"
    score_keys = ("mae",)
    default_fit_metric = "neg_mae"

    def load_spec(self, manifest):
        return MeanSpec()

    def read_spec(self, path):
        return MeanSpec()

    def input_shape(self, cfg, spec):
        return (SIDE, SIDE, 1)

    def train_dataset(self, files, spec, cfg, *, seed, cache, drop_remainder, n_workers):
        import tensorflow as tf

        _, x, y = read_npz(files)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).repeat()
        return ds.batch(cfg["batch_size"], drop_remainder=True)

    def eval_dataset(self, files, spec, cfg):
        import tensorflow as tf

        _, x, y = read_npz(files)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(cfg["batch_size"])

    def read_ids_targets(self, files):
        ids, _, y = read_npz(files)
        return ids, y[:, None]

    def predict_files(self, model, files, cfg, verbose=0):
        _, x, _ = read_npz(files)
        return model.predict(x, verbose=verbose)[None]  # [views, n, 1]

    def tta_names(self, tta_number):
        return ["identity"]

    def build_model(self, cfg, spec, weights):
        import tensorflow as tf

        inputs = tf.keras.Input((SIDE, SIDE, 1))
        return tf.keras.Model(inputs, tf.keras.layers.Dense(1, kernel_initializer="zeros")(tf.keras.layers.Flatten()(inputs)))

    def compile_model(self, model, cfg, spec, optimizer):
        model.compile(optimizer=optimizer, loss="mse")

    def score(self, targets, outputs, spec):
        return {"mae": float(np.abs(np.asarray(outputs) - np.asarray(targets)).mean())}

    @property
    def fit_metrics(self):
        return {"neg_mae": lambda t, o, spec: -float(np.abs(o - t).mean())}

    def invalid_targets(self, targets, outputs):
        return ~np.isfinite(np.asarray(targets)).all(axis=1), "non-finite targets"

    def default_template(self, data_dir, tfrec_dir):
        return os.path.join(tfrec_dir, "test_ids.csv")

    def test_ids(self, template_path):
        return pd.read_csv(template_path)["id"].astype(str).to_numpy()

    def write_submission(self, ids, outputs, spec, template_path, out_path, k, post=None, values=None):
        pd.DataFrame({"id": ids, "mean": np.asarray(outputs)[:, 0]}).to_csv(out_path, index=False)
        return f"{len(ids)} means"


TOY = tasks.register(MeanOfPixels())


def write_records(root, n_folds=2, per_fold=96, n_test=6, seed=0):
    """A TFRecord-directory stand-in: manifest.json, folds.csv and one .npz per fold and for the test set."""
    rng = np.random.default_rng(seed)
    os.makedirs(root)
    folds, rows = [], []

    def part(name, ids):
        x = rng.uniform(0, 1, (len(ids), SIDE, SIDE, 1)).astype(np.float32)
        np.savez(os.path.join(root, name), ids=np.array(ids), x=x, y=x.mean(axis=(1, 2, 3)))
        return {"n_examples": len(ids), "files": [name]}

    for k in range(n_folds):
        ids = [f"f{k}_{i}" for i in range(per_fold)]
        folds.append({"fold": k, **part(f"fold{k}.npz", ids)})
        rows += [{"id": i, "fold": k} for i in ids]
    test_ids = [f"t{i}" for i in range(n_test)]
    manifest = {"format_version": 1, "task": TOY.name, "n_folds": n_folds, "folds_csv": "folds.csv",
                "folds": folds, "test": part("test.npz", test_ids)}
    pd.DataFrame(rows).to_csv(os.path.join(root, "folds.csv"), index=False)
    pd.DataFrame({"id": test_ids}).to_csv(os.path.join(root, "test_ids.csv"), index=False)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def test_a_task_registered_here_trains_scores_and_submits(tmp_path):
    tfrec, run_dir = str(tmp_path / "records"), str(tmp_path / "run")
    write_records(tfrec)
    rc = runner.run({"tfrec_dir": tfrec, "data_dir": str(tmp_path), "run_dir": run_dir, "job": "train_val_test_score_subm",
                     "n_epochs": 12, "steps_per_epoch": 20, "batch_size": 8, "lr": 0.02, "optimizer": "adam", "early_stop_patience": 0,
                     "verbose": 0, "monitor": "val_loss"})
    assert rc == 0
    with open(os.path.join(run_dir, "task.json")) as f:
        assert json.load(f)["task"] == TOY.name
    for fold in (0, 1):
        oof = np.load(os.path.join(run_dir, f"fold_{fold}", "oof.npz"))
        assert oof["outputs"].shape == (1, 96, 1) and np.isfinite(oof["outputs"]).all()
    with open(os.path.join(run_dir, "scores.json")) as f:
        rows = json.load(f)["rows"]
    # the targets are means of 16 U(0, 1) pixels: predicting 0.5 everywhere has an MAE of ~0.06
    assert [r["fold"] for r in rows] == ["0", "1", "all"] and all(r["mae"] < 0.04 for r in rows), rows
    sub = pd.read_csv(os.path.join(run_dir, TOY.submission_name))
    assert list(sub["id"]) == [f"t{i}" for i in range(6)] and np.isfinite(sub["mean"]).all()


def test_an_abstract_hook_left_out_is_refused_at_definition():
    class Incomplete(tasks.Task):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
