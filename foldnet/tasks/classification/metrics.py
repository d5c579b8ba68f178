"""Top-k accuracy and MAP@k (one true label per row), incl. the new-individual MAP@5.

Ranking rule of ``ranking``: classes are ranked by descending
probability; equal probabilities are ranked by class index, lower first (a
stable sort of ``-probs``). The rank of the true class is therefore
``1 + #(p > p_true) + #(p == p_true and index < true index)``, computed here
without sorting.

MAP@k with one true label per row (as Kaggle/Zindi score it): the mean over
rows of ``1 / rank`` of the true label if it is within the top k, else 0.

``score_all`` returns the keys in ``SCORE_KEYS``:

- ``top1``, ``top5``: top-1 / top-5 accuracy over all classes
- ``map5``: MAP@5 over all classes (class indices)
- ``map5_new``: MAP@5 on labels under the new-individual rule: a true label
  that is not original becomes ``label_map.new_label``; predictions are
  ``ranking.top_k_labels`` (what the competition scores)

No TensorFlow here: this module runs in light processes.
"""
import numpy as np

from foldnet.tasks.classification import ranking

SCORE_KEYS = ("top1", "top5", "map5", "map5_new")

# Rows per block in true_rank: bounds the [rows, n_classes] temporaries.
_ROW_BLOCK = 1024


def _check(y_true, probs):
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D [n, n_classes], got shape {probs.shape}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true shape {y_true.shape} does not match probs rows {probs.shape[0]}")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    bad = np.flatnonzero((y_true < 0) | (y_true >= probs.shape[1]))
    if len(bad):
        raise ValueError(
            f"y_true has {len(bad)} labels outside [0, {probs.shape[1]}) at rows {bad[:10].tolist()}"
        )
    return y_true.astype(np.int64), probs


def true_rank(y_true, probs):
    """1-based rank of each row's true class under the ranking rule above."""
    y_true, probs = _check(y_true, probs)
    n, c = probs.shape
    ranks = np.empty(n, dtype=np.int64)
    cols = np.arange(c)
    for start in range(0, n, _ROW_BLOCK):
        p = probs[start:start + _ROW_BLOCK]
        y = y_true[start:start + _ROW_BLOCK]
        pt = p[np.arange(len(y)), y][:, None]
        ahead = (p > pt) | ((p == pt) & (cols[None, :] < y[:, None]))
        ranks[start:start + len(y)] = 1 + ahead.sum(axis=1)
    return ranks


def top_k_accuracy(y_true, probs, k):
    """Fraction of rows whose true class is among the k most probable."""
    return float(np.mean(true_rank(y_true, probs) <= k))


def _map_from_ranks(ranks, k):
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0)))


def map_at_k(y_true, probs, k=5):
    """MAP@k with one true class per row: mean of 1/rank if rank <= k, else 0."""
    return _map_from_ranks(true_rank(y_true, probs), k)


def map_at_k_labels(true_labels, predicted_label_lists, k=5):
    """MAP@k on strings: a row scores 1/position of its true label in its first k predictions.

    A label repeated in a row counts at its first position (as the usual
    Kaggle implementation, which skips repeats).
    """
    true_labels = [str(t) for t in true_labels]
    if len(true_labels) != len(predicted_label_lists):
        raise ValueError(f"{len(true_labels)} true labels for {len(predicted_label_lists)} prediction rows")
    if not true_labels:
        raise ValueError("no rows to score")
    total = 0.0
    for t, preds in zip(true_labels, predicted_label_lists):
        preds = [str(p) for p in list(preds)[:k]]
        if t in preds:
            total += 1.0 / (preds.index(t) + 1)
    return total / len(true_labels)


def new_individual_labels(y_true, label_map):
    """True label strings with every non-original label replaced by ``label_map.new_label``."""
    keeps = label_map.original_mask
    return [label_map.labels[i] if keeps[i] else label_map.new_label for i in np.asarray(y_true)]


def map5_new_individual(y_true, probs, label_map):
    """MAP@5 as the competition scores it (see module doc)."""
    y_true, probs = _check(y_true, probs)
    truth = new_individual_labels(y_true, label_map)
    # A label map with fewer than 5 submission labels (a closed set of < 5 classes) ranks all it has.
    k = min(5, ranking.n_submission_labels(label_map))
    return map_at_k_labels(truth, ranking.top_k_labels(probs, label_map, k=k), k=5)


def score_all(y_true, probs, label_map):
    """Dict with the keys of ``SCORE_KEYS`` (see module doc)."""
    ranks = true_rank(y_true, probs)
    return {
        "top1": float(np.mean(ranks <= 1)),
        "top5": float(np.mean(ranks <= 5)),
        "map5": _map_from_ranks(ranks, 5),
        "map5_new": map5_new_individual(y_true, probs, label_map),
    }


# Metrics by name, each ``f(y_true, probs, label_map) -> float`` (higher is better).
METRICS = {
    "top1": lambda y, p, lm: top_k_accuracy(y, p, 1),
    "top5": lambda y, p, lm: top_k_accuracy(y, p, 5),
    "map5": lambda y, p, lm: map_at_k(y, p, 5),
    "map5_new": map5_new_individual,
}
