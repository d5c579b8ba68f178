import time

import numpy as np
import pandas as pd
import pytest

from foldnet.core.errors import DataError
from foldnet.tasks.classification import ranking, submission
from foldnet.tasks.classification.labels import LabelMap

NEW = "new_turtle"


def turtle_map():
    # originals a..g, non-original n1..n3 (label order = class index order)
    return LabelMap(list("abcdefg") + ["n1", "n2", "n3"], original=list("abcdefg"))


def row_probs(lm, ranking):
    """One probability row ranking the given labels first, in that order; the rest 0."""
    p = np.zeros(lm.n_classes)
    for r, lab in enumerate(ranking):
        p[lm.labels.index(lab)] = 1.0 - 0.01 * r
    return p


def reference_walk(probs, lm, k):
    """The rule, written as plainly as possible (slow)."""
    out = []
    for p in probs:
        row = []
        for c in np.argsort(-p, kind="stable"):
            lab = lm.labels[c] if lm.labels[c] in lm.original else lm.new_label
            if lab not in row:
                row.append(lab)
            if len(row) == k:
                break
        out.append(row)
    return out


@pytest.mark.parametrize("ranking, expected", [
    # non-originals ranked 1 and 3: one new_turtle, filled with the next originals
    (["n1", "a", "n2", "b", "c", "d", "e"], [NEW, "a", "b", "c", "d"]),
    # non-original ranked below the 5th original: no new_turtle
    (["a", "b", "c", "d", "e", "n1"], ["a", "b", "c", "d", "e"]),
    # three non-originals first: one new_turtle then four originals
    (["n3", "n2", "n1", "g", "f", "e", "d", "c"], [NEW, "g", "f", "e", "d"]),
    # non-original in the middle
    (["b", "a", "n2", "c", "d", "e"], ["b", "a", NEW, "c", "d"]),
])
def test_new_individual_rule(ranking, expected):
    lm = turtle_map()
    assert submission.top_k_labels(row_probs(lm, ranking)[None], lm, k=5) == [expected]


def test_ties_take_lower_index_first():
    lm = turtle_map()
    p = np.zeros((1, lm.n_classes))
    p[0, lm.labels.index("n2")] = 0.5        # -> new_turtle
    # all other classes tied at 0 -> a, b, c, d in index order
    assert submission.top_k_labels(p, lm, k=5) == [[NEW, "a", "b", "c", "d"]]


def test_matches_reference_walk_incl_worst_case(monkeypatch):
    # 60 classes, 45 of them non-original; probabilities with many ties; one row where
    # all non-originals rank above every original (the walk has to go 45 + 4 deep).
    rng = np.random.default_rng(3)
    labels = [f"c{i:02d}" for i in range(60)]
    lm = LabelMap(labels, original=labels[45:])
    probs = np.round(rng.random((200, 60)), 1)
    probs[7] = 0.0
    probs[7, :45] = 1.0
    probs[7, 45:] = np.linspace(0.5, 0.1, 15)
    monkeypatch.setattr(ranking, "_ROW_BLOCK", 32)   # several blocks, a partial last one
    got = submission.top_k_labels(probs, lm, k=5)
    assert got == reference_walk(probs, lm, 5)
    assert got[7] == [NEW, "c45", "c46", "c47", "c48"]
    assert all(len(set(r)) == 5 and r.count(NEW) <= 1 for r in got)


def test_too_few_labels_for_k():
    lm = LabelMap(["a", "b", "c", "x"], original=["a", "b", "c"])
    assert submission.top_k_labels(row_probs(lm, ["x"])[None], lm, k=4) == [[NEW, "a", "b", "c"]]
    with pytest.raises(ValueError, match="cannot make 5 distinct labels"):
        submission.top_k_labels(np.ones((1, 4)), lm, k=5)


def test_full_size_is_fast():
    # 2000 rows x 2265 classes, 100 originals (the Turtle Recall shape)
    labels = [f"t{i:04d}" for i in range(2265)]
    lm = LabelMap(labels, original=labels[::23][:100])
    probs = np.random.default_rng(0).random((2000, 2265)).astype(np.float32)
    t = time.perf_counter()
    rows = submission.top_k_labels(probs, lm, k=5)
    assert time.perf_counter() - t < 10
    assert rows[:20] == reference_walk(probs[:20], lm, 5)


# ---------------------------------------------------------------- tables

