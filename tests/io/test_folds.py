"""Fold assignment and near-duplicate grouping (foldnet.io.folds, convert --group_duplicates)."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import foldnet  # noqa: F401
from foldnet.io import folds
from foldnet.tasks.classification.convert import create_tfrecords


def test_stratified_folds_are_balanced_and_seeded():
    labels = np.repeat(["a", "b", "c"], [30, 15, 9])
    f = folds.assign_folds(labels, 3, seed=42)
    for lab in "abc":
        counts = np.bincount(f[labels == lab], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert (f == folds.assign_folds(labels, 3, seed=42)).all()
    assert (f != folds.assign_folds(labels, 3, seed=7)).any()


def test_tiny_classes_are_assigned_and_reported():
    labels = np.array(["big"] * 20 + ["one"] + ["two"] * 2)
    f = folds.assign_folds(labels, 5, seed=0)
    assert set(f) == set(range(5)) and len(f) == len(labels)
    small = folds.small_classes(labels, 5)
    assert small == [("one", 1), ("two", 2)]
    assert folds.small_classes_message(small, 5).endswith("one (1), two (2)")


def test_small_classes_message_is_one_truncated_line():
    small = [(f"c{i}", 1) for i in range(30)]
    msg = folds.small_classes_message(small, 5, limit=3)
    assert "\n" not in msg and msg.startswith("30 class(es)") and msg.endswith("c2 (1), ... and 27 more")


def test_every_class_smaller_than_folds_still_splits():
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    f = folds.assign_folds(labels, 3, seed=0)
    assert sorted(np.bincount(f)) == [2, 2, 2]


def test_groups_stay_in_one_fold():
    rng = np.random.default_rng(0)
    labels = rng.choice(["x", "y"], 60)
    groups = np.arange(60) // 4
    f = folds.assign_folds(labels, 3, seed=1, groups=groups)
    assert all(len(set(f[groups == g])) == 1 for g in np.unique(groups))
    assert set(f) == {0, 1, 2}


def test_similar_pairs_do_not_depend_on_block_size():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    small = folds.similar_pairs(v, 0.8, block=7)
    big = folds.similar_pairs(v, 0.8, block=1000)
    brute = np.argwhere(np.triu(v @ v.T >= 0.8, k=1))
    assert len(brute) > 0
    for rows, cols in (small, big):
        assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, brute.tolist()))


def test_duplicate_groups_are_connected_components():
    v = np.eye(6, dtype=np.float32)
    v[1] = v[0]
    v[2] = v[1]  # 0-1-2 chained
    v[4] = v[3]
    comp = folds.duplicate_groups(v, 0.99)
    assert comp[0] == comp[1] == comp[2] and comp[3] == comp[4]
    assert len(set(comp)) == 3 and folds.n_grouped(comp) == 5


def test_merge_groups_joins_through_either_key():
    merged = folds.merge_groups(["a", "a", "b", "c", "d"], [0, 1, 1, 2, 3])
    assert merged[0] == merged[1] == merged[2]
    assert len({merged[0], merged[3], merged[4]}) == 3


def write_near_duplicates(root, n_base=24, n_copies=6):
    """Unrelated random-texture images, plus noised/brightened copies of the first few."""
    rng = np.random.default_rng(5)
    os.makedirs(os.path.join(root, "images"))
    rows = []
    for k in range(n_base):
        base = rng.integers(0, 256, (16, 16, 3)).astype(np.float32)
        Image.fromarray(base.astype(np.uint8)).save(os.path.join(root, "images", f"b{k}.png"))
        rows.append((f"b{k}", f"class{k % 3}"))
        if k < n_copies:
            copy = np.clip(base * 1.1 + 15 + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(copy).save(os.path.join(root, "images", f"c{k}.png"))
            rows.append((f"c{k}", f"class{k % 3}"))
    pd.DataFrame(rows, columns=["image_id", "label"]).to_csv(os.path.join(root, "train.csv"), index=False)
    return root


def test_near_duplicates_share_a_fold_and_unrelated_images_do_not_collapse(tmp_path, capsys):
    root = write_near_duplicates(str(tmp_path))
    m = create_tfrecords(data_dir=root, train_csv="train.csv", n_folds=3, group_duplicates=0.9, workers=1,
                         progress=False)
    assert m["n_grouped"] == 12  # 6 originals + their 6 copies, nothing else
    assert "12 images in clusters" in capsys.readouterr().err
    f = pd.read_csv(os.path.join(m["dir"], "folds.csv")).set_index("id")
    for k in range(6):
        assert f.at[f"b{k}", "fold"] == f.at[f"c{k}", "fold"]
        assert f.at[f"b{k}", "group"] == f.at[f"c{k}", "group"]
    assert f["group"].nunique() == 24 and f["fold"].nunique() == 3


def test_convert_warns_in_one_line_about_tiny_classes_and_keeps_them(tmp_path, capsys):
    root = write_near_duplicates(str(tmp_path))
    csv = os.path.join(root, "train.csv")
    df = pd.read_csv(csv)
    df.loc[df["image_id"] == "b1", "label"] = "solo"
    df.to_csv(csv, index=False)
    m = create_tfrecords(data_dir=root, train_csv="train.csv", n_folds=3, workers=1, progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 1 class(es) have fewer images than folds (3); they cannot be in every fold: "
                        "solo (1)"]
    f = pd.read_csv(os.path.join(m["dir"], "folds.csv"))
    assert f.loc[f["id"] == "b1", "label"].item() == "solo" and m["n_examples"] == 30


def test_group_col_and_near_duplicates_combine(tmp_path):
    root = write_near_duplicates(str(tmp_path))
    csv = os.path.join(root, "train.csv")
    df = pd.read_csv(csv)
    df["site"] = np.where(df["image_id"].isin(["b10", "b11", "b12"]), "shared", df["image_id"])
    df.to_csv(csv, index=False)
    m = create_tfrecords(data_dir=root, train_csv="train.csv", group_col="site", n_folds=3, group_duplicates=0.9,
                         workers=1, progress=False)
    f = pd.read_csv(os.path.join(m["dir"], "folds.csv")).set_index("id")
    assert f.loc[["b10", "b11", "b12"], "fold"].nunique() == 1
    assert all(f.at[f"b{k}", "fold"] == f.at[f"c{k}", "fold"] for k in range(6))
    assert m["n_grouped"] == 12  # the count is of near-duplicates only


def test_unreadable_image_during_grouping(tmp_path):
    from foldnet.core.errors import DataError

    root = write_near_duplicates(str(tmp_path))
    for name in ["b3.png", "b20.png"]:
        with open(os.path.join(root, "images", name), "wb") as f:
            f.write(b"not a png")
    kw = dict(data_dir=root, train_csv="train.csv", n_folds=3, group_duplicates=0.9, workers=1, progress=False)
    with pytest.raises(DataError) as e:
        create_tfrecords(**kw)
    assert "b3 (images/b3.png)" in str(e.value) and "b20 (images/b20.png)" in str(e.value)
    assert not os.path.exists(os.path.join(root, "tfrec"))
    m = create_tfrecords(skip_bad=True, **kw)
    assert sorted(s["id"] for s in m["skipped"]) == ["b20", "b3"] and m["n_examples"] == 28
    assert m["n_grouped"] == 10  # c3 lost its twin


def test_scene_groups_read_tile_coordinates_from_ids():
    from foldnet.io.folds import group_report, scene_groups, scene_of

    for tile, scene in [("s1_r0_c1", "s1"), ("s1_x64_y128", "s1"), ("a-b-3-4", "a-b"), ("scene_a_tile7", "scene_a"),
                        ("S2A_12", "S2A"), ("AB123456", None), ("0003d2eb", None), ("chip", None)]:
        assert scene_of(tile) == scene, tile
    assert list(scene_groups(["a_r0_c0", "a_r0_c1", "b_r0_c0"])) == ["a", "a", "b"]
    assert scene_groups(["a_1", "b_1", "c_1"]) is None  # one tile per "scene": nothing to keep together
    assert scene_groups(["a_r0_c0", "a_r0_c1", "plain"]) is None  # not every id is a tile of a scene
    info, warning = group_report(["a", "a", "b", "c"], 2, "ids")
    assert info.startswith("folds keep groups together: 3 groups from ids (largest 2 tiles, 2 single-tile groups)")
    assert warning is None
    assert "leave-one-group-out" in group_report(["a", "b", "c"], 3, "ids")[1]


def test_duplicate_groups_larger_than_max_size_become_singletons():
    # rows 0-3 identical, rows 4-5 identical, row 6 alone
    v = np.array([[1, 0, 0]] * 4 + [[0, 1, 0]] * 2 + [[0, 0, 1]], np.float32)
    comp = folds.duplicate_groups(v, 0.97, max_size=3)
    assert len(set(comp[:4])) == 4  # the cluster of 4 > 3 is exploded
    assert comp[4] == comp[5] and len(set(comp)) == 6
    assert len(set(folds.duplicate_groups(v, 0.97))) == 3  # no cap
