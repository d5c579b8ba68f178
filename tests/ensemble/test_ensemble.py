import os
import tracemalloc
import weakref

import numpy as np
import pandas as pd
import pytest

from foldnet.core.errors import DataError
from foldnet.ensemble import averaging, weightfit
from foldnet.ensemble import cli as ensemble
from foldnet.io import rundir
from foldnet.tasks.classification import metrics, submission
from foldnet.tasks.classification import task as classification
from foldnet.tasks.classification.labels import LabelMap
from foldnet.tasks.classification.task import TASK as CLASSIFICATION


def write_npz(run_dir, fold, split, ids, outputs, labels=None, fingerprint="fp-A"):
    """A prediction file as Contract 2 describes it."""
    outputs = np.asarray(outputs, np.float32)
    if outputs.ndim == 2:
        outputs = outputs[None]
    d = os.path.join(str(run_dir), f"fold_{fold}")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{split}.npz")
    np.savez(path, ids=np.asarray(ids, dtype=str), outputs=outputs,
             labels=np.full(len(ids), -1, np.int64) if labels is None else np.asarray(labels, np.int64),
             tta_names=np.array([f"view{t}" for t in range(outputs.shape[0])]),
             label_map_fingerprint=np.array(fingerprint), weights_fingerprint=np.array(f"w-{fold}"))
    return path


# Hand-computed example: 2 members x 2 folds x 2 TTA views, ids x and y, 3 classes.
#   A fold 0: views [[.6,.3,.1],[.2,.2,.6]] and [[.4,.5,.1],[.0,.4,.6]] -> mean [[.5,.4,.1],[.1,.3,.6]]
#   A fold 1: views [[.2,.2,.6],[.8,.1,.1]] and [[.4,.2,.4],[.6,.3,.1]] -> mean [[.3,.2,.5],[.7,.2,.1]]
#   A = fold mean = [[.4,.3,.3],[.4,.25,.35]]
#   B fold 0: both views [[0,1,0],[0,0,1]];  B fold 1: both views [[0,1,0],[1,0,0]]
#   B = [[0,1,0],[.5,0,.5]]
#   equal weights: (A + B) / 2   = [[.2,.65,.15],[.45,.125,.425]]
#   weights 3:1:   .75 A + .25 B = [[.3,.475,.225],[.425,.1875,.3875]]
HAND_A = [
    [[[.6, .3, .1], [.2, .2, .6]], [[.4, .5, .1], [.0, .4, .6]]],
    [[[.2, .2, .6], [.8, .1, .1]], [[.4, .2, .4], [.6, .3, .1]]],
]
HAND_B = [
    [[[0, 1, 0], [0, 0, 1]]] * 2,
    [[[0, 1, 0], [1, 0, 0]]] * 2,
]


def hand_members(tmp_path, shuffle_b=False):
    runs = [tmp_path / "A", tmp_path / "B"]
    for run, folds in zip(runs, (HAND_A, HAND_B)):
        for fold, outputs in enumerate(folds):
            outputs = np.array(outputs)
            ids = np.array(["x", "y"])
            if shuffle_b and run.name == "B":
                ids, outputs = ids[::-1], outputs[:, ::-1]
            write_npz(run, fold, "test", ids, outputs)
    return [str(r) for r in runs]


def test_average_hand_example(tmp_path):
    runs = hand_members(tmp_path)
    np.testing.assert_allclose(averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION),
                               [[.2, .65, .15], [.45, .125, .425]], atol=1e-6)
    np.testing.assert_allclose(averaging.average_test(runs, ["x", "y"], weights=[3, 1], task=CLASSIFICATION),
                               [[.3, .475, .225], [.425, .1875, .3875]], atol=1e-6)
    # rows come out in the order asked for
    np.testing.assert_allclose(averaging.average_test(runs, ["y", "x"], task=CLASSIFICATION),
                               [[.45, .125, .425], [.2, .65, .15]], atol=1e-6)
    # identity view only: A = mean of [[.6,.3,.1],[.2,.2,.6]] and [[.2,.2,.6],[.8,.1,.1]]
    # = [[.4,.25,.35],[.5,.15,.35]]; (A + B) / 2 = [[.2,.625,.175],[.5,.075,.425]]
    np.testing.assert_allclose(averaging.average_test(runs, ["x", "y"], tta="identity", task=CLASSIFICATION),
                               [[.2, .625, .175], [.5, .075, .425]], atol=1e-6)


