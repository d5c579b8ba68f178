"""Reading the two dataset layouts and rejecting bad input (foldnet.tasks.classification.layouts, convert)."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import foldnet  # noqa: F401
from foldnet.commands.convert import main
from foldnet.core.errors import DataError
from foldnet.tasks.classification import layouts
from foldnet.tasks.classification.convert import create_tfrecords
from foldnet.tasks.classification.labels import LabelMap, load_label_map


def csv_path(root, name):
    return os.path.join(root, name)


def edit_csv(root, name, fn):
    path = csv_path(root, name)
    fn(pd.read_csv(path, dtype=str)).to_csv(path, index=False)


def convert(root, **kw):
    kw.setdefault("n_folds", 3)
    return create_tfrecords(data_dir=root, out_dir=os.path.join(root, "tfrec"), workers=1, progress=False, **kw)


def assert_no_output(root):
    """Neither the output nor a temporary sibling of it is left behind."""
    assert not [n for n in os.listdir(root) if "tfrec" in n]


def assert_names_all(err, names):
    text = str(err)
    missing = [n for n in names if n not in text]
    assert not missing, f"not named in the error: {missing}\n{text}"


# ---------------------------------------------------------------- Turtle Recall layout


def test_turtle_layout_merges_extra_and_marks_original(tiny_turtle_dir):
    ds = layouts.read_turtle(tiny_turtle_dir)
    assert len(ds.train) == 60 and len(ds.test) == 12
    assert ds.train["label"].nunique() == 6
    assert ds.original == sorted(pd.read_csv(csv_path(tiny_turtle_dir, "train.csv"))["turtle_id"].unique())
    assert len(ds.original) == 4 and ds.new_label == "new_turtle"
    assert set(ds.train["image_location"]) == {"top", "left", "right", ""}  # lower-cased; "" for extra rows
    assert all(p.endswith(f"{i}.JPG") for i, p in zip(ds.train["id"], ds.train["path"]))
    assert ds.train["source"].iloc[0] == "train.csv line 2"


def test_turtle_image_found_with_other_extension(turtle_copy):
    images = os.path.join(turtle_copy, "images")
    os.rename(os.path.join(images, "ID_000000.JPG"), os.path.join(images, "ID_000000.jpg"))
    Image.open(os.path.join(images, "ID_000001.JPG")).save(os.path.join(images, "ID_000001.png"))
    os.remove(os.path.join(images, "ID_000001.JPG"))
    ds = layouts.read_turtle(turtle_copy)
    paths = dict(zip(ds.train["id"], ds.train["path"]))
    assert paths["ID_000000"].endswith("ID_000000.jpg")
    assert paths["ID_000001"].endswith("ID_000001.png")


def test_image_index_prefers_jpg_and_matches_case_insensitively(tmp_path):
    for name in ["a.png", "a.JPG", "B.png"]:
        (tmp_path / name).write_bytes(b"x")
    index = layouts.ImageIndex(str(tmp_path))
    assert index.find("a").endswith("a.JPG")
    assert index.find("b").endswith("B.png")
    assert index.find("c") is None


# ---------------------------------------------------------------- generic layout


def write_generic(root, n_per_class=6, classes=("cat", "dog", "owl"), known=("cat", "dog")):
    """Generic layout: PNG images named by id, a group column, a test CSV."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, "pics"))
    rows = []
    for c, label in enumerate(classes):
        for k in range(n_per_class):
            image_id = f"{label}{k}"
            arr = np.full((12, 10, 3), 40 * c + 20, np.uint8) + rng.integers(0, 20, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, "pics", f"{image_id}.png"))
            rows.append((image_id, label, f"g{label}{k // 2}", f"{image_id}.png"))
    pd.DataFrame(rows, columns=["name", "species", "site", "file"]).to_csv(os.path.join(root, "tr.csv"), index=False)
    test = [(f"q{k}", f"q{k}.png") for k in range(2)]
    for image_id, name in test:
        Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(os.path.join(root, "pics", name))
    pd.DataFrame(test, columns=["name", "file"]).to_csv(os.path.join(root, "te.csv"), index=False)
    pd.DataFrame({"species": list(known)}).to_csv(os.path.join(root, "known.csv"), index=False)
    return root


