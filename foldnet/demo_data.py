"""The bundled demo dataset, laid out exactly like Turtle Recall.

Built deterministically from scikit-learn's handwritten digits (real data
shipped inside the scikit-learn wheel, no download): each 8x8 image is
upscaled to a small RGB JPEG with a random tint. Digits 0-6 are the
"original" individuals of train.csv; digits 7-9 appear only in
extra_images.csv, so the submission must turn them into ``new_turtle``.
``answers.csv`` holds the truth for the test split in submission terms
(an original id, or ``new_turtle``).
"""
import argparse
import hashlib
import io
import os
import sys

import numpy as np
import pandas as pd

from . import fileio

N_ORIGINAL = 7
NEW_LABEL = "new_turtle"
LOCATIONS = ["top", "left", "right"]


def digit_id(d):
    return f"t_id_digit{int(d)}"


def _image_id(i):
    return "ID_" + hashlib.sha1(f"foldnet-demo-{i}".encode()).hexdigest()[:8].upper()


def _render(img8, size, rng):
    from PIL import Image

    x = (img8.astype(np.float32) / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(x, "L").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    ink = rng.uniform(0.0, 0.35, size=3)
    paper = rng.uniform(0.75, 1.0, size=3)
    rgb = paper[None, None, :] * (1.0 - big[..., None]) + ink[None, None, :] * big[..., None]
    rgb += rng.normal(0.0, 0.02, size=rgb.shape)
    return (rgb.clip(0, 1) * 255).round().astype(np.uint8)


def build_demo_dataset(out_dir, image_size=32, test_fraction=0.2, extra_fraction=0.25, seed=0):
    """Write the demo dataset into ``out_dir`` (replacing it) and return its path."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    y = digits.target
    n = len(y)
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    original = y[rest] < N_ORIGINAL
    # Originals are split between train.csv and extra_images.csv (Turtle Recall's
    # extra images include known turtles too); digits 7-9 are extra only.
    to_extra = original & (rng.random(len(rest)) < extra_fraction)
    train_rows = rest[original & ~to_extra]
    extra_rows = np.concatenate([rest[~original], rest[to_extra]])

    with fileio.atomic_dir(out_dir) as tmp:
        os.makedirs(os.path.join(tmp, "images"))
        for i in range(n):
            img = _render(digits.images[i], image_size, rng)
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=95)
            with open(os.path.join(tmp, "images", _image_id(i) + ".JPG"), "wb") as f:
                f.write(buf.getvalue())
        loc = [LOCATIONS[i % 3].capitalize() for i in range(n)]  # mixed case, like the original
        pd.DataFrame({
            "image_id": [_image_id(i) for i in train_rows],
            "image_location": [loc[i] for i in train_rows],
            "turtle_id": [digit_id(y[i]) for i in train_rows],
        }).to_csv(os.path.join(tmp, "train.csv"), index=False)
        pd.DataFrame({
            "image_id": [_image_id(i) for i in extra_rows],
            "turtle_id": [digit_id(y[i]) for i in extra_rows],
        }).to_csv(os.path.join(tmp, "extra_images.csv"), index=False)
        test_ids = [_image_id(i) for i in test]
        pd.DataFrame({
            "image_id": test_ids,
            "image_location": [loc[i] for i in test],
        }).to_csv(os.path.join(tmp, "test.csv"), index=False)
        sample = pd.DataFrame({"image_id": test_ids})
        for k in range(1, 6):
            sample[f"prediction{k}"] = digit_id(k - 1)
        sample.to_csv(os.path.join(tmp, "sample_submission.csv"), index=False)
        pd.DataFrame({
            "image_id": test_ids,
            "turtle_id": [digit_id(y[i]) if y[i] < N_ORIGINAL else NEW_LABEL for i in test],
        }).to_csv(os.path.join(tmp, "answers.csv"), index=False)
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description="Build the bundled digits demo dataset (Turtle Recall layout).")
    p.add_argument("--out_dir", default="data/demo", help="where to write it (replaced) (default: %(default)s)")
    p.add_argument("--image_size", type=int, default=32, help="side of the JPEGs in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a = p.parse_args(argv)
    build_demo_dataset(a.out_dir, image_size=a.image_size, seed=a.seed)
    print(f"demo dataset written to {a.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
