"""Segmentation and temporal-regression run directories written before the layout change still ensemble unchanged.

fixtures/old_seg_runs and fixtures/old_temporal_runs hold two members each, trained
for one epoch with commit 6e1a2e1's code (flat ``foldnet/`` layout) on tiny synthetic
Kelp Wanted / BioMassters data (fixtures/make_old_map_runs.sh has the exact commands):
``m0``, ``m1`` (task.json, seg_spec.json / temporal_spec.json, config.yaml,
fold_K/{oof,test}.npz, ...; checkpoints, TensorBoard logs and PNGs left out: the
ensemble reads none of them), ``tfrec/`` (manifest.json, tiles.csv / chips.csv,
folds.csv; no shards) and what the old ensemble CLI wrote, run in the fixture directory:

    python -m foldnet.ensemble --runs m0 m1 --data_dir . --tfrec_dir tfrec \\
        --submission expected/submission.tar                    # as run_inference.sh
    ... --fit_weights --submission expected_fit/submission.tar

The current ensemble CLI, run the same way on a copy, must write the same submission
(segmentation: the same mask TIFFs byte for byte; temporal: the same float32 maps
within 1e-6), the same averaged outputs (``submission.probs.npz``) and the same
scores / threshold reports; the score job must score the old OOF files alike.
"""
import io
import json
import os
import re
import shutil
import tarfile

import numpy as np
import pytest
import tifffile

from foldnet.ensemble import cli as ensemble
from foldnet.ensemble import scores
from foldnet.io import rundir
from foldnet.tasks import base as tasks
from tests.paths import FIXTURES

FIXTURES = FIXTURES
CASES = {  # fixture: (task, spec file)
    "old_seg_runs": ("segmentation", "seg_spec.json"),
    "old_temporal_runs": ("temporal_regression", "temporal_spec.json"),
}
VARIANTS = {"expected": [], "expected_fit": ["--fit_weights"]}


def _copy(tmp_path, name):
    d = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), d)
    return d


def _tar_files(path):
    """{member name: bytes} of a submission tar."""
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


# score columns added after the fixtures were written (issue 18: a location without cloud scores 0, the
# On Cloud N winner's convention); the old columns must be unchanged
ADDED_COLUMNS = ("location_iou_empty0",)


def _drop_added_columns(text):
    """``text`` with the ADDED_COLUMNS cells removed from every Markdown table."""
    out, drop = [], None
    for line in text.split("\n"):
        cells = line.split("|") if line.startswith("|") else None
        if cells is None:
            drop = None
        elif any(c.strip() in ADDED_COLUMNS for c in cells):
            drop = [i for i, c in enumerate(cells) if c.strip() in ADDED_COLUMNS]
        if cells is not None and drop:
            line = "|".join(c for i, c in enumerate(cells) if i not in drop)
        out.append(line)
    return "\n".join(out)


def _normalise_scores_md(text, out_dir):
    """The report names the submission path: relative as given, and (temporal) absolute too."""
    text = _drop_added_columns(text)
    # the weight search starts from the best of equal weights and each member alone since issue 20, so it
    # may reach the same weights in fewer moves; the weights and scores themselves must not change
    text = re.sub(r" in \d+ moves", " in N moves", text)
    text = re.sub(r"\(/\S*?/(expected|expected_fit|new|new_fit)/submission\.tar\)", "(<abs>/submission.tar)", text)
    return text.replace(f"{out_dir}/submission.tar", "<out>/submission.tar")


