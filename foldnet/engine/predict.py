"""Predictions: a fold's held-out (OOF) and test sets, and arbitrary image files.

Every TTA variant comes out of one pass over the data (each image is decoded
once and expanded to its views). Prediction files carry their image ids, the
label map's fingerprint and the checkpoint's fingerprint (Contract 2 in
docs/DESIGN.md), so ensembling never depends on row order and stale files are
recognised.
"""
import logging

import numpy as np

from foldnet.core.errors import DataError
from foldnet.io import images, rundir
from foldnet.tasks.classification import data, openset

log = logging.getLogger(__name__)


def predict_records(model, files, cfg, *, task, verbose=0):
    """``(ids, targets, outputs [tta_number + 1, n, ...])`` of the records in ``files`` (one pass, all views).

    cfg: the settings the task reads (classification: dim, batch_size, tta_number).
    """
    ids, targets = task.read_ids_targets(files)
    outputs = task.predict_files(model, files, cfg, verbose)
    if outputs.shape[1] != len(ids):
        raise RuntimeError(f"predicted {outputs.shape[1]} rows for {len(ids)} records")
    return ids, targets, outputs


def predict_split(model, files, out_path, cfg, spec_fp, weights_fp, n_rows, *, task, verbose=0,
                  reference_files=None, cache=None):
    """Predict the records of ``files`` (all TTA views, one pass) into the prediction file ``out_path``.

    The caller decides staleness (``rundir.is_current``). With
    ``reference_files`` (the fold's training records) the file also holds the
    task's per-row values (``task.row_values``; ``cache``: one dict per
    fold). Returns the outputs.
    """
    ids, targets, outputs = predict_records(model, files, cfg, task=task, verbose=verbose)
    if len(ids) != n_rows:
        raise RuntimeError(f"read {len(ids)} records, the manifest says {n_rows}")
    arr = np.asarray(outputs)
    bad = ~np.isfinite(arr).all(axis=tuple(a for a in range(arr.ndim) if a != 1)) if arr.size else np.zeros(0, bool)
    if bad.any():
        # checked before the task encodes them (a NaN probability cast to uint8 would read as 0)
        raise DataError(f"the model's outputs are NaN or infinite for {int(np.sum(bad))} of {len(ids)} rows; "
                        f"{out_path} not written (the checkpoint is broken: retrain the fold with a lower --lr)",
                        [rundir.nonfinite_problem(out_path, [i for i, b in zip(ids, bad) if b])])
    extra = {}
    if reference_files and task.row_value_key:
        extra = task.row_values(model, files, reference_files, cfg, {} if cache is None else cache)
    rundir.save_predictions(out_path, ids, task.encode_outputs(outputs), task.encode_targets(targets),
                            task.tta_names(cfg["tta_number"]), spec_fp, weights_fp, **extra)
    log.info(f"  wrote {out_path}: {outputs.shape[1]} rows x {outputs.shape[0]} TTA view(s)")
    return outputs


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
    views = [data.tta_views(tf.constant(b), dim, tta_number) for b in encoded]
    return tf.concat(views, axis=0)


def predict_images(model_loader, weights_paths, image_paths, dim, tta_number, label_map, k=5, rule=None):
    """Average the given checkpoints (and TTA views) over ``image_paths``.

    ``model_loader(weights_path)`` returns a model with those weights. Returns
    ``(probs [n, n_classes], rows)`` where rows[i] is a list of k
    (label, probability) pairs after the new-individual mapping: an original
    label keeps its probability; the new-individual label shows the
    probability of the most probable non-original class. rule: the open-set
    rule (``openset``; None: natural).
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
    return probs, labelled_top_k(probs, label_map, k, rule)


def labelled_top_k(probs, label_map, k=5, rule=None):
    rows = []
    labels_k = openset.top_k_labels(probs, label_map, rule, k)
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
