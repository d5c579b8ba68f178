"""Predictions: a fold's held-out (OOF) and test sets, and arbitrary image files.

Every TTA variant comes out of one pass over the data (each image is decoded
once and expanded to its views). Prediction files carry their image ids, the
label map's fingerprint and the checkpoint's fingerprint (Contract 2 in
docs/DESIGN.md), so ensembling never depends on row order and stale files are
recognised.
"""
import hashlib
import os

import foldnet  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from . import augment, data, fileio, images, submission
from .errors import DataError


def weights_fingerprint(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _predict_views(model, ds, n_views, batch_size, verbose=0):
    out = model.predict(ds, verbose=verbose)
    n_classes = out.shape[-1]
    out = out.reshape(-1, n_views, n_classes)
    return np.ascontiguousarray(out.transpose(1, 0, 2)).astype(np.float32)


def predict_records(model, files, dim, batch_size, tta_number, verbose=0):
    """(ids, labels, outputs [tta_number + 1, n, n_classes]) for the records in ``files``."""
    ids, labels = data.read_ids_labels(files)
    ds, n_views = data.tta_dataset(files, dim, batch_size, tta_number)
    outputs = _predict_views(model, ds, n_views, batch_size, verbose)
    if outputs.shape[1] != len(ids):
        raise RuntimeError(f"predicted {outputs.shape[1]} rows for {len(ids)} records")
    return ids, labels, outputs


def save_predictions(path, ids, outputs, labels, tta_names, label_map_fingerprint, weights_fp):
    with fileio.atomic_path(path) as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), outputs=np.asarray(outputs, np.float32),
                 labels=np.asarray(labels, np.int64), tta_names=np.asarray(tta_names, dtype=str),
                 label_map_fingerprint=np.asarray(label_map_fingerprint),
                 weights_fingerprint=np.asarray(weights_fp))
    return path


def load_predictions(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def is_current(path, weights_fp, label_map_fp, n_views, n_rows):
    """True if ``path`` holds predictions of this checkpoint, label map, TTA count and size."""
    if not os.path.exists(path):
        return False
    try:
        p = load_predictions(path)
    except (OSError, ValueError, KeyError):
        return False
    return (str(p.get("weights_fingerprint")) == weights_fp
            and str(p.get("label_map_fingerprint")) == label_map_fp
            and p["outputs"].shape[:2] == (n_views, n_rows))


def predict_split(model, files, out_path, dim, batch_size, tta_number, label_map_fp, weights_fp,
                  n_rows, log=print, verbose=0):
    """Predict ``files`` into ``out_path`` unless a current file is already there. Returns True if written."""
    n_views = tta_number + 1
    if is_current(out_path, weights_fp, label_map_fp, n_views, n_rows):
        log(f"  {os.path.basename(out_path)} is current; not predicted again")
        return False
    ids, labels, outputs = predict_records(model, files, dim, batch_size, tta_number, verbose)
    save_predictions(out_path, ids, outputs, labels, augment.tta_names(tta_number), label_map_fp, weights_fp)
    log(f"  wrote {out_path}: {outputs.shape[1]} rows x {outputs.shape[0]} TTA view(s)")
    return True


def load_image_files(paths, dim, tta_number):
    """Decode image files (any format create_tfrecords accepts) to TTA views [n * T, dim, dim, 3].

    Raises one DataError naming every file that cannot be read.
    """
    import tensorflow as tf

    encoded, problems = [], []
    for path in paths:
        try:
            encoded.append(images.load_image(path).data)
        except images.BadImage as e:
            problems.append(f"{path}: {e}")
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
    if problems:
        raise DataError(f"{len(problems)} of {len(paths)} image(s) cannot be read", problems)
    views = [augment.tta_views(data.decode_image(tf.constant(b), dim), tta_number) for b in encoded]
    return tf.concat(views, axis=0)


def predict_images(model_loader, weights_paths, image_paths, dim, tta_number, label_map, k=5):
    """Average the given checkpoints (and TTA views) over ``image_paths``.

    ``model_loader(weights_path)`` returns a model with those weights. Returns
    ``(probs [n, n_classes], rows)`` where rows[i] is a list of k
    (label, probability) pairs after the new-individual mapping: an original
    label keeps its probability; the new-individual label shows the
    probability of the non-original class that placed it.
    """
    if not weights_paths:
        raise DataError("no checkpoints to predict with", ["give --checkpoints, or a --run_dir with trained folds"])
    x = load_image_files(image_paths, dim, tta_number)
    n_views = tta_number + 1
    total = None
    for w in weights_paths:
        model = model_loader(w)
        p = model.predict(x, verbose=0).reshape(len(image_paths), n_views, -1).mean(axis=1)
        total = p if total is None else total + p
    probs = total / len(weights_paths)
    return probs, labelled_top_k(probs, label_map, k)


def labelled_top_k(probs, label_map, k=5):
    rows = []
    labels_k = submission.top_k_labels(probs, label_map, k=k)
    masked_new = np.where(label_map.original_mask[None, :], -1.0, probs)
    best_new = masked_new.max(axis=1)
    for i, labels in enumerate(labels_k):
        row = []
        for lab in labels:
            if lab == label_map.new_label and lab not in label_map.original:
                row.append((lab, float(best_new[i])))
            else:
                row.append((lab, float(probs[i, label_map.encode([lab])[0]])))
        rows.append(row)
    return rows


def fold_weight_files(run_dir, n_folds=None):
    """Best checkpoints of the folds present in ``run_dir``, in fold order."""
    out = []
    if not os.path.isdir(run_dir):
        return out
    for name in sorted(os.listdir(run_dir)):
        if name.startswith("fold_") and name[5:].isdigit():
            path = os.path.join(run_dir, name, "best.h5")
            if os.path.exists(path) and (n_folds is None or int(name[5:]) < n_folds):
                out.append((int(name[5:]), path))
    return [p for _, p in sorted(out)]

