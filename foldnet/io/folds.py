"""Fold assignment: stratified K-fold, grouped when rows must stay together.

Groups come from a group column and/or from near-duplicate detection: images
whose small grayscale thumbnails are almost identical (cosine similarity of
mean-centred 16x16 thumbnails above a threshold) are linked, and each connected
component stays in one fold, so a near-copy of a validation image never leaks
into training.

Tiles cut from larger scenes (``scene_groups``): ids of the form
``<scene><sep><tile coordinates>`` (``s1_r0_c1``, ``s1_x64_y128``, ``s1-3-4``,
``s1_tile7``) share their scene, and a scene stays in one fold, so a
validation tile's neighbours are not in training. ``group_report`` says how
many groups a split has and warns when every fold is one group.
"""
import re
import warnings

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold


def small_classes(labels, n_folds):
    """[(label, count)] of the classes with fewer than ``n_folds`` rows, rarest first."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    order = np.argsort(counts, kind="stable")
    return [(str(values[i]), int(counts[i])) for i in order if counts[i] < n_folds]


def small_classes_message(small, n_folds, limit=8):
    """One line naming the classes with fewer images than folds (truncated)."""
    shown = ", ".join(f"{lab} ({n})" for lab, n in small[:limit])
    more = f", ... and {len(small) - limit} more" if len(small) > limit else ""
    return (f"{len(small)} class(es) have fewer images than folds ({n_folds}); they cannot be in every "
            f"fold: {shown}{more}")


def assign_folds(labels, n_folds, seed, groups=None):
    """Fold index (0..n_folds-1) of every row: stratified by label, rows of one
    group in one fold. Every row is assigned, also those of tiny classes."""
    labels = np.asarray(labels)
    n = len(labels)
    check_splittable(n, None if groups is None else len(np.unique(groups)), n_folds)
    folds = np.full(n, -1, dtype=np.int64)
    with warnings.catch_warnings():
        # sklearn warns about classes smaller than n_folds; convert reports them in one line.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        for k, (_, val) in enumerate(_splitter(labels, n_folds, seed, groups).split(np.zeros(n), labels, groups)):
            folds[val] = k
    assert (folds >= 0).all(), "a row was assigned to no fold"
    return folds


def check_splittable(n_rows, n_groups, n_folds):
    """ValueError when ``n_rows`` rows (or ``n_groups`` groups, when not None) cannot fill ``n_folds`` folds,
    naming the fix (fewer folds with --n_folds)."""
    count, what = (n_rows, "training rows") if n_groups is None or n_rows < n_folds else (n_groups, "groups")
    if count < n_folds:
        raise ValueError(f"{count} {what} cannot be split into {n_folds} folds: convert with --n_folds {count} "
                         f"or fewer (at least 2)" if count >= 2 else
                         f"{count} {what} cannot be split into {n_folds} folds: at least 2 are needed")


def round_robin_folds(groups, n_folds, seed):
    """Fold index of every row by groups dealt round-robin, as the 3rd-place On Cloud N solution's
    ``create_folds.py``: the groups ordered by row count, most rows first (ties by name), go in
    consecutive blocks of ``n_folds``; each block takes a random permutation of 0..n_folds-1 (seeded
    here; the winner's ``random.shuffle`` is unseeded) and its j-th group gets the j-th fold."""
    groups = np.asarray(groups).astype(str)
    names, counts = np.unique(groups, return_counts=True)
    check_splittable(len(groups), len(names), n_folds)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
    rng = np.random.default_rng(seed)
    fold_of = {}
    perm = np.arange(n_folds)
    for rank, i in enumerate(order):
        if rank % n_folds == 0:
            perm = rng.permutation(n_folds)
        fold_of[names[i]] = int(perm[rank % n_folds])
    return np.array([fold_of[g] for g in groups], np.int64)


def _splitter(labels, n_folds, seed, groups):
    if groups is not None:
        return StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if np.unique(labels, return_counts=True)[1].max() < n_folds:
        # StratifiedKFold refuses when every class is smaller than n_folds.
        return KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)


def similar_pairs(vectors, threshold, block=1024):
    """Index pairs (i < j) whose rows of ``vectors`` (unit norm) have a dot product
    >= ``threshold``. Computed in blocks, so memory is block x n floats."""
    v = np.asarray(vectors, dtype=np.float32)
    rows, cols = [], []
    for start in range(0, len(v), block):
        sims = v[start:start + block] @ v[start:].T
        i, j = np.nonzero(sims >= threshold)
        keep = j > i  # upper triangle: j indexes v[start:], so i < j means a later row
        rows.append(i[keep] + start)
        cols.append(j[keep] + start)
    return np.concatenate(rows) if rows else np.zeros(0, int), np.concatenate(cols) if cols else np.zeros(0, int)


