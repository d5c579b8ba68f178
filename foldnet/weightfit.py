"""Member weights fitted on out-of-fold predictions, and the OOF score table of an ensemble.

``fit_weights``: pattern search on the simplex grid with step 1 /
(resolution * n_members), starting from equal weights. Each step tries
moving ``s`` grid units from one member to another for every ordered pair and
takes the best move if it strictly improves the OOF metric; when no move
improves, ``s`` is halved (resolution/2, ..., 1). The result is never worse
than equal weights on OOF. The metrics are the task's ``fit_metrics``; for
classification the default is all-classes MAP@5 (``map5``): it scores every
OOF row's identity, which is what the members are trained for; the
new-individual MAP@5 collapses all non-original rows into one label and its
value depends on how many extra-image rows the OOF set holds, which differs
from the test set. ``map5_new`` fits that one instead.

No TensorFlow here: this module runs in light processes.
"""
import dataclasses

import numpy as np

from . import rundir, tasks
from .averaging import align_oof, blend
from .errors import DataError


@dataclasses.dataclass
class WeightFit:
    """Result of ``fit_weights``: weights (sum 1) and the OOF metric before/after."""

    weights: np.ndarray
    metric: str
    before: float   # equal weights
    after: float    # fitted weights (>= before)
    steps: int      # accepted moves


def fit_weights(oof_list, labels, label_map, metric="map5", resolution=8, max_steps=200, task=None):
    """Non-negative member weights summing to 1 that maximise an OOF metric.

    oof_list: aligned [n, C] OOF probabilities of each member (``align_oof``);
    labels: [n] true class indices. ``metric`` is a key of
    the task's ``fit_metrics`` (classification: ``metrics.METRICS``; default
    ``map5``, see module doc). Pattern search on
    the simplex grid (module doc); strict improvements only, so ``after >=
    before`` (equal weights).
    """
    fit_metrics = (task or tasks.get(tasks.DEFAULT_TASK)).fit_metrics
    if metric not in fit_metrics:
        raise ValueError(f"metric must be one of {sorted(fit_metrics)}, got {metric!r}")
    score_fn = fit_metrics[metric]
    n = len(oof_list)
    if n == 0:
        raise ValueError("no members to weight")
    units = resolution * n
    cache = {}

    def score(counts):
        key = tuple(counts)
        if key not in cache:
            cache[key] = score_fn(labels, blend(oof_list, np.asarray(counts) / units), label_map)
        return cache[key]

    counts = [resolution] * n
    before = best = score(counts)
    step, accepted = max(1, resolution // 2), 0
    while n > 1 and step >= 1 and accepted < max_steps:
        move, move_score = None, best
        for i in range(n):
            for j in range(n):
                if i == j or counts[j] < step:
                    continue
                cand = list(counts)
                cand[i] += step
                cand[j] -= step
                s = score(cand)
                if s > move_score:
                    move, move_score = cand, s
        if move is None:
            step //= 2
        else:
            counts, best, accepted = move, move_score, accepted + 1
    return WeightFit(np.asarray(counts, dtype=np.float64) / units, metric, before, best, accepted)


def oof_report(runs, weights, label_map, fit_metric, fit, tta="mean", task=None):
    """OOF scores of each member and of the ensemble; returns ``(rows, notes, final_weights, post, oof)``.

    ``oof`` is ``(targets, blended outputs)`` of the ensemble's OOF blend with
    the final weights, or None when the ensemble has no OOF predictions.

    ``post`` is what the task's ``fit_post`` fitted on the ensemble's OOF
    blend with the final weights (e.g. a decision threshold), or None when
    the ensemble has no OOF predictions or the task fits nothing.

    Members without (valid) OOF predictions are named in ``notes`` and left
    out; the ensemble rows blend the scored members only. With ``fit`` and at
    least 2 scored members, the scored members' weights are fitted (their
    total share kept); the others keep theirs. A member row's ``weight`` is
    its final weight in the test average.
    """
    task = task or tasks.get(tasks.DEFAULT_TASK)
    rows, notes, oofs, scored, post, oof = [], [], [], [], None, None
    for idx, run in enumerate(runs):
        try:
            ids, labels, probs = rundir.load_oof(run, task, tta)
        except DataError as e:
            notes.append(f"OOF scoring skipped for {run}: " + "; ".join(e.problems[:5] or [e.summary]))
            continue
        oofs.append((ids, labels, probs))
        scored.append(idx)
        rows.append({"model": run, "n_oof": len(ids), **task.score(labels, probs, label_map)})
    final = np.asarray(weights, dtype=np.float64)
    share = final[scored].sum()
    if not oofs or share == 0:
        notes.append("no weighted member has OOF predictions: ensemble not scored")
    else:
        if len(oofs) < len(runs):
            notes.append(f"ensemble rows blend the {len(oofs)} members with OOF predictions")
        ids, labels, probs_list = align_oof(oofs, [runs[i] for i in scored])
        if any(len(ids) < len(o[0]) for o in oofs):
            notes.append(f"ensemble OOF scored on the {len(ids)} ids all scored members share")
        label = "ensemble (equal weights)" if np.allclose(final, final[0]) else "ensemble (given weights)"
        rows.append({"model": label, "n_oof": len(ids),
                     **task.score(labels, blend(probs_list, final[scored] / share), label_map)})
        if fit and len(oofs) >= 2:
            result = fit_weights(probs_list, labels, label_map, metric=fit_metric, task=task)
            final = final.copy()
            final[scored] = result.weights * share
            rows.append({"model": "ensemble (fitted weights)", "n_oof": len(ids),
                         **task.score(labels, blend(probs_list, result.weights), label_map)})
            notes.append(f"fitted on OOF {result.metric}: {result.before:.4f} (equal) -> {result.after:.4f} "
                         f"in {result.steps} moves")
        oof = (labels, blend(probs_list, final[scored] / share))
        post = task.fit_post(*oof, label_map)
        if post:
            notes.append("fitted on the ensemble's OOF: " + ", ".join(f"{k} = {v}" for k, v in post.items()))
    if fit and (len(oofs) < 2 or share == 0):
        notes.append("--fit_weights: fewer than 2 members with OOF predictions, weights unchanged")
    for row, idx in zip(rows, scored):
        row["weight"] = float(final[idx])
    return rows, notes, final, post, oof
