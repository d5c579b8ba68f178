"""Segmentation submission: validation before writing, atomic output, tar, evaluation CLI."""
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tifffile

from foldnet.core.errors import ConfigError, DataError
from foldnet.raster import submission as seg_submission
from foldnet.tasks.segmentation import evaluate as seg_evaluate


def _masks(ids, shape=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    return {i: (rng.random(shape) < 0.3).astype(np.uint8) for i in ids}


def test_directory_submission_round_trip(tmp_path):
    masks = _masks(["AA1", "BB2", "CC3"])
    out = tmp_path / "sub"
    seg_submission.write_submission(masks, out, ["AA1", "BB2", "CC3"], naming="kelp")
    assert sorted(os.listdir(out)) == ["AA1_kelp.tif", "BB2_kelp.tif", "CC3_kelp.tif"]
    back = tifffile.imread(out / "BB2_kelp.tif")
    assert back.dtype == np.uint8 and back.shape == (6, 5)
    np.testing.assert_array_equal(back, masks["BB2"])
    assert sorted(os.listdir(tmp_path)) == [".sub.foldnet", "sub"]  # its owner record, no temp left behind
    # rewriting our own output is allowed
    seg_submission.write_submission(_masks(["AA1", "BB2", "CC3"], seed=1), out, ["AA1", "BB2", "CC3"])
    np.testing.assert_array_equal(tifffile.imread(out / "AA1_kelp.tif"), _masks(["AA1"], seed=1)["AA1"])


def test_tar_submission_with_cloud_names(tmp_path):
    masks = _masks(["abcd", "efgh"], shape=(4, 4))
    out = tmp_path / "sub.tar"
    seg_submission.write_submission(masks, out, ["abcd", "efgh"], naming="cloud", shape=(4, 4), tar=True)
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["abcd.tif", "efgh.tif"]
    back = seg_submission.read_masks(str(out), "cloud")
    np.testing.assert_array_equal(back["efgh"], masks["efgh"])


def test_every_problem_reported_and_nothing_written(tmp_path):
    masks = _masks(["a", "b", "c"])
    masks["b"] = masks["b"][:3]  # wrong shape
    masks["c"] = masks["c"] * 2  # values 0/2
    masks["x"] = np.zeros((6, 5), np.uint8)  # not a test tile
    masks["f"] = np.zeros((6, 5), np.float32)  # unknown, and float
    out = tmp_path / "sub"
    with pytest.raises(DataError) as e:
        seg_submission.write_submission(masks, out, ["a", "b", "c", "d"], shape=(6, 5))
    text = e.value.format()
    for needle in ["without a mask 1: 'd'", "not in the test list 2: 'f', 'x'", "b: mask shape (3, 5)",
                   "c: mask has values other than 0/1: [2]"]:
        assert needle in text
    assert os.listdir(tmp_path) == []


def test_streaming_writer_incomplete_or_bad_leaves_nothing(tmp_path):
    out = tmp_path / "sub"
    w = seg_submission.SubmissionWriter(out, ["a", "b"], naming="kelp")
    w.add("a", np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match="incomplete"):
        w.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="given twice"):
        with seg_submission.SubmissionWriter(out, ["a", "b"]) as w:
            w.add("a", np.zeros((3, 3), bool))
            w.add("a", np.zeros((3, 3), bool))
    with pytest.raises(DataError, match="shape"):
        with seg_submission.SubmissionWriter(out, ["a", "b"]) as w:
            w.add("a", np.zeros((3, 3), bool))
            w.add("b", np.zeros((3, 4), bool))  # differs from the first mask
    assert os.listdir(tmp_path) == []


def test_never_replaces_foreign_output(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="refusing to replace"):
        seg_submission.write_submission(_masks(["a"]), out, ["a"])
    assert (out / "notes.txt").read_text() == "mine"
    f = tmp_path / "model.tar"
    f.write_bytes(b"not a tar at all")
    with pytest.raises(ConfigError, match="refusing"):
        seg_submission.write_submission(_masks(["a"]), f, ["a"], tar=True)
    assert f.read_bytes() == b"not a tar at all"