def components(n, pairs):
    """Connected-component id of each of ``n`` nodes linked by ``pairs`` (rows, cols)."""
    rows, cols = pairs
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def duplicate_groups(thumbs, threshold, max_size=None):
    """Near-duplicate cluster id per row: connected components of the pairs with
    similarity >= ``threshold``. A cluster of more than ``max_size`` rows is split into
    singletons (the Kelp Wanted winner's aoi_grouping.py explodes groups of more than 100)."""
    clusters = np.asarray(components(len(thumbs), similar_pairs(thumbs, threshold)))
    if max_size is None or not len(clusters):
        return clusters
    _, inverse, counts = np.unique(clusters, return_inverse=True, return_counts=True)
    big = counts[inverse] > int(max_size)
    out = clusters.copy()
    out[big] = clusters.max() + 1 + np.arange(int(big.sum()))
    return out


def held_out_individuals(labels, fraction, n_folds, seed):
    """Sorted labels of ``round(fraction * #labels)`` individuals (drawn with ``seed`` among those with
    at least 2 rows) to keep in one fold each: that fold's model never trains on them, so their
    out-of-fold rows simulate new individuals. At most as many as leave every fold trainable."""
    if not fraction:
        return []
    values, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
    candidates = values[counts >= 2]
    n = min(int(round(fraction * len(values))), len(candidates), len(values) - 1)
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(str(v) for v in rng.choice(candidates, size=n, replace=False))


def individual_groups(labels, held_out):
    """Group id per row: one group per held-out label, every other row its own group."""
    labels = np.asarray(labels).astype(str)
    held = {lab: i for i, lab in enumerate(sorted(held_out))}
    out = np.arange(len(labels)) + len(held)
    for i, lab in enumerate(labels):
        if lab in held:
            out[i] = held[lab]
    return out


def n_grouped(groups):
    """Number of rows sharing their group with at least one other row."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return int((counts[inverse] > 1).sum())


def merge_groups(a, b):
    """Group ids (0..k-1) joining rows that share a value of ``a`` or of ``b``."""
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    n, na, nb = len(ia), ia.max() + 1, ib.max() + 1
    # Graph nodes: the rows, then one node per value of a, then one per value of b.
    rows = np.concatenate([np.arange(n), np.arange(n)])
    cols = np.concatenate([n + ia, n + na + ib])
    comp = components(n + na + nb, (rows, cols))[:n]
    return np.unique(comp, return_inverse=True)[1]


def quantile_bins(values, bins):
    """Bin index (0..bins-1) of each value by the quantiles of ``values`` (ties share a bin; fewer
    bins when the values have fewer distinct levels, e.g. mostly zeros)."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) else []
    return np.searchsorted(edges, values, side="right")


def combined_strata(parts):
    """One stratum label per row joining several label arrays ("a-b-c"), for stratifying on
    several properties at once."""
    parts = [np.asarray(p).astype(str) for p in parts]
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(np.char.add(out, "-"), p)
    return out


# "<scene><sep><tile coordinates>": row/column, x/y, two numbers, or a tile/patch number
TILE_SUFFIX = re.compile(r"^(?P<scene>.+?)[_\-.](?:r\d+[_\-.]?c\d+|x\d+[_\-.]?y\d+|\d+[_\-.x]\d+"
                         r"|(?:tile|patch|sub|t|p)?\d+)$", re.IGNORECASE)


def scene_of(tile_id):
    """The scene an id names as ``<scene><sep><tile coordinates>`` (``TILE_SUFFIX``), or None."""
    m = TILE_SUFFIX.match(str(tile_id))
    return m.group("scene") if m else None


def scene_groups(ids):
    """Scene name per id when the ids name tiles of shared scenes (every id parses and some scene has
    two tiles or more), else None."""
    scenes = [scene_of(i) for i in ids]
    if not scenes or any(s is None for s in scenes):
        return None
    names = np.asarray(scenes, dtype=object).astype(str)
    return names if len(np.unique(names)) < len(names) else None


def group_report(groups, n_folds, source):
    """(info line, warning or None) of a grouped fold split: how many groups ``source`` gave; a warning
    when there are no more groups than folds, i.e. every validation fold is one group (leave one group
    out): checkpoint selection and OOF-fitted thresholds then measure transfer to an unseen scene or
    sensor, and a fold's scores can be far from the test set's."""
    values, counts = np.unique(np.asarray(groups).astype(str), return_counts=True)
    info = (f"folds keep groups together: {len(values)} groups from {source} "
            f"(largest {counts.max()} tiles, {int((counts == 1).sum())} single-tile groups)")
    if len(values) > n_folds:
        return info, None
    return info, (f"only {len(values)} groups for {n_folds} folds: each fold is one group (leave-one-group-out "
                  "validation); validation scores measure transfer to an unseen group, so model selection and "
                  "OOF thresholds may not match the test set (more, smaller groups, or fewer folds, help)")
