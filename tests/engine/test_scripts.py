"""The root shell scripts end to end: run_training.sh then run_inference.sh on tiny data."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd

import foldnet  # noqa: F401
from foldnet.tasks.classification import evaluate
from foldnet.tasks.classification.labels import LabelMap
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR
MEMBER = """arch: tiny_cnn
dim: 16
batch_size: 8
lr: 0.003
n_epochs: {epochs}
early_stop_patience: 0
aug_number: 2
aug_probability: 0.5
tta_number: {tta}
seed: {seed}
verbose: 2
"""


def run_script(name, env):
    out = subprocess.run(["bash", os.path.join(ROOT, name)], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable, **env), timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "INFO:foldnet" not in out.stderr  # foldnet's lines are printed once, on stdout
    return out.stdout


def test_training_then_inference_scripts(tiny_turtle_dir, tiny_tfrec, tmp_path):
    members = []
    for i, (epochs, tta) in enumerate([(3, 0), (2, 1)]):
        p = tmp_path / f"m{i}.yaml"
        p.write_text(MEMBER.format(epochs=epochs, tta=tta, seed=i))
        members.append(str(p))
    env = {"DATA_DIR": tiny_turtle_dir, "TFREC_DIR": tiny_tfrec, "MODELS": " ".join(members),
           "RUNS_DIR": str(tmp_path / "runs")}
    out = run_script("run_training.sh", env)
    assert out.count("fold 2: done") == 2 and "Epoch 3/3" in out  # per-epoch progress lines
    for m in ("m0", "m1"):
        assert os.path.exists(tmp_path / "runs" / m / "scores.md")

    sub_path = tmp_path / "sub" / "submission.csv"
    out = run_script("run_inference.sh", dict(env, SUBMISSION=str(sub_path), FIT_WEIGHTS="1"))
    assert "is current; not predicted again" in out  # training already predicted test
    assert "## Out-of-fold scores" in out and "wrote " + str(sub_path) in out  # the ensemble CLI's report
    sub = pd.read_csv(sub_path, dtype=str)
    template = pd.read_csv(os.path.join(tiny_turtle_dir, "sample_submission.csv"), dtype=str)
    assert sub["image_id"].tolist() == template["image_id"].tolist()
    assert list(sub.columns) == list(template.columns)
    lm = LabelMap.load(os.path.join(tiny_tfrec, "label_map.json"))
    preds = sub[[f"prediction{k}" for k in range(1, 6)]].values
    for row in preds:
        assert len(set(row)) == 5
        assert all(p in lm.original or p == "new_turtle" for p in row)
    assert (preds == "new_turtle").any()
    with np.load(tmp_path / "sub" / "submission.probs.npz") as z:
        assert sorted(z["ids"].tolist()) == sorted(template["image_id"])
        np.testing.assert_allclose(z["outputs"].sum(-1), 1.0, rtol=1e-4)
    scores_md = (tmp_path / "sub" / "submission.scores.md").read_text()
    assert "m0" in scores_md and "m1" in scores_md
    score = evaluate.score_submission(str(sub_path), os.path.join(tiny_turtle_dir, "answers.csv"))
    assert 0.0 <= score["map5"] <= 1.0 and score["n"] == len(template)


def test_unknown_member_is_refused(tmp_path, tiny_tfrec):
    out = subprocess.run(["bash", os.path.join(ROOT, "run_training.sh")], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable, MODELS="no_such_member", TFREC_DIR=tiny_tfrec))
    assert out.returncode != 0 and "no_such_member" in out.stderr


def test_member_config_takes_nested_names_and_repository_paths(tmp_path):
    """MODELS entries: models/cloud/NAME.yaml from anywhere (repository-relative), cloud/NAME, or a file."""
    script = ('here="$1"; source "$here/scripts/members.sh"; '
              'member_config models/cloud/b0ns_4b_30000.yaml; member_config cloud/b3ns_4b; '
              'RUNS_DIR=/r member_run_dir models/cloud/b3ns_4b.yaml; member_config nonexistent')
    out = subprocess.run(["bash", "-c", script, "bash", ROOT], cwd=str(tmp_path), capture_output=True, text=True)
    lines = out.stdout.split()
    assert lines[0] == os.path.join(ROOT, "models/cloud/b0ns_4b_30000.yaml") and os.path.isfile(lines[0])
    assert lines[1] == os.path.join(ROOT, "models/cloud/b3ns_4b.yaml")
    assert lines[2] == "/r/b3ns_4b"
    assert out.returncode == 2 and "member 'nonexistent' is neither a YAML file nor models/nonexistent.yaml" in out.stderr


def test_negative_weights_reach_the_ensemble_as_one_word(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    """Issue 21 item 9: WEIGHTS=-1,2 got argparse's "expected one argument" (``--weights -1,2``)."""
    import shutil

    from foldnet.ensemble import cli as ensemble

    assert 'args+=("--weights=$WEIGHTS")' in open(os.path.join(ROOT, "run_inference.sh")).read()
    runs = []
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        shutil.copy(os.path.join(tiny_tfrec, "label_map.json"), tmp_path / name / "label_map.json")
        runs.append(str(tmp_path / name))
    rc = ensemble.main(["--runs", *runs, "--data_dir", tiny_turtle_dir, "--submission", str(tmp_path / "s.csv"),
                        "--weights=-1,2"])
    err = capsys.readouterr().err
    assert rc == 2 and "weights must be finite and non-negative" in err and "expected one argument" not in err