SIX = ("cat", "dog", "owl", "eel", "fox", "yak")


def test_generic_layout_with_pattern_groups_and_known_labels(tmp_path):
    root = write_generic(str(tmp_path), classes=SIX, known=SIX[:4])
    m = create_tfrecords(data_dir=root, train_csv="tr.csv", test_csv="te.csv", images_dir="pics", id_col="name",
                         label_col="species", path_pattern="{id}.png", group_col="site",
                         known_labels_csv="known.csv", new_label="unknown", n_folds=3, workers=1, progress=False)
    assert m["dir"] == os.path.join(root, "tfrec")
    assert m["n_examples"] == 36 and m["test"]["n_examples"] == 2 and m["n_classes"] == 6
    from foldnet.io import records

    lm = load_label_map(records.load_manifest(m["dir"]))
    assert lm.labels == sorted(SIX) and lm.original == set(SIX[:4]) and lm.new_label == "unknown"
    folds = pd.read_csv(os.path.join(m["dir"], "folds.csv"))
    assert list(folds.columns) == ["id", "label", "fold", "group"]
    assert (folds.groupby("group")["fold"].nunique() == 1).all()  # a site never spans two folds


def test_generic_layout_path_col_and_all_labels_original(tmp_path):
    root = write_generic(str(tmp_path))
    ds = layouts.read_generic(os.path.join(root, "tr.csv"), os.path.join(root, "pics"), id_col="name",
                              label_col="species", path_col="file")
    assert ds.original == ["cat", "dog", "owl"] and len(ds.test) == 0
    assert all(p == os.path.join(root, "pics", f) for p, f in
               zip(ds.train["path"], pd.read_csv(os.path.join(root, "tr.csv"))["file"]))


# ---------------------------------------------------------------- bad input: one error naming every offender


def test_missing_image_files_all_named(turtle_copy):
    for image_id in ["ID_000003", "ID_000050", "ID_000011"]:  # train, extra, test
        os.remove(os.path.join(turtle_copy, "images", f"{image_id}.JPG"))
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, ["ID_000003", "ID_000050", "ID_000011", "image file not found"])
    assert len(e.value.problems) == 3
    assert_no_output(turtle_copy)


def test_corrupt_and_truncated_images_all_named(turtle_copy):
    images = os.path.join(turtle_copy, "images")
    with open(os.path.join(images, "ID_000002.JPG"), "wb") as f:
        f.write(b"this is not an image")
    for image_id in ["ID_000033", "ID_000070"]:  # extra and test images, truncated
        path = os.path.join(images, f"{image_id}.JPG")
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, ["ID_000002", "ID_000033", "ID_000070"])
    assert len(e.value.problems) == 3
    assert_no_output(turtle_copy)


def test_duplicate_ids_all_named(turtle_copy):
    edit_csv(turtle_copy, "train.csv", lambda df: pd.concat([df, df.iloc[[0]]]))  # within train.csv
    extra = pd.read_csv(csv_path(turtle_copy, "extra_images.csv"), dtype=str)
    train = pd.read_csv(csv_path(turtle_copy, "train.csv"), dtype=str)
    extra.loc[len(extra)] = [train["image_id"][5], train["turtle_id"][5]]  # train and extra, same label
    extra.to_csv(csv_path(turtle_copy, "extra_images.csv"), index=False)
    edit_csv(turtle_copy, "test.csv", lambda df: pd.concat([df, df.iloc[[3]]]))  # within test.csv
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, [f"duplicate image_id {train['image_id'][0]}", f"duplicate image_id {train['image_id'][5]}",
                               "extra_images.csv line 34", "test.csv line 14"])
    assert len(e.value.problems) == 3
    assert_no_output(turtle_copy)