def test_shuffled_rows_do_not_change_the_result(tmp_path):
    runs = hand_members(tmp_path, shuffle_b=True)
    np.testing.assert_allclose(averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION),
                               [[.2, .65, .15], [.45, .125, .425]], atol=1e-6)
    rng = np.random.default_rng(0)
    ids = np.array([f"img{i}" for i in range(50)])
    probs = rng.random((2, 50, 9)).astype(np.float32)
    write_npz(tmp_path / "C", 0, "test", ids, probs)
    perm = rng.permutation(50)
    write_npz(tmp_path / "D", 0, "test", ids[perm], probs[:, perm])
    a = averaging.average_test([str(tmp_path / "C")], ids, task=CLASSIFICATION)
    b = averaging.average_test([str(tmp_path / "D")], ids, task=CLASSIFICATION)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, probs.mean(axis=0), atol=1e-6)


def test_refuses_other_label_map(tmp_path):
    runs = hand_members(tmp_path)
    write_npz(runs[1], 1, "test", ["x", "y"], np.full((2, 3), 1 / 3), fingerprint="fp-OTHER")
    with pytest.raises(DataError) as e:
        averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION)
    msg = str(e.value)
    assert f"member {runs[1]} fold 1" in msg and "'fp-OTHER'" in msg and "'fp-A'" in msg
    assert len(e.value.problems) == 1
    # the expected fingerprint is the reference when given: then every file differs
    with pytest.raises(DataError) as e:
        averaging.average_test(runs, ["x", "y"], expected_fingerprint="fp-LM", task=CLASSIFICATION)
    assert len(e.value.problems) == 4


def test_refuses_missing_and_extra_ids(tmp_path):
    ids = [f"t{i:02d}" for i in range(30)]
    write_npz(tmp_path / "A", 0, "test", ids, np.full((30, 3), 1 / 3))
    write_npz(tmp_path / "B", 0, "test", ids[:12] + ["zz"], np.full((13, 3), 1 / 3))
    write_npz(tmp_path / "B", 1, "test", ids, np.full((30, 3), 1 / 3))
    with pytest.raises(DataError) as e:
        averaging.average_test([str(tmp_path / "A"), str(tmp_path / "B")], ids, task=CLASSIFICATION)
    (missing, extra) = e.value.problems
    assert f"member {tmp_path / 'B'} fold 0" in missing
    assert "missing ids 18: 't12', 't13'" in missing and "(+8 more)" in missing   # truncated + count
    assert "extra ids 1: 'zz'" in extra


def test_refuses_member_without_test_predictions(tmp_path):
    runs = hand_members(tmp_path)
    empty = tmp_path / "empty"
    (empty / "fold_0").mkdir(parents=True)
    with pytest.raises(DataError, match=f"member {empty}: no test predictions"):
        averaging.average_test(runs + [str(empty)], ["x", "y"], task=CLASSIFICATION)


def test_load_fold_predictions_orders_folds_numerically(tmp_path):
    for fold in (10, 2, 0):
        write_npz(tmp_path, fold, "oof", ["a"], [[1.0]])
    (tmp_path / "fold_3").mkdir()                 # a fold still training: no file yet
    (tmp_path / "fold_x").mkdir()
    found = list(rundir.prediction_files(str(tmp_path), "oof"))
    assert [f for f, _ in found] == [0, 2, 10]
    assert found[1][1] == os.path.join(str(tmp_path), "fold_2", "oof.npz")


def test_load_oof(tmp_path):
    write_npz(tmp_path, 0, "oof", ["a", "b"], [[[.2, .8], [.6, .4]], [[.4, .6], [.8, .2]]], labels=[1, 0])
    write_npz(tmp_path, 1, "oof", ["c"], [[[1.0, 0.0]], [[0.0, 1.0]]], labels=[1])
    ids, labels, probs = rundir.load_oof(str(tmp_path), classification.TASK)
    assert ids.tolist() == ["a", "b", "c"] and labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(probs, [[.3, .7], [.7, .3], [.5, .5]], atol=1e-6)
    write_npz(tmp_path, 2, "oof", ["b"], [[.5, .5]], labels=[0])
    with pytest.raises(DataError, match="id 'b' in several folds"):
        rundir.load_oof(str(tmp_path), classification.TASK)
    with pytest.raises(DataError, match="no out-of-fold predictions"):
        rundir.load_oof(str(tmp_path / "nothing"), classification.TASK)


