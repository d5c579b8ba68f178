"""The classification baseline the demo prints beside foldnet's score."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from foldnet.tasks.classification import baseline as cls_baseline
from foldnet.tasks.classification import evaluate
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def test_fit_predict_separates_clusters_and_zeroes_unseen_classes():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [0.0, 5.0]])
    y = np.repeat([0, 2], 20)  # class 1 never seen in training
    x = centres[y // 2] + rng.normal(0, 0.3, (40, 2))
    probs = cls_baseline.fit_predict(x, y, np.array([[5.0, 0.2], [0.1, 4.8]]), n_classes=3)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs[:, 1].max() == 0.0
    assert probs.argmax(axis=1).tolist() == [0, 2]


def test_cli_writes_a_valid_submission_scored_by_evaluate(turtle_copy, tmp_path):
    out = tmp_path / "baseline.csv"
    r = subprocess.run([sys.executable, "-m", "foldnet.tasks.classification.baseline", "--data_dir", str(turtle_copy),
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sub = pd.read_csv(out, dtype=str)
    template = pd.read_csv(os.path.join(turtle_copy, "sample_submission.csv"), dtype=str)
    assert list(sub.columns) == list(template.columns)
    assert sub.iloc[:, 0].tolist() == template.iloc[:, 0].tolist()
    # The tiny classes differ by colour and stripes: thumbnails separate most of them.
    s = evaluate.score_submission(str(out), os.path.join(turtle_copy, "answers.csv"))
    assert s["n"] == len(template) and s["map5"] > 0.5


def test_cli_refuses_to_replace_an_input(turtle_copy):
    test_csv = os.path.join(turtle_copy, "test.csv")
    before = open(test_csv).read()
    r = subprocess.run([sys.executable, "-m", "foldnet.tasks.classification.baseline", "--data_dir", str(turtle_copy),
                        "--out", test_csv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "refusing" in r.stderr
    assert open(test_csv).read() == before