def test_one_id_with_two_labels_across_train_and_extra(turtle_copy):
    train = pd.read_csv(csv_path(turtle_copy, "train.csv"), dtype=str)
    extra = pd.read_csv(csv_path(turtle_copy, "extra_images.csv"), dtype=str)
    extra.loc[len(extra)] = [train["image_id"][0], "t_id_other"]
    extra.loc[len(extra)] = [train["image_id"][9], "t_id_other"]
    extra.to_csv(csv_path(turtle_copy, "extra_images.csv"), index=False)
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, [f"image_id {train['image_id'][0]} has 2 labels",
                               f"image_id {train['image_id'][9]} has 2 labels", "t_id_other", train["turtle_id"][9]])
    assert_no_output(turtle_copy)


def test_missing_columns_all_named(turtle_copy):
    edit_csv(turtle_copy, "extra_images.csv", lambda df: df.rename(columns={"turtle_id": "turtle"}))
    edit_csv(turtle_copy, "test.csv", lambda df: df.drop(columns=["image_location"]))
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, ["extra_images.csv: missing column(s) turtle_id", "test.csv: missing column(s) image_location"])
    assert_no_output(turtle_copy)


def test_empty_csvs_all_named(turtle_copy):
    open(csv_path(turtle_copy, "test.csv"), "w").close()
    open(csv_path(turtle_copy, "extra_images.csv"), "w").close()
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, ["test.csv: empty CSV", "extra_images.csv: empty CSV"])
    assert_no_output(turtle_copy)
    # a header-only extra_images.csv means no extra images (issue 21 item 9), not an error
    with open(csv_path(turtle_copy, "extra_images.csv"), "w") as f:
        f.write("image_id,turtle_id\n")
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert "extra_images.csv" not in str(e.value) and "test.csv: empty CSV" in str(e.value)


def test_test_ids_in_train_all_named(turtle_copy):
    train = pd.read_csv(csv_path(turtle_copy, "train.csv"), dtype=str)
    test = pd.read_csv(csv_path(turtle_copy, "test.csv"), dtype=str)
    test.loc[len(test)] = [train["image_id"][1], "top"]
    test.loc[len(test)] = [train["image_id"][2], "top"]
    test.to_csv(csv_path(turtle_copy, "test.csv"), index=False)
    with pytest.raises(DataError) as e:
        convert(turtle_copy)
    assert_names_all(e.value, [f"test image_id {train['image_id'][1]}", f"test image_id {train['image_id'][2]}"])
    assert_no_output(turtle_copy)


