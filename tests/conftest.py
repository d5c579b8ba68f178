"""Shared test fixtures.

``tiny_turtle_dir``: a tiny dataset in the Turtle Recall layout.
``tiny_tfrec``: that dataset converted by create_tfrecords (n_folds=3).
Both are session-scoped and must be treated as read-only by tests.

``turtle_copy``: a fresh, writable copy of ``tiny_turtle_dir`` for one test.
"""
import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import foldnet  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# The suite's models and tensors are tiny: oneDNN's graph rewrites and primitive set-up cost more than
# they save there (the training and segmentation test files: 143 s -> 131 s, two runs each). Set before
# TensorFlow is imported, so test processes and the scripts they start run without them; the demos run
# TensorFlow's default. TF_ENABLE_ONEDNN_OPTS=1 make test runs the suite with them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# Tiny Turtle Recall dataset: 6 classes x 10 training images (16x16 RGB JPEG).
# Classes 0-3 are in train.csv (some of their images in extra_images.csv too);
# classes 4-5 appear only in extra_images.csv, so they are not "original" and
# map to "new_turtle" at submission. Each class has its own colour and stripe
# orientation plus noise, so a tiny model can fit them.
TINY_SIZE = 16
TINY_N_CLASSES = 6
TINY_PER_CLASS = 10
TINY_N_ORIGINAL = 4
TINY_TEST_PER_CLASS = 2  # 12 test images
TINY_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 210, 30), (200, 40, 210), (30, 200, 210)]
TINY_LOCATIONS = ["Top", "Left", "Right"]


def tiny_turtle_id(c):
    return f"t_id_{c:04d}aa"


def tiny_image(cls, rng, size=TINY_SIZE):
    """An RGB uint8 array for class ``cls``: class colour, class stripes, noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx if cls % 2 else yy) // 2 + cls) % 3 == 0
    img = np.empty((size, size, 3), np.float32)
    img[:] = TINY_COLOURS[cls % len(TINY_COLOURS)]
    img[stripes] *= 0.4
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(arr, quality=95):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_tiny_turtle_dir(root, seed=0):
    """Write the tiny Turtle Recall layout under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    train, extra, test, answers = [], [], [], []
    n = 0
    for c in range(TINY_N_CLASSES):
        tid = tiny_turtle_id(c)
        for k in range(TINY_PER_CLASS + TINY_TEST_PER_CLASS):
            image_id = f"ID_{n:06d}"
            n += 1
            with open(os.path.join(images, f"{image_id}.JPG"), "wb") as f:
                f.write(jpeg_bytes(tiny_image(c, rng)))
            location = TINY_LOCATIONS[k % len(TINY_LOCATIONS)]
            if k >= TINY_PER_CLASS:
                test.append((image_id, location))
                answers.append((image_id, tid))
            elif c < TINY_N_ORIGINAL and k < 7:
                train.append((image_id, location, tid))
            else:
                extra.append((image_id, tid))
    pd.DataFrame(train, columns=["image_id", "image_location", "turtle_id"]).to_csv(
        os.path.join(root, "train.csv"), index=False)
    pd.DataFrame(extra, columns=["image_id", "turtle_id"]).to_csv(
        os.path.join(root, "extra_images.csv"), index=False)
    pd.DataFrame(test, columns=["image_id", "image_location"]).to_csv(
        os.path.join(root, "test.csv"), index=False)
    sub = pd.DataFrame({"image_id": [t[0] for t in test]})
    for k in range(1, 6):
        sub[f"prediction{k}"] = tiny_turtle_id(k - 1)
    sub.to_csv(os.path.join(root, "sample_submission.csv"), index=False)
    pd.DataFrame(answers, columns=["image_id", "turtle_id"]).to_csv(
        os.path.join(root, "answers.csv"), index=False)
    return root


@pytest.fixture(scope="session")
def tiny_turtle_dir(tmp_path_factory):
    """Path (str) of a tiny Turtle Recall dataset (read-only).

    train.csv: 4 classes x 7 images; extra_images.csv: 3 more images of each of
    those and 10 images of each of 2 extra-only classes (60 training images,
    6 classes, 4 original). test.csv: 2 images per class (12);
    answers.csv: image_id,turtle_id of the test images (true turtle ids; the
    4 test images of extra-only classes count as "new_turtle" in a submission).
    """
    return write_tiny_turtle_dir(str(tmp_path_factory.mktemp("tiny_turtle")))


@pytest.fixture(scope="session")
def tiny_tfrec(tiny_turtle_dir, tmp_path_factory):
    """Path (str) of ``tiny_turtle_dir`` converted to TFRecords with n_folds=3 (read-only)."""
    from foldnet.tasks.classification.convert import create_tfrecords

    out_dir = str(tmp_path_factory.mktemp("tiny_tfrec") / "tfrec")
    create_tfrecords(data_dir=tiny_turtle_dir, out_dir=out_dir, n_folds=3, workers=1, progress=False)
    return out_dir


@pytest.fixture
def turtle_copy(tiny_turtle_dir, tmp_path):
    """Path (str) of a writable copy of ``tiny_turtle_dir`` (for tests that change it)."""
    return shutil.copytree(tiny_turtle_dir, str(tmp_path / "turtle"))


@pytest.fixture
def log_lines():
    """The messages foldnet's loggers emit at INFO and above during the test, as a list."""
    import logging

    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("foldnet")
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