def good_and_noise(n=400, c=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), labels] += 2.0
    good = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noise = rng.dirichlet(np.full(c, 0.3), n)
    return labels, good.astype(np.float32), noise.astype(np.float32)


def test_fit_weights_favours_the_good_member():
    labels, good, noise = good_and_noise()
    lm = LabelMap([f"c{i:02d}" for i in range(20)])
    equal = metrics.map_at_k(labels, (good + noise) / 2)
    fit = weightfit.fit_weights([noise, good], labels, lm, task=CLASSIFICATION)
    assert fit.before == pytest.approx(equal)
    assert fit.weights.sum() == pytest.approx(1.0) and (fit.weights >= 0).all()
    assert fit.weights[1] > 0.9
    assert fit.after == pytest.approx(metrics.map_at_k(labels, averaging.blend([noise, good], fit.weights)))
    assert fit.after > equal
    assert fit.after >= metrics.map_at_k(labels, good) - 1e-12
    # three members: the good one still gets most of the weight, weights on the simplex
    fit3 = weightfit.fit_weights([noise, good, noise[::-1].copy()], labels, lm, task=CLASSIFICATION)
    assert fit3.weights.sum() == pytest.approx(1.0) and (fit3.weights >= 0).all()
    assert fit3.weights.argmax() == 1 and fit3.after > fit3.before


def test_fit_weights_never_below_equal_weights():
    # two identical members: no move can strictly improve, weights stay equal
    labels, good, _ = good_and_noise(seed=1)
    lm = LabelMap([f"c{i:02d}" for i in range(20)])
    fit = weightfit.fit_weights([good, good.copy()], labels, lm, metric="map5_new", task=CLASSIFICATION)
    np.testing.assert_allclose(fit.weights, [0.5, 0.5])
    assert fit.after == fit.before and fit.steps == 0


def test_streaming_holds_one_prediction_array_at_a_time(tmp_path, monkeypatch):
    n, c = 1000, 1000                         # 4 MB per float32 array
    size = n * c * 4
    ids = np.array([f"id{i:05d}" for i in range(n)])
    rng = np.random.default_rng(0)
    runs = []
    for m in range(2):
        for fold in range(3):
            perm = rng.permutation(n)
            write_npz(tmp_path / f"m{m}", fold, "test", ids[perm], rng.random((1, n, c), dtype=np.float32))
        runs.append(str(tmp_path / f"m{m}"))

    alive, most_alive = [], []
    real = rundir.open_array

    def tracking(path, key):
        array = real(path, key)
        if key == "outputs":
            most_alive.append(sum(r() is not None for r in alive))   # earlier arrays still held
            alive.append(weakref.ref(array))
        return array

    monkeypatch.setattr(rundir, "open_array", tracking)
    tracemalloc.start()
    try:
        result = averaging.average_test(runs, ids, task=CLASSIFICATION)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(alive) == 6 and max(most_alive) == 0
    # running sum (1 array) + one loaded array + block temporaries; 6 arrays held would be >= 6x
    assert peak < 2.6 * size, f"peak {peak / size:.2f} arrays"
    assert result.shape == (n, c) and result.dtype == np.float32


# ---------------------------------------------------------------- command line

LM = LabelMap(list("abcdefg") + ["n1", "n2"], original=list("abcdefg"))
TEST_IDS = [f"test{i}" for i in range(6)]


