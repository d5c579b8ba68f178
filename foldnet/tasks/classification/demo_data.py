"""Bundled demo datasets, laid out exactly like Turtle Recall.

Two builders, both deterministic and made from real images shipped inside
installed packages (no download):

* ``build_demo_dataset`` (``--kind digits``, the ``make demo`` data):
  scikit-learn's handwritten digits, each 8x8 image upscaled to a small RGB
  JPEG with a random tint. Digits 0-6 are the "original" individuals of
  train.csv; digits 7-9 appear only in extra_images.csv, so the submission
  must turn them into ``new_turtle``.
* ``build_photo_dataset`` (``--kind photos``): a stand-in for a user's own
  small re-identification dataset (a few hundred ~100 px photos of a few
  dozen individuals). Each "individual" is a textured region of one of the
  colour photographs bundled with scikit-learn and scikit-image; several
  individuals are neighbouring, partly overlapping regions of the same photo,
  so telling them apart is fine-grained. Each "photo" of an individual is a
  random view: zoom 0.8-1.25, rotation +-20 degrees, shift, a mirror image
  half of the time (a mirrored face or animal is the same individual),
  brightness / contrast / saturation / white-balance jitter, mild blur,
  sensor noise and JPEG quality 70-95. One individual in four is extra-only
  (trained on as a class, ``new_turtle`` in a submission), and a few more
  individuals appear only in the test set (never seen in training, also
  ``new_turtle``): the open-set case of a real re-identification test set.

Both write ``train.csv``, ``extra_images.csv``, ``test.csv``,
``sample_submission.csv``, ``images/<id>.JPG`` and ``answers.csv`` (the truth
for the test split in submission terms: an original id, or ``new_turtle``;
its third column ``individual_kind`` says ``original``, ``extra_only`` or
``test_only`` for analysis).
"""
import hashlib
import io
import math
import os

import numpy as np
import pandas as pd

from foldnet.core.errors import ConfigError
from foldnet.io.demo import dataset_dir
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL

N_ORIGINAL = 7
LOCATIONS = ["top", "left", "right"]


def digit_id(d):
    return f"t_id_digit{int(d)}"


def _image_id(i, prefix="foldnet-demo"):
    return "ID_" + hashlib.sha1(f"{prefix}-{i}".encode()).hexdigest()[:8].upper()


# ---------------------------------------------------------------- shared layout writing


def split_rows(labels, is_original, test_fraction, extra_fraction, rng, seed):
    """(train_rows, extra_rows, test_rows) of a stratified Turtle Recall split.

    ``test_fraction`` of every label goes to test; of the rest, originals go to
    train.csv except ``extra_fraction`` of them drawn with ``rng`` (Turtle
    Recall's extra images include known individuals too), and non-originals
    go to extra_images.csv only.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    is_original = np.asarray(is_original, bool)
    rest, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                  random_state=seed)
    original = is_original[rest]
    to_extra = original & (rng.random(len(rest)) < extra_fraction)
    train_rows = rest[original & ~to_extra]
    extra_rows = np.concatenate([rest[~original], rest[to_extra]])
    return train_rows, extra_rows, test


def save_jpeg(path, rgb, quality=95):
    """Write an RGB uint8 array as a JPEG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=int(quality))
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_layout(root, ids, labels, original, train_rows, extra_rows, test_rows):
    """The CSV files of the Turtle Recall layout in ``root`` (images are the caller's).

    ids, labels: per image; original: the labels that are "original" (those
    of train.csv); *_rows: indices into ids/labels. A test label that is in
    neither train nor extra rows is a test-only individual.
    """
    ids, labels = list(ids), list(labels)
    original = set(original)
    trained = {labels[i] for i in train_rows} | {labels[i] for i in extra_rows}
    loc = [LOCATIONS[i % 3].capitalize() for i in range(len(ids))]  # mixed case, like the original
    pd.DataFrame({
        "image_id": [ids[i] for i in train_rows],
        "image_location": [loc[i] for i in train_rows],
        "turtle_id": [labels[i] for i in train_rows],
    }).to_csv(os.path.join(root, "train.csv"), index=False)
    pd.DataFrame({
        "image_id": [ids[i] for i in extra_rows],
        "turtle_id": [labels[i] for i in extra_rows],
    }).to_csv(os.path.join(root, "extra_images.csv"), index=False)
    test_ids = [ids[i] for i in test_rows]
    pd.DataFrame({
        "image_id": test_ids,
        "image_location": [loc[i] for i in test_rows],
    }).to_csv(os.path.join(root, "test.csv"), index=False)
    sample = pd.DataFrame({"image_id": test_ids})
    for k, label in enumerate(sorted(original)[:5], 1):
        sample[f"prediction{k}"] = label
    sample.to_csv(os.path.join(root, "sample_submission.csv"), index=False)
    pd.DataFrame({
        "image_id": test_ids,
        "turtle_id": [labels[i] if labels[i] in original else DEFAULT_NEW_LABEL for i in test_rows],
        "individual_kind": ["original" if labels[i] in original else "extra_only" if labels[i] in trained
                            else "test_only" for i in test_rows],
    }).to_csv(os.path.join(root, "answers.csv"), index=False)


