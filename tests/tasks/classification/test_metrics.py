import numpy as np
import pytest

from foldnet.tasks.classification import metrics, submission
from foldnet.tasks.classification.labels import LabelMap


def test_map_at_k_hand_example():
    # 4 rows, 6 classes. True classes and their ranks:
    #   row 0: class 0 is most probable                 -> rank 1 -> 1
    #   row 1: class 2 second (after class 5)            -> rank 2 -> 1/2
    #   row 2: class 1 least probable                    -> rank 6 -> absent from top 5 -> 0
    #   row 3: class 3 fifth (after 0, 1, 2, 4; before 5) -> rank 5 -> 1/5
    # MAP@5 = (1 + 0.5 + 0 + 0.2) / 4 = 0.425
    probs = np.array([
        [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],
        [0.05, 0.05, 0.30, 0.05, 0.05, 0.50],
        [0.20, 0.01, 0.20, 0.20, 0.20, 0.19],
        [0.30, 0.25, 0.20, 0.07, 0.15, 0.03],
    ])
    y = np.array([0, 2, 1, 3])
    np.testing.assert_array_equal(metrics.true_rank(y, probs), [1, 2, 6, 5])
    assert metrics.map_at_k(y, probs, k=5) == pytest.approx(0.425)
    # MAP@1 counts only rank 1: 1/4
    assert metrics.map_at_k(y, probs, k=1) == pytest.approx(0.25)


def test_ties_rank_lower_index_first():
    probs = np.full((3, 4), 0.25)
    # all tied: rank = index + 1
    y = np.array([0, 2, 3])
    np.testing.assert_array_equal(metrics.true_rank(y, probs), [1, 3, 4])
    assert metrics.map_at_k(y, probs, k=5) == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    # a tie behind a strictly larger value
    probs = np.array([[0.1, 0.3, 0.3, 0.3]])
    np.testing.assert_array_equal(metrics.true_rank([3], probs), [3])


def test_top_k_accuracy():
    probs = np.array([
        [0.6, 0.3, 0.1],   # true 0: rank 1
        [0.6, 0.3, 0.1],   # true 1: rank 2
        [0.6, 0.3, 0.1],   # true 2: rank 3
        [0.2, 0.2, 0.6],   # true 1: rank 3 (tie with 0, index 0 first)
    ])
    y = np.array([0, 1, 2, 1])
    assert metrics.top_k_accuracy(y, probs, 1) == pytest.approx(0.25)
    assert metrics.top_k_accuracy(y, probs, 2) == pytest.approx(0.5)
    assert metrics.top_k_accuracy(y, probs, 3) == pytest.approx(1.0)


def test_map_at_k_labels_hand_example():
    truth = ["a", "b", "c", "d"]
    preds = [
        ["a", "x", "y", "z", "w"],   # 1
        ["x", "b", "y", "z", "w"],   # 1/2
        ["x", "y", "z", "w", "v"],   # 0
        ["x", "y", "z", "w", "d"],   # 1/5
    ]
    assert metrics.map_at_k_labels(truth, preds, k=5) == pytest.approx(0.425)
    # a repeated label counts at its first position; only the first k count
    assert metrics.map_at_k_labels(["b"], [["b", "b", "c"]], k=5) == 1.0
    assert metrics.map_at_k_labels(["f"], [["a", "b", "c", "d", "e", "f"]], k=5) == 0.0
    with pytest.raises(ValueError):
        metrics.map_at_k_labels(["a"], [], k=5)


def _turtle_map():
    # 7 original IDs a..g and two non-original n1, n2 (extra-image turtles)
    return LabelMap(list("abcdefg") + ["n1", "n2"], original=list("abcdefg"))


def test_map5_new_individual_hand_example():
    lm = _turtle_map()
    idx = {lab: i for i, lab in enumerate(lm.labels)}
    probs = np.zeros((3, lm.n_classes))
    # row 0: true n1 (non-original -> truth new_turtle); ranking n2, a, ... -> n2 shows as
    #        new_turtle at position 1 -> 1 (all-classes rank of n1 is absent -> 0)
    probs[0, [idx["n2"], idx["a"], idx["b"]]] = [0.5, 0.3, 0.2]
    # row 1: true c; ranking n1, n2, d, c -> labels new_turtle, d, c -> position 3 -> 1/3
    #        (all-classes rank of c is 4 -> 1/4)
    probs[1, [idx["n1"], idx["n2"], idx["d"], idx["c"]]] = [0.4, 0.3, 0.2, 0.1]
    # row 2: true g; ranking a, b, c, d, e, g -> g sixth -> 0 under both
    probs[2, [idx["a"], idx["b"], idx["c"], idx["d"], idx["e"], idx["g"]]] = [.3, .2, .15, .15, .1, .1]
    y = np.array([idx["n1"], idx["c"], idx["g"]])
    assert metrics.map5_new_individual(y, probs, lm) == pytest.approx((1 + 1 / 3 + 0) / 3)
    scores = metrics.score_all(y, probs, lm)
    assert set(scores) == set(metrics.SCORE_KEYS)
    assert scores["map5"] == pytest.approx((0 + 1 / 4 + 0) / 3)
    assert scores["map5_new"] == pytest.approx((1 + 1 / 3) / 3)
    assert scores["top1"] == 0.0
    assert scores["top5"] == pytest.approx(1 / 3)


def test_rank_rule_matches_submission_order():
    # With every label original, MAP@5 on indices equals MAP@5 on the submitted labels,
    # ties included (probabilities rounded to create many).
    rng = np.random.default_rng(0)
    probs = np.round(rng.random((300, 12)), 1)
    y = rng.integers(0, 12, 300)
    lm = LabelMap([f"c{i:02d}" for i in range(12)])
    by_index = metrics.map_at_k(y, probs, k=5)
    by_label = metrics.map_at_k_labels(lm.decode(y), submission.top_k_labels(probs, lm, k=5), k=5)
    assert by_index == pytest.approx(by_label)
    assert metrics.map5_new_individual(y, probs, lm) == pytest.approx(by_index)


def test_row_blocks_give_the_same_ranks(monkeypatch):
    rng = np.random.default_rng(1)
    probs = rng.random((50, 7))
    y = rng.integers(0, 7, 50)
    full = metrics.true_rank(y, probs)
    monkeypatch.setattr(metrics, "_ROW_BLOCK", 8)
    np.testing.assert_array_equal(metrics.true_rank(y, probs), full)
    # reference: position in the stable descending order
    order = np.argsort(-probs, axis=1, kind="stable")
    np.testing.assert_array_equal(full, [list(o).index(t) + 1 for o, t in zip(order, y)])


@pytest.mark.parametrize("y", [[0, 3], [0, -1], [0.0, 1.0]])
def test_bad_labels_are_refused(y):
    with pytest.raises(ValueError):
        metrics.map_at_k(np.array(y), np.full((2, 3), 1 / 3))
