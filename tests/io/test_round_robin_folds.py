"""Round-robin folds over groups (On Cloud N 3rd place create_folds.py) and the fold-count error."""
import numpy as np
import pytest

from foldnet.io import folds


def test_groups_dealt_in_blocks_of_n_folds_most_rows_first():
    # 9 locations with distinct sizes 9..1 rows: ranks 0-3, 4-7, 8 form the blocks
    groups = [f"loc{k}" for k in range(9) for _ in range(9 - k)]
    got = folds.round_robin_folds(groups, 4, seed=0)
    fold_of = {g: f for g, f in zip(groups, got)}
    assert len(got) == len(groups)
    assert all(len(set(got[np.array(groups) == g])) == 1 for g in fold_of)  # a location stays in one fold
    for block in (["loc0", "loc1", "loc2", "loc3"], ["loc4", "loc5", "loc6", "loc7"]):
        assert sorted(fold_of[g] for g in block) == [0, 1, 2, 3]  # each block a permutation of the folds
    assert fold_of["loc8"] in range(4)
    # seeded: the same split again; another seed permutes the blocks differently somewhere
    assert (folds.round_robin_folds(groups, 4, seed=0) == got).all()
    assert any((folds.round_robin_folds(groups, 4, seed=s) != got).any() for s in range(1, 6))


def test_ties_in_size_are_ordered_by_name():
    groups = ["b", "a", "c", "d", "b", "a"]  # a, b: 2 rows; c, d: 1 row -> order a, b, c, d
    got = folds.round_robin_folds(groups, 2, seed=3)
    fold_of = dict(zip(groups, got))
    assert fold_of["a"] != fold_of["b"] and fold_of["c"] != fold_of["d"]


def test_fewer_groups_than_folds_names_the_fix():
    with pytest.raises(ValueError, match=r"^3 groups cannot be split into 5 folds: convert with --n_folds 3 or fewer"):
        folds.round_robin_folds(["a", "b", "c", "a", "b", "c"], 5, seed=0)
    with pytest.raises(ValueError, match=r"^3 groups cannot be split into 5 folds: convert with --n_folds 3"):
        folds.assign_folds([0, 1, 0, 1, 0, 1], 5, 0, groups=["a", "b", "c", "a", "b", "c"])
    with pytest.raises(ValueError, match=r"^4 training rows cannot be split into 5 folds: convert with --n_folds 4"):
        folds.assign_folds([0, 1, 0, 1], 5, 0)