def template(ids=("i1", "i2", "i3")):
    return pd.DataFrame({"image_id": list(ids), **{f"prediction{j}": "x" for j in range(1, 6)}})


def test_make_submission_follows_template_order_and_columns():
    lm = turtle_map()
    ids = ["i3", "i1", "i2"]
    probs = np.stack([row_probs(lm, r) for r in (["c", "n1"], ["a"], ["b", "a"])])
    df = submission.make_submission(ids, probs, lm, template(), k=5)
    assert list(df.columns) == list(template().columns)
    assert df["image_id"].tolist() == ["i1", "i2", "i3"]
    assert df.iloc[0, 1:].tolist() == ["a", "b", "c", "d", "e"]     # i1 <- ranking ["a"]
    assert df.iloc[1, 1:].tolist() == ["b", "a", "c", "d", "e"]     # i2
    assert df.iloc[2, 1:].tolist() == ["c", NEW, "a", "b", "d"]     # i3
    submission.validate_submission(df, template(), lm)


def test_make_submission_refuses_mismatched_ids():
    lm = turtle_map()
    probs = np.tile(row_probs(lm, ["a"]), (3, 1))
    with pytest.raises(DataError) as e:
        submission.make_submission(["i1", "i2", "zz"], probs, lm, template(), k=5)
    msg = str(e.value)
    assert "'zz'" in msg and "'i3'" in msg


def good_submission():
    return pd.DataFrame({
        "image_id": ["i1", "i2", "i3"],
        "prediction1": ["a", "b", NEW], "prediction2": ["b", "c", "a"], "prediction3": ["c", "d", "b"],
        "prediction4": ["d", "e", "c"], "prediction5": ["e", "f", "d"],
    })


def _break(kind):
    df = good_submission()
    if kind == "duplicate id":
        df.loc[2, "image_id"] = "i1"               # i1 twice, i3 missing
        return df, ["'i1' appears 2 times", "'i3'"]
    if kind == "missing id":
        return df.iloc[:2], ["template ids missing", "'i3'"]
    if kind == "4 predictions":
        return df.drop(columns="prediction5"), ["4 prediction columns, expected 5"]
    if kind == "NaN prediction":
        df.loc[1, "prediction5"] = np.nan
        return df, ["row 1 (id 'i2')", "prediction5"]
    if kind == "repeated prediction":
        df.loc[0, "prediction3"] = "a"
        return df, ["row 0 (id 'i1')", "repeated", "'a'"]
    if kind == "empty prediction":
        df.loc[2, "prediction2"] = "  "
        return df, ["row 2 (id 'i3')", "empty", "prediction2"]
    if kind == "wrong columns":
        return df.rename(columns={"prediction1": "pred1"}), ["pred1", "differ from the template"]
    if kind == "unknown label":
        df.loc[1, "prediction1"] = "n2"
        return df, ["row 1 (id 'i2')", "'n2'"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["duplicate id", "missing id", "4 predictions", "NaN prediction",
                                  "repeated prediction", "empty prediction", "wrong columns", "unknown label"])
def test_validation_names_the_problem(kind):
    submission.validate_submission(good_submission(), template(), turtle_map())
    df, expected = _break(kind)
    with pytest.raises(DataError) as e:
        submission.validate_submission(df, template(), turtle_map())
    for text in expected:
        assert text in str(e.value)


def test_validation_lists_every_bad_row():
    df = good_submission()
    df.loc[0, "prediction2"] = "a"
    df.loc[2, "prediction5"] = ""
    with pytest.raises(DataError) as e:
        submission.validate_submission(df, template())
    assert len(e.value.problems) == 2
    assert "row 0 (id 'i1')" in str(e.value) and "row 2 (id 'i3')" in str(e.value)


def test_write_submission_validates_then_writes(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    submission.write_submission(good_submission(), str(path), template(), turtle_map())
    back = pd.read_csv(path, dtype=str)
    pd.testing.assert_frame_equal(back, good_submission())
    assert sorted(p.name for p in path.parent.iterdir()) == [".submission.csv.foldnet", "submission.csv"]  # no temp left; marked as ours

    bad, _ = _break("repeated prediction")
    other = tmp_path / "bad.csv"
    with pytest.raises(DataError):
        submission.write_submission(bad, str(other), template())
    with pytest.raises(DataError, match="appears 2 times"):
        submission.write_submission(_break("duplicate id")[0], str(other))   # own structure only
    assert not other.exists()
