"""The task seam: registry, and a toy map task going through rundir, averaging and ensemble unchanged.

The toy task stores per-pixel probability maps as uint8 (value / 255), the
way a segmentation task may; nothing in rundir / averaging / ensemble is
edited for it: it only implements the Task members those modules call.
"""
import os

import numpy as np
import pytest

from foldnet.core.errors import ConfigError, DataError
from foldnet.ensemble import averaging
from foldnet.ensemble import cli as ensemble
from foldnet.io import rundir
from foldnet.tasks import base as tasks
from foldnet.tasks.classification import task as classification


class Spec:
    def __init__(self, name="maps-v1"):
        self.name = name

    def fingerprint(self):
        return self.name

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.name)

    def __eq__(self, other):
        return isinstance(other, Spec) and other.name == self.name


class ToyMaps(tasks.Task):
    """Implements what rundir / averaging / ensemble call; the training hooks are not used here
    (tests/tasks/test_toy_task.py trains a toy task end to end)."""

    name = "toy_maps"

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("the ensemble tests never train or predict")

    load_spec = train_dataset = eval_dataset = read_ids_targets = predict_files = tta_names = _unused
    build_model = compile_model = _unused
    spec_file = "spec.txt"
    score_keys = ("mean_abs_error",)
    default_fit_metric = "neg_mae"

    def read_spec(self, path):
        with open(path) as f:
            return Spec(f.read())

    def encode_outputs(self, outputs):
        return np.round(np.asarray(outputs) * 255).astype(np.uint8)

    def decode_outputs(self, stored):
        return stored.astype(np.float32) / 255.0

    def invalid_targets(self, targets, outputs):
        return np.zeros(len(targets), bool), "no mask"

    def score(self, targets, outputs, spec):
        return {"mean_abs_error": float(np.abs(outputs - targets).mean())}

    @property
    def fit_metrics(self):
        return {"neg_mae": lambda t, o, spec: -float(np.abs(o - t).mean())}

    def test_ids(self, template_path):
        with open(template_path) as f:
            return np.array(f.read().split())

    def fit_post(self, targets, outputs, spec, folds=None, values=None):
        # the threshold of 0.1 steps with the least OOF error of the binarised maps
        errors = {round(t, 1): float(np.abs((outputs > t) - targets).mean()) for t in np.arange(0.1, 1.0, 0.1)}
        return {"threshold": min(errors, key=lambda t: (errors[t], t))}

    def write_submission(self, ids, outputs, spec, template_path, out_path, k, post=None, values=None):
        np.save(out_path, (outputs > post["threshold"]).astype(np.uint8))
        return f"{len(ids)} masks"


TOY = tasks.register(ToyMaps())


def test_registry():
    assert tasks.get("classification") is classification.TASK
    assert tasks.for_manifest({"n_folds": 5}) is classification.TASK  # no "task": classification
    assert tasks.get("toy_maps") is TOY
    with pytest.raises(ConfigError) as e:
        tasks.get("no_such_task")
    assert "classification" in str(e.value)


def write_run(run_dir, maps_by_fold, split="test", ids=("a", "b"), targets=None):
    os.makedirs(run_dir, exist_ok=True)
    Spec().save(os.path.join(run_dir, TOY.spec_file))
    rundir.write_task(run_dir, TOY.name)
    for fold, maps in enumerate(maps_by_fold):
        d = rundir.fold_dir(run_dir, fold)
        os.makedirs(d, exist_ok=True)
        labels = np.zeros((len(ids), 2, 2), np.uint8) if targets is None else targets
        rundir.save_predictions(os.path.join(d, f"{split}.npz"), list(ids), TOY.encode_outputs(maps),
                                labels, [f"v{t}" for t in range(len(maps))], "maps-v1", f"w{fold}")


# Two views x two tiles of 2x2 maps per fold; values are multiples of 1/255 so uint8 storage is exact.
A0 = np.array([[[[0, 51], [102, 255]], [[255, 255], [0, 0]]],
               [[[0, 153], [102, 255]], [[255, 153], [0, 0]]]]) / 255.0
A1 = np.array([[[[255, 51], [0, 0]], [[0, 0], [0, 255]]]] * 2) / 255.0


def test_map_outputs_stream_through_the_average(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_run(a, [A0, A1])
    write_run(b, [A1[:, ::-1]], ids=("b", "a"))  # one fold, rows in another order
    assert rundir.read_header(os.path.join(a, "fold_0", "test.npz")).shape == (2, 2, 2, 2)
    out = averaging.average_test([a, b], ["a", "b"], weights=[3, 1], task=TOY)
    member_a = (A0.mean(0) + A1.mean(0)) / 2
    member_b = A1.mean(0)  # rows realigned by id
    np.testing.assert_allclose(out, 0.75 * member_a + 0.25 * member_b, atol=1e-6)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32


def test_map_shape_mismatch_is_named(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_run(a, [A0])
    write_run(b, [np.zeros((1, 2, 3, 3))])
    with pytest.raises(DataError) as e:
        averaging.average_test([a, b], ["a", "b"], task=TOY)
    assert "(3, 3) output shape, others have (2, 2)" in str(e.value)


def test_ensemble_picks_the_task_of_the_run_dirs(tmp_path):
    a = str(tmp_path / "a")
    write_run(a, [A0, A1])
    truth = np.array([[[0, 0], [0, 1]], [[1, 1], [0, 0]]], np.float32)
    write_run(a, [A0], split="oof", targets=truth.astype(np.uint8))
    (tmp_path / "ids.txt").write_text("b a\n")
    out = str(tmp_path / "sub.npy")
    ensemble.make_ensemble([a], out, template=str(tmp_path / "ids.txt"))
    # OOF blend A0.mean(0) = [[[0, .4], [.4, 1]], [[1, .8], [0, 0]]] vs truth: thresholds 0.1 .. 0.4
    # misclassify the two .4 pixels (float32 .4 lies just above 0.4), 0.5 .. 0.7 none: 0.5 is fitted
    md = (tmp_path / "sub.scores.md").read_text()
    assert "fitted on the ensemble's OOF: threshold = 0.5" in md
    avg = (A0.mean(0) + A1.mean(0)) / 2
    np.testing.assert_array_equal(np.load(out), (avg[[1, 0]] > 0.5).astype(np.uint8))
    probs = np.load(str(tmp_path / "sub.probs.npz"))
    assert probs["outputs"].dtype == np.uint8 and probs["outputs"].shape == (1, 2, 2, 2)
    mae = np.abs(A0.mean(0) - truth).mean()
    assert f"| {a} | 1.0000 | 2 | {mae:.4f} |" in md
