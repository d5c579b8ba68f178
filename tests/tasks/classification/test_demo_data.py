"""The bundled demo datasets: digits (7 original, 3 extra-only) and photos; Turtle Recall layout, deterministic."""
import hashlib
import os

import numpy as np
import pandas as pd
from PIL import Image

import foldnet  # noqa: F401
from foldnet.commands import demo_data as demo_cli
from foldnet.tasks.classification import demo_data

LAYOUT_COLUMNS = {
    "train": ["image_id", "image_location", "turtle_id"],
    "extra_images": ["image_id", "turtle_id"],
    "test": ["image_id", "image_location"],
    "answers": ["image_id", "turtle_id", "individual_kind"],
    "sample_submission": ["image_id"] + [f"prediction{k}" for k in range(1, 6)],
}


def read_layout(d):
    """The five CSVs of a Turtle Recall layout, each checked for its columns."""
    tables = {name: pd.read_csv(os.path.join(d, f"{name}.csv"), dtype=str) for name in LAYOUT_COLUMNS}
    for name, cols in LAYOUT_COLUMNS.items():
        assert list(tables[name].columns) == cols, name
    return tables["train"], tables["extra_images"], tables["test"], tables["answers"], tables["sample_submission"]


def test_demo_layout_and_rules(tmp_path):
    d = demo_data.build_demo_dataset(str(tmp_path / "demo"), image_size=16)
    train, extra, test, answers, sample = read_layout(d)
    originals = {demo_data.digit_id(k) for k in range(7)}
    assert set(train["turtle_id"]) == originals
    assert set(extra["turtle_id"]) - originals == {demo_data.digit_id(k) for k in (7, 8, 9)}
    assert len(train) + len(extra) + len(test) == 1797
    assert set(test["image_id"]).isdisjoint(set(train["image_id"]) | set(extra["image_id"]))
    assert answers["image_id"].tolist() == test["image_id"].tolist() == sample["image_id"].tolist()
    assert set(answers["turtle_id"]) == originals | {"new_turtle"}
    new = answers["turtle_id"] == "new_turtle"
    assert set(answers.loc[new, "individual_kind"]) == {"extra_only"}
    assert set(answers.loc[~new, "individual_kind"]) == {"original"}
    img = Image.open(os.path.join(d, "images", train["image_id"][0] + ".JPG"))
    assert img.format == "JPEG" and img.size == (16, 16) and img.mode == "RGB"


def test_demo_is_deterministic(tmp_path):
    def digest(d):
        h = hashlib.sha256()
        for name in sorted(os.listdir(d)):
            if name.endswith(".csv"):
                h.update(open(os.path.join(d, name), "rb").read())
        for name in sorted(os.listdir(os.path.join(d, "images")))[:50]:
            h.update(open(os.path.join(d, "images", name), "rb").read())
        return h.hexdigest()

    a = demo_data.build_demo_dataset(str(tmp_path / "a"), image_size=16)
    b = demo_data.build_demo_dataset(str(tmp_path / "b"), image_size=16)
    assert digest(a) == digest(b)


def test_photo_dataset_layout_and_rules(tmp_path):
    d = demo_data.build_photo_dataset(str(tmp_path / "photos"), n_individuals=8, per_individual=5, size=24,
                                      n_test_only=2)
    train, extra, test, answers, sample = read_layout(d)
    labels = set(train["turtle_id"]) | set(extra["turtle_id"])
    assert len(labels) == 8 and len(set(train["turtle_id"])) == 6  # individuals 3 and 7 are extra-only
    # 20 % of the trained individuals' photos (one each) plus 2 test-only individuals x 5 // 2 photos
    assert len(train) + len(extra) + len(test) == 40 + 4 and len(test) == 8 + 4
    assert set(test["image_id"]).isdisjoint(set(train["image_id"]) | set(extra["image_id"]))
    assert answers["image_id"].tolist() == test["image_id"].tolist() == sample["image_id"].tolist()
    assert set(answers["turtle_id"]) == set(train["turtle_id"]) | {"new_turtle"}
    assert set(sample.iloc[0, 1:]) <= set(train["turtle_id"])
    kinds = answers["individual_kind"].value_counts().to_dict()
    assert kinds == {"original": 6, "extra_only": 2, "test_only": 4}
    assert (answers.loc[answers["individual_kind"] != "original", "turtle_id"] == "new_turtle").all()
    # the test-only individuals are none of the trained ones, and the trained part does not depend on them
    d0 = demo_data.build_photo_dataset(str(tmp_path / "photos0"), n_individuals=8, per_individual=5, size=24,
                                       n_test_only=0)
    train0, extra0, test0, answers0, _ = read_layout(d0)
    assert train0.equals(train) and extra0.equals(extra) and test0.equals(test.iloc[:8])
    for i in train["image_id"][:3]:
        assert open(os.path.join(d, "images", i + ".JPG"), "rb").read() == \
            open(os.path.join(d0, "images", i + ".JPG"), "rb").read()
    # Several individuals come from one photo (fine-grained), from more than one photo overall.
    photos = [label.rsplit("_", 2)[0] for label in labels]
    assert len(set(photos)) > 1 and len(set(photos)) < len(photos)
    views = [np.asarray(Image.open(os.path.join(d, "images", i + ".JPG"))) for i in train["image_id"][:5]]
    assert all(v.shape == (24, 24, 3) and v.dtype == np.uint8 for v in views)
    assert min(np.abs(a.astype(int) - b).mean() for a, b in zip(views, views[1:])) > 1  # distinct photos


def test_photo_dataset_converts_and_is_deterministic(tmp_path):
    from foldnet.tasks.classification.convert import create_tfrecords

    a = demo_data.build_photo_dataset(str(tmp_path / "a"), n_individuals=6, per_individual=5, size=20, seed=3)
    b = demo_data.build_photo_dataset(str(tmp_path / "b"), n_individuals=6, per_individual=5, size=20, seed=3)
    for name in ["train.csv", "extra_images.csv", "test.csv", "answers.csv"]:
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    assert sorted(os.listdir(os.path.join(a, "images"))) == sorted(os.listdir(os.path.join(b, "images")))
    first = sorted(os.listdir(os.path.join(a, "images")))[0]
    assert open(os.path.join(a, "images", first), "rb").read() == open(os.path.join(b, "images", first), "rb").read()
    manifest = create_tfrecords(data_dir=a, out_dir=str(tmp_path / "tfrec"), n_folds=2, workers=1, progress=False)
    assert manifest["n_classes"] == 6 and manifest["n_examples"] == 24


def test_cli_kinds(tmp_path):
    assert demo_cli.main(["--kind", "photos", "--out_dir", str(tmp_path / "p"), "--image_size", "16",
                           "--n_individuals", "4", "--per_individual", "5"]) == 0
    assert Image.open(next((tmp_path / "p" / "images").iterdir())).size == (16, 16)
    assert demo_cli.main(["--out_dir", str(tmp_path / "d"), "--image_size", "8"]) == 0
    assert len(pd.read_csv(tmp_path / "d" / "answers.csv")) == 360