def test_fixtures_are_old_map_run_dirs():
    for name, (task, spec_file) in CASES.items():
        d = os.path.join(FIXTURES, name)
        for m in ("m0", "m1"):
            run = os.path.join(d, m)
            assert rundir.read_task(run) == task
            assert os.path.isfile(os.path.join(run, spec_file))
            assert [f for f, _ in rundir.prediction_files(run, "test")] == [0, 1]
            assert [f for f, _ in rundir.prediction_files(run, "oof")] == [0, 1]
            assert not rundir.best_checkpoints(run)  # left out on purpose: the ensemble does not read them
        for variant in VARIANTS:
            assert os.path.isfile(os.path.join(d, variant, "submission.tar"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_old_map_run_dirs_ensemble_to_the_same_submission(tmp_path, monkeypatch, name, variant):
    d = _copy(tmp_path, name)
    monkeypatch.chdir(d)  # the old CLI ran here, with these relative paths
    out_dir = variant.replace("expected", "new")
    os.makedirs(out_dir)
    rc = ensemble.main(["--runs", "m0", "m1", "--data_dir", ".", "--tfrec_dir", "tfrec", *VARIANTS[variant],
                        "--submission", f"{out_dir}/submission.tar"])
    assert rc == 0
    new, old = d / out_dir, d / variant

    # the submission: same TIFF names; masks byte for byte, float maps within 1e-6
    new_files, old_files = _tar_files(new / "submission.tar"), _tar_files(old / "submission.tar")
    assert sorted(new_files) == sorted(old_files) and len(old_files) == 4
    for fname, old_bytes in old_files.items():
        a, b = tifffile.imread(io.BytesIO(new_files[fname])), tifffile.imread(io.BytesIO(old_bytes))
        assert a.shape == b.shape == (32, 32) and a.dtype == b.dtype
        if name == "old_seg_runs":
            assert a.dtype == np.uint8 and set(np.unique(b)) <= {0, 1}
            assert new_files[fname] == old_bytes, fname
        else:
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=fname)

    # the averaged outputs, ids, fingerprints and member weights
    # (temporal regression writes them as maps.npz since biomass maps are not probabilities)
    averaged = "probs" if name == "old_seg_runs" else "maps"
    assert (new / f"submission.{averaged}.npz").exists() and \
        (averaged == "probs" or not (new / "submission.probs.npz").exists())
    a, b = np.load(new / f"submission.{averaged}.npz"), np.load(old / "submission.probs.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in b.files:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key].astype(np.float64), b[key].astype(np.float64), rtol=0, atol=1e-6,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["outputs"].dtype == b["outputs"].dtype

    # the reports (threshold fitted on the OOF blend, scores, weights)
    assert _normalise_scores_md((new / "submission.scores.md").read_text(), out_dir) == \
        _normalise_scores_md((old / "submission.scores.md").read_text(), variant)
    if name == "old_seg_runs":
        assert (new / "submission.threshold.md").read_text() == (old / "submission.threshold.md").read_text()
        assert (new / "submission.threshold.png").exists()
    else:
        assert not (old / "submission.threshold.md").exists() and not (new / "submission.threshold.md").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_map_run_dir_scores_alike(tmp_path, name):
    d = _copy(tmp_path, name)
    task_name, spec_file = CASES[name]
    task = tasks.get(task_name)
    for m in ("m0", "m1"):
        run = str(d / m)
        with open(os.path.join(run, "scores.json")) as f:
            old = json.load(f)
        spec = task.read_spec(os.path.join(run, spec_file))
        assert spec == task.read_spec(str(d / "tfrec" / spec_file))  # from the TFRecord manifest
        scores.score_run(run, spec, task=task, groups=task.groups(str(d / "tfrec")))
        with open(os.path.join(run, "scores.json")) as f:
            new = json.load(f)
        assert new["folds"] == old["folds"] and len(new["rows"]) == len(old["rows"]) == 9
        for a, b in zip(new["rows"], old["rows"]):
            assert {k: v for k, v in a.items() if k not in ADDED_COLUMNS} == pytest.approx(b)
        if name == "old_seg_runs":  # the member's Dice-vs-threshold table
            assert (d / m / "oof.threshold.md").read_text() == \
                open(os.path.join(FIXTURES, name, m, "oof.threshold.md")).read()
