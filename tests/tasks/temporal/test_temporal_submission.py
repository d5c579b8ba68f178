"""Temporal submissions (float32 {chip}_agbm.tif per test chip, dir or tar) and their evaluation."""
import math
import os
import tarfile

import numpy as np
import pytest
import tifffile

from foldnet.core.errors import ConfigError, DataError
from foldnet.tasks.temporal import evaluate as temporal_evaluate
from foldnet.tasks.temporal import submission as ts


def maps(ids, seed=0, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(0, 300, shape).astype(np.float32) for i in ids}


@pytest.mark.parametrize("tar", [False, True])
def test_writes_float32_maps_with_competition_names(tmp_path, tar):
    m = maps(["a1", "b2", "c3"])
    out = ts.write_maps(m, str(tmp_path / ("sub.tar" if tar else "sub")), ["a1", "b2", "c3"], tar=tar)
    if tar:
        with tarfile.open(out) as t:
            assert sorted(t.getnames()) == ["a1_agbm.tif", "b2_agbm.tif", "c3_agbm.tif"]
    else:
        assert sorted(os.listdir(out)) == ["a1_agbm.tif", "b2_agbm.tif", "c3_agbm.tif"]
        x = tifffile.imread(os.path.join(out, "b2_agbm.tif"))
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, m["b2"])
    back = ts.read_maps(out)
    assert sorted(back) == ["a1", "b2", "c3"]
    np.testing.assert_array_equal(back["c3"], m["c3"])


def test_every_problem_named_before_anything_is_written(tmp_path):
    m = maps(["a1", "b2", "x9"])
    m["b2"] = m["b2"][:3]
    m["a1"][0, 0] = np.nan
    out = tmp_path / "sub"
    with pytest.raises(DataError) as e:
        ts.write_maps(m, str(out), ["a1", "b2", "c3"], shape=(4, 5))
    text = str(e.value)
    for what in ("test chips without a map 1: 'c3'", "maps of chips not in the test list 1: 'x9'",
                 "b2: map shape (3, 5), expected (4, 5)", "a1: map has 1 non-finite value(s)"):
        assert what in text
    assert not out.exists() and os.listdir(tmp_path) == []


def test_streaming_writer_is_atomic_and_refuses_foreign_output(tmp_path):
    out = tmp_path / "sub"
    with pytest.raises(DataError, match="incomplete: 1 of 2 test chips have no map"):
        with ts.MapWriter(str(out), ["a", "b"], naming="biomassters") as w:
            w.add("a", np.zeros((2, 2), np.float32))
    assert not out.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="refusing to replace"):
        ts.write_maps(maps(["a"]), str(foreign), ["a"])
    assert (foreign / "notes.txt").read_text() == "keep"


def test_evaluate_scores_by_hand_and_names_mismatches(tmp_path, capsys):
    truth = {"a": np.array([[10.0, 500.0], [20.0, 30.0]], np.float32),
             "b": np.array([[0.0, 100.0], [50.0, 60.0]], np.float32)}
    pred = {"a": np.array([[12.0, 400.0], [20.0, 30.0]], np.float32),
            "b": np.array([[3.0, 96.0], [50.0, 60.0]], np.float32)}
    answers = ts.write_maps(truth, str(tmp_path / "answers"), ["a", "b"])
    sub = ts.write_maps(pred, str(tmp_path / "sub.tar"), ["a", "b"], tar=True)
    s = temporal_evaluate.score_submission(sub, answers)
    a, b = math.sqrt((4 + 10000) / 4), math.sqrt((9 + 16) / 4)
    assert s["rmse"] == pytest.approx((a + b) / 2, rel=1e-6)
    assert s["rmse_capped"] == pytest.approx((math.sqrt(4 / 3) + b) / 2, rel=1e-6)
    assert s["pooled_rmse"] == pytest.approx(math.sqrt(10029 / 8), rel=1e-6)
    assert temporal_evaluate.main(["--submission", sub, "--answers", answers, "--label", "demo"]) == 0
    assert f"demo: test set (2 chips): RMSE {(a + b) / 2:.4f}" in capsys.readouterr().out
    partial = ts.write_maps({"a": pred["a"]}, str(tmp_path / "partial"), ["a"])
    assert temporal_evaluate.main(["--submission", partial, "--answers", answers]) == 2
    assert "answer chips without a prediction 1: 'b'" in capsys.readouterr().err


def test_task_submission_from_arrays(tmp_path):
    from foldnet.tasks.temporal.records import TemporalSpec

    spec = TemporalSpec(12, (4, 5), ["a"], {"a": [0, 1]}, {"name": "agbm"}, "biomassters")
    arr = np.stack(list(maps(["x", "y"]).values()))[..., None]  # [n, H, W, 1]
    out = ts.write_submission(str(tmp_path / "s.tar"), ["x", "y"], arr, spec)
    back = ts.read_maps(out)
    np.testing.assert_array_equal(back["y"], arr[1, ..., 0])
    with pytest.raises(DataError, match="test chips without a map 1: 'z'"):
        ts.write_submission(str(tmp_path / "t"), ["x", "y"], arr, spec, test_ids=["x", "y", "z"])
    with pytest.raises(DataError, match=r"map shape \(4, 5\), expected \(3, 3\)"):
        ts.write_submission(str(tmp_path / "u"), ["x", "y"], arr,
                            TemporalSpec(12, (3, 3), ["a"], {"a": [0, 1]}, {}, "generic"))
