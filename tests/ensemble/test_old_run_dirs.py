"""Run directories written before the task seam (fixtures/old_runs, made by commit 116d583's code) still work.

fixtures/make_old_runs.py wrote two members (label_map.json, fold_K/{oof,test}.npz,
no task.json); the old ensemble CLI and score job wrote ``expected/``. The current
code must read them, ensemble them to the same submission and probabilities, and
score them alike.
"""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from foldnet.ensemble import cli as ensemble
from foldnet.ensemble import scores
from foldnet.io import rundir
from foldnet.tasks.classification.labels import LabelMap
from foldnet.tasks.classification.task import TASK as CLASSIFICATION
from tests.paths import FIXTURES

FIXTURE = os.path.join(FIXTURES, "old_runs")


@pytest.fixture
def old_runs(tmp_path):
    d = tmp_path / "old_runs"
    shutil.copytree(FIXTURE, d)
    return d


def test_old_run_dirs_ensemble_to_the_same_submission(old_runs, monkeypatch):
    monkeypatch.chdir(old_runs)  # the old CLI ran here, with these relative paths
    out = old_runs / "new" / "submission.csv"
    os.makedirs(out.parent)
    assert rundir.read_task("m0") == "classification"
    rc = ensemble.main(["--runs", "m0", "m1", "--template", "sample_submission.csv", "--fit_weights",
                        "--submission", "new/submission.csv"])
    assert rc == 0
    expected = old_runs / "expected"
    assert out.read_text() == (expected / "submission.csv").read_text()
    new, old = np.load(old_runs / "new" / "submission.probs.npz"), np.load(expected / "submission.probs.npz")
    assert sorted(new.files) == sorted(old.files)
    for key in old.files:
        np.testing.assert_allclose(new[key], old[key], rtol=1e-6) if new[key].dtype.kind == "f" \
            else np.testing.assert_array_equal(new[key], old[key])
    # the fitted weights moved away from equal (0.75 / 0.25), as the old code fitted them
    np.testing.assert_allclose(new["member_weights"], [0.75, 0.25])
    assert (old_runs / "new" / "submission.scores.md").read_text() == \
        (expected / "submission.scores.md").read_text().replace("expected/", "new/")


def test_old_run_dir_scores_alike(old_runs):
    run = str(old_runs / "m0")
    scores.score_run(run, LabelMap.load(os.path.join(run, "label_map.json")), task=CLASSIFICATION)
    with open(os.path.join(run, "scores.json")) as f:
        new = json.load(f)
    with open(old_runs / "expected" / "m0_scores.json") as f:
        old = json.load(f)
    assert new["folds"] == old["folds"] and len(new["rows"]) == len(old["rows"]) == 9
    for a, b in zip(new["rows"], old["rows"]):
        assert a == pytest.approx(b)


def test_old_prediction_files_are_current_and_readable(old_runs):
    path = str(old_runs / "m1" / "fold_1" / "oof.npz")
    head = rundir.read_header(path)
    assert head.shape == (2, 8, 7) and head.tta_names == ["identity", "flip_lr"]
    fp = LabelMap.load(str(old_runs / "m1" / "label_map.json")).fingerprint()
    assert rundir.is_current(path, "w11", fp, 2, 8)
    assert not rundir.is_current(path, "w10", fp, 2, 8)      # another checkpoint
    assert not rundir.is_current(path, "w11", fp, 3, 8)      # another TTA count
    assert not rundir.is_current(path, "w11", "other", 2, 8)  # another label map
    rows = pd.read_csv(old_runs / "sample_submission.csv")
    assert len(rows) == 6
