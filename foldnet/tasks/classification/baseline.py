"""A simple image-classification baseline: logistic regression on 16x16 grayscale thumbnails.

    python -m foldnet.tasks.classification.baseline --data_dir data/demo --out data/demo/baseline.csv

Reads a Turtle Recall layout (train + extra images, originals from
train.csv), describes every image by the mean-centred, unit-norm 16x16
grayscale thumbnail the converter uses for near-duplicate grouping
(``images.thumbnail``), fits a multinomial logistic regression on the
training images and writes a submission of the test images with the same
top-5 / new-individual rule and validation as foldnet's own
(``submission.make_submission``), so ``foldnet.tasks.classification.evaluate`` scores both on the
same test images. No TensorFlow.
"""
import argparse
import os
import sys

import numpy as np

from foldnet.core.errors import DataError
from foldnet.io import images
from foldnet.tasks.classification import layouts, submission
from foldnet.tasks.classification import task as classification
from foldnet.tasks.classification.labels import LabelMap


def thumbnails(paths, workers=1, progress=False, desc="thumbnails"):
    """[n, 256] thumbnails of ``paths``; one DataError naming every unreadable file."""
    out, problems = [], []
    for path, (ok, value) in zip(paths, images.map_images(images.thumb_task, paths, workers, desc, progress)):
        if ok:
            out.append(value)
        else:
            problems.append(f"{path}: {value}")
    if problems:
        raise DataError(f"{len(problems)} image(s) cannot be read", problems)
    return np.stack(out) if out else np.zeros((0, images.THUMB_SIZE ** 2), np.float32)


def fit_predict(train_x, train_y, test_x, n_classes, c=1.0, seed=0):
    """Class probabilities [n_test, n_classes] of a logistic regression fitted on (train_x, train_y).

    Classes absent from ``train_y`` get probability 0.
    """
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x, train_y)
    probs = np.zeros((len(test_x), n_classes), np.float32)
    probs[:, model.classes_] = model.predict_proba(test_x)
    return probs


def run(data_dir, out, template=None, workers=1, progress=True):
    """Fit on the layout's training images, write the test submission to ``out``; returns ``out``."""
    template = template or os.path.join(data_dir, "sample_submission.csv")
    dataset = layouts.read_turtle(data_dir)
    if dataset.test.empty:
        raise DataError(f"{data_dir}: no test images to predict")
    tmpl = classification.read_template(template)
    label_map = LabelMap.fit(dataset.train["label"], original=dataset.original, new_label=dataset.new_label)
    train_x = thumbnails(list(dataset.train["path"]), workers, progress, "train thumbnails")
    test_x = thumbnails(list(dataset.test["path"]), workers, progress, "test thumbnails")
    probs = fit_predict(train_x, label_map.encode(dataset.train["label"]), test_x, label_map.n_classes)
    df = submission.make_submission(dataset.test["id"].to_numpy(), probs, label_map, tmpl)
    return submission.write_submission(df, out, tmpl, label_map)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="a Turtle Recall layout")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--template", default=None, help="submission template (default: DATA_DIR/sample_submission.csv)")
    p.add_argument("--workers", type=int, default=1, help="image reading processes")
    a = p.parse_args(argv)
    from foldnet.core import fileio
    from foldnet.core.cli import run_main

    def work():
        template = a.template or os.path.join(a.data_dir, "sample_submission.csv")
        fileio.check_owned_output(a.out, inputs=[template], flag="--out")
        run(a.data_dir, a.out, template, a.workers)

    rc = run_main(work)
    if rc == 0:
        print(f"wrote {a.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
