"""The ranking rule and the new-individual rule, shared by metrics, submission and predict.

Classes are ranked by descending probability; equal probabilities are ranked
by class index, lower first (a stable sort of ``-probs``).

The new-individual rule (Turtle Recall): a predicted class whose label is not
in ``label_map.original`` is reported as ``label_map.new_label``. Each row
walks the classes in ranking order, maps each class to its reported label,
skips a label already in the row and stops at k labels. So a row holds at
most one ``new_label`` and is filled with the next most probable original
labels.

No TensorFlow here: this module runs in light processes.
"""
import numpy as np

# Rows per block in top_k_labels: bounds the [rows, n_classes] temporaries.
_ROW_BLOCK = 512


def descending_order(probs):
    """Class indices of each row by descending probability; ties keep the lower index first."""
    probs = np.asarray(probs)
    return np.argsort(-probs, axis=1, kind="stable")


def _check_probs(probs):
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D [n, n_classes], got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        raise ValueError(f"probs has non-finite values in rows {bad[:10].tolist()} ({len(bad)} rows)")
    return probs


def n_submission_labels(label_map):
    """How many distinct labels a row can hold: the original labels, plus the new label if some
    class maps to it."""
    labels = np.array(label_map.labels, dtype=object)
    keeps = label_map.original_mask & (labels != label_map.new_label)
    return int(keeps.sum()) + int((~keeps).any())


def top_k_labels(probs, label_map, k=5, new_rank=None):
    """Per row, the k labels to submit under the new-individual rule (see module doc).

    probs: [n, n_classes] in the label map's class order. new_rank: optional
    [n] ints, the earliest 1-based rank the new label takes in each row (it
    goes there if its natural rank is later or absent; k + 1 or more: natural
    rank only), as the open-set rule (``openset``) decides. Returns a list of
    n lists of k distinct strings. Raises ValueError if the label map cannot
    give k distinct labels (fewer than k original labels plus the new label).
    """
    probs = _check_probs(probs)
    if probs.shape[1] != label_map.n_classes:
        raise ValueError(f"probs has {probs.shape[1]} classes, the label map {label_map.n_classes}")
    labels = np.array(label_map.labels, dtype=object)
    # A class keeps its label only if it is original and not spelled like the new label.
    keeps = label_map.original_mask & (labels != label_map.new_label)
    n_keep = int(keeps.sum())
    if new_rank is not None:
        new_rank = np.asarray(new_rank, dtype=np.int64)
        if new_rank.shape != (probs.shape[0],):
            raise ValueError(f"new_rank has shape {new_rank.shape}, probs {probs.shape[0]} rows")
    # The new label is a possible answer if some class maps to it or a rule may place it.
    has_new = bool((~keeps).any()) or (new_rank is not None and bool((new_rank <= k).any()))
    if n_keep + int(has_new) < k:
        raise ValueError(
            f"cannot make {k} distinct labels: {n_keep} original labels"
            f"{' + the new label' if has_new else ''}"
        )
    n_orig_needed = min(k, n_keep)
    out = []
    for start in range(0, probs.shape[0], _ROW_BLOCK):
        order = descending_order(probs[start:start + _ROW_BLOCK])
        kept_sorted = keeps[order]                            # [rows, C] bool, in rank order
        cum = np.cumsum(kept_sorted, axis=1, dtype=np.int32)  # originals seen up to each rank
        rows = np.arange(order.shape[0])
        # Class of the t-th original in rank order, t = 1..n_orig_needed.
        orig_cls = np.stack(
            [order[rows, np.argmax(cum >= t, axis=1)] for t in range(1, n_orig_needed + 1)], axis=1
        )
        if (~keeps).any():
            first_new = np.argmax(~kept_sorted, axis=1)
            # Originals ranked above the first non-original = where new_label is inserted.
            insert_at = cum[rows, first_new]
        else:
            insert_at = np.full(order.shape[0], k)
        if new_rank is not None:
            insert_at = np.minimum(insert_at, new_rank[start:start + _ROW_BLOCK] - 1)
        if n_keep < k:  # fewer originals than k: the new label fills the row
            insert_at = np.minimum(insert_at, n_keep)
        for r in range(order.shape[0]):
            a = int(insert_at[r])
            if a < k:
                row = list(labels[orig_cls[r, :a]]) + [label_map.new_label] + list(labels[orig_cls[r, a:k - 1]])
            else:
                row = list(labels[orig_cls[r, :k]])
            out.append(row)
    return out