def test_a_folder_of_training_masks_is_never_replaced_though_named_like_a_submission(tmp_path):
    """Issue 21 item 1: ``seg_baseline --out DATA/train_kelp`` deleted the training masks (the old check
    looked at names only). Only what carries foldnet's owner record is replaced."""
    masks = tmp_path / "train_kelp"
    masks.mkdir()
    for t in ("a", "b", "c"):
        (masks / f"{t}_kelp.tif").write_bytes(seg_submission.encode_tiff(np.ones((2, 2), np.uint8)))
    before = {n: (masks / n).read_bytes() for n in os.listdir(masks)}
    with pytest.raises(ConfigError, match="refusing to replace"):
        seg_submission.write_submission(_masks(["x"]), masks, ["x"])
    assert {n: (masks / n).read_bytes() for n in os.listdir(masks)} == before


def test_a_rerun_replaces_its_own_submission_folder_and_tar_but_not_once_a_user_added_a_file(tmp_path):
    """Issue 21 item 8: a map submission could not be rewritten by a rerun ("not written by foldnet")."""
    for out, tar in ((tmp_path / "sub", False), (tmp_path / "sub.tar", True)):
        seg_submission.write_submission(_masks(["a", "b"]), out, ["a", "b"], tar=tar)
        seg_submission.write_submission(_masks(["a", "c"]), out, ["a", "c"], tar=tar)  # a rerun, other tiles
        names = sorted(os.listdir(out)) if not tar else sorted(tarfile.open(out).getnames())
        assert names == ["a_kelp.tif", "c_kelp.tif"]
    (tmp_path / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        seg_submission.write_submission(_masks(["a"]), tmp_path / "sub", ["a"])
    assert (tmp_path / "sub" / "notes.txt").read_text() == "mine"


def test_debris_of_a_killed_writer_is_removed_by_the_next_one(tmp_path):
    """Issue 21 item 8: ``kill -9`` during the ensemble left ``.<name>.tmp-*`` that stayed for good."""
    (tmp_path / ".sub.tmp-abcd1234").mkdir()
    (tmp_path / ".sub.tmp-abcd1234" / "a_kelp.tif").write_bytes(b"half")
    (tmp_path / ".sub.tar.tmp-ef567890.tar").write_bytes(b"half")
    (tmp_path / ".subway.tmp-abcd1234").mkdir()  # another output's: kept
    seg_submission.write_submission(_masks(["a"]), tmp_path / "sub", ["a"])
    seg_submission.write_submission(_masks(["a"]), tmp_path / "sub.tar", ["a"], tar=True)
    assert sorted(os.listdir(tmp_path)) == [".sub.foldnet", ".sub.tar.foldnet", ".subway.tmp-abcd1234", "sub",
                                            "sub.tar"]


def test_evaluate_scores_and_reports_mismatches(tmp_path):
    truth = {"t1": np.array([[1, 1], [1, 0]], np.uint8), "t2": np.array([[0, 1], [0, 1]], np.uint8)}
    pred = {"t1": np.array([[1, 1], [0, 1]], np.uint8), "t2": np.zeros((2, 2), np.uint8)}
    seg_submission.write_submission(truth, tmp_path / "answers", ["t1", "t2"])
    seg_submission.write_submission(pred, tmp_path / "sub.tar", ["t1", "t2"], tar=True)
    # TP 2, FP 1, FN 1 + 2 -> Dice 4/8, IoU 2/6
    s = seg_evaluate.score_submission(str(tmp_path / "sub.tar"), str(tmp_path / "answers"))
    assert (s["n"], s["tp"], s["fp"], s["fn"]) == (2, 2, 1, 3)
    assert s["dice"] == pytest.approx(0.5) and s["iou"] == pytest.approx(1 / 3)
    proc = subprocess.run([sys.executable, "-m", "foldnet.tasks.segmentation.evaluate", "--submission", str(tmp_path / "sub.tar"),
                           "--answers", str(tmp_path / "answers")], capture_output=True, text=True)
    assert proc.returncode == 0 and "test set (2 tiles): Dice 0.5000, IoU 0.3333" in proc.stdout
    # a submission missing a tile, with a stray file: exit 2, both named, no traceback
    seg_submission.write_submission({"t1": pred["t1"]}, tmp_path / "partial", ["t1"])
    (tmp_path / "partial" / "README.txt").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "foldnet.tasks.segmentation.evaluate", "--submission", str(tmp_path / "partial"),
                           "--answers", str(tmp_path / "answers")], capture_output=True, text=True)
    assert proc.returncode == 2 and "README.txt" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "partial" / "README.txt").unlink()
    with pytest.raises(DataError, match="without a prediction 1: 't2'"):
        seg_evaluate.score_submission(str(tmp_path / "partial"), str(tmp_path / "answers"))