# ---------------------------------------------------------------- digits


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
    """Write the digits demo dataset into ``out_dir`` and return its path.

    An existing ``out_dir`` is replaced only if this module built it (ConfigError otherwise)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    y = digits.target
    rng = np.random.default_rng(seed)
    rows = split_rows(y, y < N_ORIGINAL, test_fraction, extra_fraction, rng, seed)
    ids = [_image_id(i) for i in range(len(y))]
    with dataset_dir(out_dir, "digits") as tmp:
        for i, image_id in enumerate(ids):
            save_jpeg(os.path.join(tmp, "images", image_id + ".JPG"), _render(digits.images[i], image_size, rng))
        write_layout(tmp, ids, [digit_id(d) for d in y], {digit_id(d) for d in range(N_ORIGINAL)}, *rows)
    return out_dir


# ---------------------------------------------------------------- photos

PHOTO_REGION = 120  # side in source pixels of an individual's region (at zoom 1)
PHOTO_STRIDE = 0.75  # neighbouring regions overlap by 1 - PHOTO_STRIDE of their side
PHOTO_MIN_STD = 30.0  # regions flatter than this (grey-level std) are skipped: no identity to learn


def source_photos():
    """[(name, RGB uint8 array)] of the colour photographs the photo dataset is cut from."""
    from sklearn.datasets import load_sample_images

    try:
        from skimage import data as skdata
    except ImportError as error:
        raise ImportError("the photo demo dataset needs scikit-image (pip install scikit-image)") from error
    sk = load_sample_images()
    photos = [(os.path.splitext(os.path.basename(name))[0], np.asarray(img))
              for name, img in zip(sk.filenames, sk.images)]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
        photos.append((name, np.asarray(getattr(skdata, name)())[..., :3]))
    return photos


def _regions(photos, n_individuals, rng):
    """[(photo index, centre y, centre x)] of ``n_individuals`` regions.

    Each photo contributes a cluster of neighbouring grid cells (stride
    PHOTO_STRIDE * PHOTO_REGION, so neighbours overlap), nearest to a random
    anchor first; photos take turns until there are enough.
    """
    side, step = PHOTO_REGION, PHOTO_STRIDE * PHOTO_REGION
    queues = []
    for p, (_, img) in enumerate(photos):
        h, w = img.shape[:2]
        grey = img.astype(np.float32).mean(axis=2)
        cells = []
        for cy in np.arange(side / 2, h - side / 2 + 1, step):
            for cx in np.arange(side / 2, w - side / 2 + 1, step):
                y0, x0 = int(cy - side / 2), int(cx - side / 2)
                if grey[y0:y0 + side, x0:x0 + side].std() >= PHOTO_MIN_STD:
                    cells.append((p, float(cy), float(cx)))
        anchor = cells[rng.integers(len(cells))]
        cells.sort(key=lambda c: (c[1] - anchor[1]) ** 2 + (c[2] - anchor[2]) ** 2)
        queues.append(cells)
    out = []
    while len(out) < n_individuals:
        if not any(queues):
            raise ConfigError(f"the source photos hold fewer than {n_individuals} distinct regions")
        for queue in queues:
            if queue and len(out) < n_individuals:
                out.append(queue.pop(0))
    return out


def _view(padded, pad, cy, cx, size, rng, mirror_probability):
    """One random "photo" (RGB uint8 [size, size, 3]) of the region centred at (cy, cx)."""
    from PIL import Image, ImageFilter

    zoom = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    angle = math.radians(rng.uniform(-20.0, 20.0))
    dy, dx = rng.uniform(-0.1, 0.1, size=2) * PHOTO_REGION
    k = PHOTO_REGION * zoom / size  # source pixels per output pixel
    cos, sin = math.cos(angle) * k, math.sin(angle) * k
    centre = size / 2.0
    y_in, x_in = cy + pad + dy, cx + pad + dx
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    matrix = (cos, -sin, x_in - cos * centre + sin * centre, sin, cos, y_in - sin * centre - cos * centre)
    img = padded.transform((size, size), Image.AFFINE, matrix, resample=Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    x = np.asarray(img, np.float32) / 255.0
    if rng.random() < mirror_probability:
        x = x[:, ::-1]
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = x.mean() + (x - x.mean()) * rng.uniform(0.7, 1.3)  # contrast
    x = x * rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=3)  # brightness, white balance
    x = x + rng.normal(0.0, rng.uniform(0.0, 0.03), size=x.shape)  # sensor noise
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def build_photo_dataset(out_dir, n_individuals=36, per_individual=12, size=100, seed=0, test_fraction=0.2,
                        extra_fraction=0.25, mirror_probability=0.5, n_test_only=None):
    """Write the photo re-identification dataset into ``out_dir`` (replacing it); return its path.

    ``n_individuals`` regions x ``per_individual`` random views, ``size`` x
    ``size`` JPEGs; individuals 3, 7, 11, ... (one in four) are extra-only.
    Then ``n_test_only`` (default ``n_individuals // 6``) more regions with
    ``max(1, per_individual // 2)`` views each, all in test.csv: individuals no
    training set holds (``new_turtle``). The first ``n_individuals`` and their
    images do not depend on ``n_test_only``. Needs scikit-image (for its
    bundled photographs).
    """
    from PIL import Image

    if n_individuals < 2 or per_individual < 2:
        raise ConfigError("--n_individuals and --per_individual must be at least 2")
    n_test_only = n_individuals // 6 if n_test_only is None else int(n_test_only)
    if n_test_only < 0:
        raise ConfigError(f"--n_test_only must be >= 0, got {n_test_only}")
    rng = np.random.default_rng(seed)
    photos = source_photos()
    regions = _regions(photos, n_individuals + n_test_only, rng)
    names = [f"t_id_{photos[p][0]}_{int(cy)}_{int(cx)}" for p, cy, cx in regions]
    labels = np.repeat(names[:n_individuals], per_individual)
    is_original = np.repeat([i % 4 != 3 for i in range(n_individuals)], per_individual)
    train_rows, extra_rows, test_rows = split_rows(labels, is_original, test_fraction, extra_fraction, rng, seed)
    n_seen = len(labels)
    test_only_views = max(1, per_individual // 2)
    image_region = list(np.repeat(np.arange(n_individuals), per_individual))
    image_region += list(np.repeat(np.arange(n_individuals, n_individuals + n_test_only), test_only_views))
    labels = np.concatenate([labels, np.repeat(names[n_individuals:], test_only_views)]).astype(str)
    rows = (train_rows, extra_rows, np.concatenate([test_rows, np.arange(n_seen, len(labels))]).astype(int))
    pad = PHOTO_REGION
    padded = [Image.fromarray(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")) for _, img in photos]
    ids = [_image_id(i, "foldnet-photos") for i in range(len(labels))]
    with dataset_dir(out_dir, "photos") as tmp:
        for i, image_id in enumerate(ids):
            p, cy, cx = regions[image_region[i]]
            view = _view(padded[p], pad, cy, cx, size, rng, mirror_probability)
            save_jpeg(os.path.join(tmp, "images", image_id + ".JPG"), view, quality=rng.integers(70, 96))
        write_layout(tmp, ids, labels, set(labels[:n_seen][is_original]), *rows)
    return out_dir





def digits_from_args(out_dir, a):
    """``foldnet demo-data --kind digits`` (the make-demo data) at --image_size (32)."""
    return build_demo_dataset(out_dir, image_size=a.image_size or 32, seed=a.seed)


def photos_from_args(out_dir, a):
    """``foldnet demo-data --kind photos``: --n_individuals x --per_individual photos of --image_size (100)."""
    return build_photo_dataset(out_dir, n_individuals=a.n_individuals, per_individual=a.per_individual,
                               size=a.image_size or 100, seed=a.seed, n_test_only=a.n_test_only)
