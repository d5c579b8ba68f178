"""The bundled demo dataset: Turtle Recall layout, 7 original digits, 3 extra-only, deterministic."""
import foldnet  # noqa: F401

import hashlib
import os

import pandas as pd
from PIL import Image

from foldnet import demo_data


def test_demo_layout_and_rules(tmp_path):
    d = demo_data.build_demo_dataset(str(tmp_path / "demo"), image_size=16)
    train = pd.read_csv(os.path.join(d, "train.csv"), dtype=str)
    extra = pd.read_csv(os.path.join(d, "extra_images.csv"), dtype=str)
    test = pd.read_csv(os.path.join(d, "test.csv"), dtype=str)
    answers = pd.read_csv(os.path.join(d, "answers.csv"), dtype=str)
    sample = pd.read_csv(os.path.join(d, "sample_submission.csv"), dtype=str)
    assert list(train.columns) == ["image_id", "image_location", "turtle_id"]
    assert list(extra.columns) == ["image_id", "turtle_id"]
    assert list(sample.columns) == ["image_id"] + [f"prediction{k}" for k in range(1, 6)]
    originals = {demo_data.digit_id(k) for k in range(7)}
    assert set(train["turtle_id"]) == originals
    assert set(extra["turtle_id"]) - originals == {demo_data.digit_id(k) for k in (7, 8, 9)}
    assert len(train) + len(extra) + len(test) == 1797
    assert set(test["image_id"]).isdisjoint(set(train["image_id"]) | set(extra["image_id"]))
    assert answers["image_id"].tolist() == test["image_id"].tolist() == sample["image_id"].tolist()
    assert set(answers["turtle_id"]) == originals | {"new_turtle"}
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