def make_run(root, name, quality, seed, with_oof=True, label_map=LM):
    """A member: test + OOF predictions for 2 folds; ``quality`` mixes truth into noise
    (half as much in the OOF predictions, so their scores are not all 1)."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir()
    label_map.save(str(run / "label_map.json"))
    truth_test = np.arange(6) % LM.n_classes
    c = LM.n_classes
    for fold in range(2):
        noise = rng.dirichlet(np.ones(c), 6)
        probs = (1 - quality) * noise + quality * np.eye(c)[truth_test]
        perm = rng.permutation(6)               # rows in another order in every file
        write_npz(run, fold, "test", np.array(TEST_IDS)[perm], probs[perm], fingerprint=label_map.fingerprint())
        if with_oof:
            ids = [f"train{fold}_{i}" for i in range(40)]
            y = (np.arange(40) + fold) % c
            q = quality / 2
            probs = (1 - q) * rng.dirichlet(np.ones(c), 40) + q * np.eye(c)[y]
            write_npz(run, fold, "oof", ids, probs, labels=y, fingerprint=label_map.fingerprint())
    return str(run)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    pd.DataFrame({"image_id": TEST_IDS, **{f"prediction{j}": "x" for j in range(1, 6)}}).to_csv(
        d / "sample_submission.csv", index=False)
    return str(d)


def test_cli_end_to_end(tmp_path, data_dir, capsys):
    good = make_run(tmp_path, "good", 0.6, 1)
    noise = make_run(tmp_path, "noise", 0.0, 2)
    out = tmp_path / "out" / "submission.csv"
    rc = ensemble.main(["--runs", good, noise, "--data_dir", data_dir, "--fit_weights",
                        "--submission", str(out)])
    assert rc == 0, capsys.readouterr().err
    template = pd.read_csv(os.path.join(data_dir, "sample_submission.csv"), dtype=str)
    df = pd.read_csv(out, dtype=str)
    submission.validate_submission(df, template, LM)

    saved = np.load(tmp_path / "out" / "submission.probs.npz")
    assert saved["ids"].tolist() == TEST_IDS
    assert str(saved["label_map_fingerprint"]) == LM.fingerprint()
    weights = saved["member_weights"]
    assert weights[0] > weights[1] and weights.sum() == pytest.approx(1.0)
    expected = averaging.average_test([good, noise], TEST_IDS, weights=weights, task=CLASSIFICATION)
    np.testing.assert_allclose(saved["outputs"][0], expected, atol=1e-6)
    assert df.iloc[:, 1:].values.tolist() == submission.top_k_labels(expected, LM)
    # the good member dominates: every test image's true label (class i % 9) is first,
    # except the non-original ones (n1, n2 are classes 7, 8 -> new_turtle; only 6 test ids)
    assert df["prediction1"].tolist() == [LM.labels[i] for i in range(6)]

    scores = (tmp_path / "out" / "submission.scores.md").read_text()
    ids, labels, probs = rundir.load_oof(good, classification.TASK)
    good_scores = metrics.score_all(labels, probs, LM)
    oof_section = scores.split("## Out-of-fold scores")[1]
    good_line = next(line for line in oof_section.splitlines() if line.startswith(f"| {good} |"))
    assert f"{good_scores['map5']:.4f}" in good_line and f"{good_scores['map5_new']:.4f}" in good_line
    assert "| ensemble (equal weights) |" in scores and "| ensemble (fitted weights) |" in scores
    assert "fitted on OOF map5" in scores
    assert scores in capsys.readouterr().out


def test_cli_member_without_oof_is_skipped(tmp_path, data_dir, capsys):
    good = make_run(tmp_path, "good", 0.6, 1)
    no_oof = make_run(tmp_path, "no_oof", 0.5, 3, with_oof=False)
    out = tmp_path / "sub.csv"
    rc = ensemble.main(["--runs", good, no_oof, "--data_dir", data_dir, "--weights", "1,3",
                        "--submission", str(out)])
    assert rc == 0, capsys.readouterr().err
    scores = (tmp_path / "sub.scores.md").read_text()
    assert f"OOF scoring skipped for {no_oof}: {no_oof}: no fold_*/oof.npz" in scores
    assert "| ensemble (given weights) |" in scores
    np.testing.assert_allclose(np.load(tmp_path / "sub.probs.npz")["member_weights"], [0.25, 0.75])


def test_cli_refuses_run_without_test_predictions(tmp_path, data_dir, capsys):
    good = make_run(tmp_path, "good", 0.6, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    LM.save(str(empty / "label_map.json"))
    out = tmp_path / "sub.csv"
    rc = ensemble.main(["--runs", good, str(empty), "--data_dir", data_dir, "--submission", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"member {empty}: no test predictions" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_mismatched_label_maps(tmp_path, data_dir, capsys):
    good = make_run(tmp_path, "good", 0.6, 1)
    other_lm = LabelMap(LM.labels, original=list("abcde"))
    other = make_run(tmp_path, "other", 0.6, 2, label_map=other_lm)
    rc = ensemble.main(["--runs", good, other, "--data_dir", data_dir, "--submission", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert os.path.join(other, "label_map.json") in err and other_lm.fingerprint() in err


def test_refuses_bad_files_naming_each(tmp_path):
    runs = hand_members(tmp_path)
    corrupt = os.path.join(runs[0], "fold_1", "test.npz")
    with open(corrupt, "wb") as f:
        f.write(b"not a zip")
    nan = np.full((2, 3), 1 / 3)
    nan[1, 2] = np.nan
    write_npz(runs[1], 0, "test", ["x", "y"], nan)
    write_npz(runs[1], 1, "test", ["x", "x"], np.full((2, 3), 1 / 3))
    with pytest.raises(DataError) as e:
        averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION)
    msg = str(e.value)
    # unreadable and duplicate-id files are found by the scan, before any array is read
    assert f"{corrupt}: unreadable" in msg
    assert "fold_1/test.npz: ids repeated 1: 'x'" in msg
    os.remove(corrupt)
    write_npz(runs[1], 1, "test", ["x", "y"], np.full((2, 3), 1 / 3))
    with pytest.raises(DataError, match=r"fold_0/test.npz: NaN or inf probabilities for ids 1: 'y'"):
        averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION)


def test_load_oof_refuses_unlabelled_and_nan_rows(tmp_path):
    write_npz(tmp_path, 0, "oof", ["a", "b"], [[.5, .5], [np.inf, 0]], labels=[1, 0])
    write_npz(tmp_path, 1, "oof", ["c", "d"], [[.5, .5], [.5, .5]], labels=[-1, 2])
    with pytest.raises(DataError) as e:
        rundir.load_oof(str(tmp_path), classification.TASK)
    assert len(e.value.problems) == 2
    assert "fold_0/oof.npz: NaN or inf probabilities for ids 1: 'b'" in str(e.value)
    assert "fold_1/oof.npz: labels missing or outside [0, 2) for ids 2: 'c', 'd'" in str(e.value)


def test_full_data_model_with_only_or_without_the_folds(tmp_path):
    """fold_all/ (run.py job full) joins a member's folds as one more fold, replaces them, or is left out."""
    runs = hand_members(tmp_path)
    # A's full-data model: both views [[1,0,0],[0,1,0]]
    write_npz(tmp_path / "A", rundir.FULL_FOLD, "test", ["x", "y"], [[[1, 0, 0], [0, 1, 0]]] * 2)
    a_folds = np.array([[.4, .3, .3], [.4, .25, .35]])
    a_full = np.array([[1, 0, 0], [0, 1, 0]])
    b = np.array([[0, 1, 0], [.5, 0, .5]])
    cases = {"no": a_folds, "with": (2 * a_folds + a_full) / 3, "only": a_full}
    for full, a in cases.items():
        # B has no fold_all: under "with" it is averaged over its folds
        if full == "only":
            with pytest.raises(DataError, match="no fold_all/test.npz"):
                averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION, full=full)
            got = averaging.average_test(runs[:1], ["x", "y"], task=CLASSIFICATION, full=full)
            np.testing.assert_allclose(got, a, atol=1e-6)
            continue
        got = averaging.average_test(runs, ["x", "y"], task=CLASSIFICATION, full=full)
        np.testing.assert_allclose(got, (a + b) / 2, atol=1e-6)
    # fold_all is never taken for a numbered fold (folds listing, OOF)
    assert [f for f, _ in rundir.list_folds(runs[0])] == [0, 1]


def test_cli_full_option(tmp_path, data_dir, capsys):
    good = make_run(tmp_path, "good", 0.6, 1)
    full = np.tile(np.eye(LM.n_classes)[[8, 7, 6, 5, 4, 3]], (1, 1, 1))
    write_npz(tmp_path / "good", rundir.FULL_FOLD, "test", TEST_IDS, full, fingerprint=LM.fingerprint())
    for mode in ("only", "with"):
        out = tmp_path / mode / "sub.csv"
        rc = ensemble.main(["--runs", good, "--data_dir", data_dir, "--full", mode, "--submission", str(out)])
        assert rc == 0, capsys.readouterr().err
        saved = np.load(tmp_path / mode / "sub.probs.npz")["outputs"][0]
        folds = averaging.average_test([good], TEST_IDS, task=CLASSIFICATION, full="no")
        expected = full[0] if mode == "only" else (2 * folds + full[0]) / 3
        np.testing.assert_allclose(saved, expected, atol=1e-6)
        scores = (tmp_path / mode / "sub.scores.md").read_text()
        assert "full_data" in scores and f"| {good} | 1.0000 | {1 if mode == 'only' else 3} | yes |" in scores
        assert ("full-data models (fold_all/) only" in scores) == (mode == "only")