def test_cli_prints_one_error_without_traceback_and_exits_2(turtle_copy, capsys):
    os.remove(os.path.join(turtle_copy, "images", "ID_000004.JPG"))
    os.remove(os.path.join(turtle_copy, "images", "ID_000005.JPG"))
    code = main(["--data_dir", turtle_copy, "--n_folds", "3", "--workers", "1", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "ID_000004" in err and "ID_000005" in err
    assert_no_output(turtle_copy)


def test_failed_rerun_keeps_previous_output(turtle_copy):
    first = convert(turtle_copy)
    before = sorted(os.listdir(first["dir"]))
    with open(os.path.join(turtle_copy, "images", "ID_000002.JPG"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError):
        convert(turtle_copy)
    assert sorted(os.listdir(first["dir"])) == before
    assert sorted(n for n in os.listdir(turtle_copy) if "tfrec" in n) == [".tfrec.foldnet", "tfrec"]  # + its record


def test_refuses_to_replace_a_directory_with_foreign_files(turtle_copy):
    from foldnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="not written by foldnet"):
        create_tfrecords(data_dir=turtle_copy, out_dir=turtle_copy, n_folds=3, workers=1, progress=False)
    assert os.path.exists(os.path.join(turtle_copy, "train.csv"))


# ---------------------------------------------------------------- --skip_bad


def test_skip_bad_writes_the_good_rows_and_lists_the_skipped(turtle_copy, capsys):
    images = os.path.join(turtle_copy, "images")
    os.remove(os.path.join(images, "ID_000003.JPG"))  # missing (train)
    with open(os.path.join(images, "ID_000070.JPG"), "wb") as f:  # corrupt (test)
        f.write(b"junk")
    train = pd.read_csv(csv_path(turtle_copy, "train.csv"), dtype=str)
    extra = pd.read_csv(csv_path(turtle_copy, "extra_images.csv"), dtype=str)
    extra.loc[len(extra)] = [train["image_id"][0], "t_id_other"]  # two labels: both rows dropped
    extra.to_csv(csv_path(turtle_copy, "extra_images.csv"), index=False)
    m = convert(turtle_copy, skip_bad=True)
    skipped = {(s["id"], s["source"]) for s in m["skipped"]}
    assert skipped == {("ID_000003", "train.csv line 5"), (train["image_id"][0], "train.csv line 2"),
                       (train["image_id"][0], "extra_images.csv line 34"), ("ID_000070", "images/ID_000070.JPG")}
    assert all(s["reason"] for s in m["skipped"])
    assert m["n_examples"] == 60 - 2 and m["test"]["n_examples"] == 11
    folds = pd.read_csv(os.path.join(m["dir"], "folds.csv"))
    assert len(folds) == 58 and not {"ID_000003", train["image_id"][0]} & set(folds["id"])
    err = capsys.readouterr().err
    assert "skipped 4" in err and "ID_000070" in err


def test_turtle_layout_folds_default_to_the_original_solutions_seed(tiny_turtle_dir, tmp_path):
    # vecxoz/turtle-recall create_cv_split: StratifiedKFold(shuffle=True, random_state=33) on the
    # LabelEncoder codes of train.csv then extra_images.csv: the Turtle layout's default folds.
    from sklearn.model_selection import StratifiedKFold

    from foldnet.tasks.classification.convert import GENERIC_FOLD_SEED, TURTLE_FOLD_SEED

    assert (TURTLE_FOLD_SEED, GENERIC_FOLD_SEED) == (33, 42)
    manifest = create_tfrecords(data_dir=tiny_turtle_dir, out_dir=str(tmp_path / "tfrec"), n_folds=3, workers=1,
                                progress=False)
    assert manifest["flags"]["seed"] == 33
    rows = pd.concat([pd.read_csv(csv_path(tiny_turtle_dir, name), dtype=str)
                      for name in ("train.csv", "extra_images.csv")], ignore_index=True)
    codes = np.unique(rows["turtle_id"], return_inverse=True)[1]
    want = np.zeros(len(rows), np.int64)
    for fold, (_, val) in enumerate(StratifiedKFold(n_splits=3, shuffle=True, random_state=33).split(rows, codes)):
        want[val] = fold
    got = pd.read_csv(tmp_path / "tfrec" / "folds.csv", dtype=str).set_index("id")["fold"].astype(int)
    np.testing.assert_array_equal(got.loc[rows["image_id"]].to_numpy(), want)
    # an explicit --seed wins; the generic layout keeps 42
    assert main(["--data_dir", tiny_turtle_dir, "--out_dir", str(tmp_path / "t42"), "--n_folds", "3", "--seed", "42",
                 "--workers", "1", "--no_progress"]) == 0
    got42 = pd.read_csv(tmp_path / "t42" / "folds.csv", dtype=str).set_index("id")["fold"].astype(int)
    assert (got42.loc[rows["image_id"]].to_numpy() != want).any()


def test_conversion_says_which_open_set_rule_the_data_gets(tiny_turtle_dir, tmp_path, capsys):
    from foldnet.tasks.classification.convert import openset_plan

    create_tfrecords(data_dir=tiny_turtle_dir, out_dir=str(tmp_path / "tfrec"), n_folds=3, workers=1, progress=False)
    out = capsys.readouterr().err  # (create_tfrecords says its notes on stderr)
    assert "open-set rule: fitted out of fold without re-split folds" in out and "0.005" in out
    # every label original (a closed set): no rule
    closed = LabelMap(["a", "b", "c", "d", "e", "f"])
    assert openset_plan(closed).startswith("open-set rule: none")
    opened = LabelMap(["a", "b", "c", "d", "e", "x"], original=["a", "b", "c", "d", "e"])
    assert "3 held-out individuals" in openset_plan(opened, 3) and "held-out individuals' out-of-fold" not in \
        openset_plan(opened, 0)
