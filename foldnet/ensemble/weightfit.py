"""Member weights fitted on out-of-fold predictions, and the OOF score table of an ensemble.

``fit_weights``: pattern search on the simplex grid with step 1 /
(resolution * n_members), starting from the best of equal weights and each
member alone. Each step tries
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
import os

import numpy as np

from foldnet.core import report
from foldnet.core.errors import DataError
from foldnet.ensemble.averaging import MemberOOF, blend, common_oof_ids
from foldnet.io import rundir


@dataclasses.dataclass
class WeightFit:
    """Result of ``fit_weights``: weights (sum 1) and the OOF metric before/after."""

    weights: np.ndarray
    metric: str
    before: float   # equal weights
    after: float    # fitted weights (>= before)
    steps: int      # accepted moves


def fit_weights(oof_list, labels, label_map, metric="map5", resolution=8, max_steps=200, *, task):
    """Non-negative member weights summing to 1 that maximise an OOF metric.

    oof_list: aligned [n, C] OOF probabilities of each member held in memory;
    labels: [n] true class indices. ``metric`` is a key of
    the task's ``fit_metrics`` (classification: ``metrics.METRICS``; default
    ``map5``, see module doc). Pattern search on
    the simplex grid (module doc); strict improvements only, so ``after >=
    before`` (equal weights). ``oof_report`` runs the same search streaming.
    """
    fit_metrics = task.fit_metrics
    if metric not in fit_metrics:
        raise ValueError(f"metric must be one of {sorted(fit_metrics)}, got {metric!r}")
    score_fn = fit_metrics[metric]
    if len(oof_list) == 0:
        raise ValueError("no members to weight")
    return pattern_search(lambda ws: [score_fn(labels, blend(oof_list, w), label_map) for w in ws],
                          len(oof_list), metric, resolution, max_steps)


def pattern_search(score_many, n, metric, resolution=8, max_steps=200):
    """The search of ``fit_weights`` (module doc) over ``score_many(list of weight vectors) -> scores``.

    Each step's untried candidates are scored in one call, so a streaming
    ``score_many`` makes one pass over the data per step.
    """
    units = resolution * n
    cache = {}

    def scores(cands):
        todo = [c for c in dict.fromkeys(tuple(c) for c in cands) if c not in cache]
        if todo:
            cache.update(zip(todo, score_many([np.asarray(c) / units for c in todo])))
        return [cache[tuple(c)] for c in cands]

    counts = [resolution] * n
    # start from the best of equal weights and each member alone (equal wins ties), so the result is never
    # worse on OOF than equal weights nor than the best single member
    starts = [counts] + ([[units if k == i else 0 for k in range(n)] for i in range(n)] if n > 1 else [])
    start_scores = scores(starts)
    before = start_scores[0]
    pick = int(np.argmax(start_scores))
    counts, best = list(starts[pick]), start_scores[pick]
    step, accepted = max(1, resolution // 2), 0
    while n > 1 and step >= 1 and accepted < max_steps:
        cands = []
        for i in range(n):
            for j in range(n):
                if i == j or counts[j] < step:
                    continue
                cand = list(counts)
                cand[i] += step
                cand[j] -= step
                cands.append(cand)
        move, move_score = None, best
        for cand, s in zip(cands, scores(cands)):
            if s > move_score:
                move, move_score = cand, s
        if move is None:
            step //= 2
        else:
            counts, best, accepted = move, move_score, accepted + 1
    return WeightFit(np.asarray(counts, dtype=np.float64) / units, metric, before, best, accepted)


def _member(run, task, spec, groups, tta, block_elements):
    """(MemberOOF, scores of the member's TTA-reduced OOF), streamed; DataError if its OOF is invalid."""
    sources = rundir.open_oof(run)
    scorer, problems = task.scorer(spec, groups), []
    for src in sources:
        for ids, targets, outputs in src.blocks(task, problems, block_elements):
            if not problems:
                scorer.add(targets, rundir.reduce_tta(outputs, tta), ids)
    if problems:
        raise DataError(f"{run}: invalid out-of-fold predictions", problems)
    return MemberOOF(run, sources), scorer.scores()


def _blend_pass(members, ids, weight_sets, task, spec, groups, tta, block_elements=None, check_labels=False):
    """One pass over the members' OOF rows ``ids`` in blocks: a scorer per weight vector of ``weight_sets``.

    With ``check_labels``, DataError naming every member whose targets differ
    from the first member's (and the ids).
    """
    scorers = [task.scorer(spec, groups) for _ in weight_sets]
    step = max(1, members[0].sources[0].block_rows(block_elements) // len(members))  # one block in all
    differ = [[] for _ in members]
    for start in range(0, len(ids), step):
        block = ids[start:start + step]
        labels, probs = None, []
        for k, m in enumerate(members):
            targets, outputs = m.read(block, task, tta)
            if labels is None:
                labels = targets
            elif check_labels:
                differ[k].extend(block[(targets != labels).reshape(len(block), -1).any(axis=1)])
            probs.append(outputs)
        for scorer, w in zip(scorers, weight_sets):
            scorer.add(labels, blend(probs, w), block)
    problems = [f"{m.run}: labels differ from {members[0].run} for ids {report.preview(bad)}"
                for m, bad in zip(members, differ) if bad]
    if problems:
        raise DataError("members disagree on out-of-fold labels", problems)
    return scorers


def oof_fold_keys(runs, ids):
    """{id: one integer for the combination of its folds in every run} (equal keys: the same fold in
    every member), so a class whose rows share one key was held out of training in every member."""
    maps = [rundir.oof_folds(r) for r in runs]
    keys = ["/".join(str(m.get(str(i), -1)) for m in maps) for i in ids]
    return dict(zip((str(i) for i in ids), np.unique(keys, return_inverse=True)[1].tolist()))


def oof_report(runs, weights, label_map, fit_metric, fit, tta="mean", *, task, groups=None, block_elements=None):
    """OOF scores of each member and of the ensemble; returns ``(rows, notes, final_weights, post, oof)``.

    Streams the OOF files (``rundir.open_oof``: a block of rows at a time),
    so memory holds counters and one block per member, not the OOF maps;
    each weight-fitting step is one pass over the members' files.

    ``oof`` is the task's scorer of the ensemble's OOF blend with the final
    weights (``oof.report(stem, title)`` writes the task's report), or None
    when the ensemble has no OOF predictions.

    ``post`` is what the task fitted on that blend (``scorer.post()``, e.g.
    a decision threshold), or None when the ensemble has no OOF predictions
    or the task fits nothing. ``groups``: {id: group} for group scores.

    Members without (valid) OOF predictions are named in ``notes`` and left
    out; the ensemble rows blend the scored members only. With ``fit`` and at
    least 2 scored members, the scored members' weights are fitted (their
    total share kept); the others keep theirs. A member row's ``weight`` is
    its final weight in the test average.
    """
    rows, notes, members, scored, post, oof = [], [], [], [], None, None
    for idx, run in enumerate(runs):
        try:
            member, scores = _member(run, task, label_map, groups, tta, block_elements)
        except DataError as e:
            notes.append(f"OOF scoring skipped for {run}: " + "; ".join(e.problems[:5] or [e.summary]))
            continue
        members.append(member)
        scored.append(idx)
        rows.append({"model": run, "n_oof": len(member.ids), **scores})
    final = np.asarray(weights, dtype=np.float64)
    share = final[scored].sum()
    if not members or share == 0:
        notes.append("no weighted member has OOF predictions: ensemble not scored")
    else:
        if len(members) < len(runs):
            notes.append(f"ensemble rows blend the {len(members)} members with OOF predictions")
        ids = common_oof_ids(members)
        if any(len(ids) < len(m.ids) for m in members):
            notes.append(f"ensemble OOF scored on the {len(ids)} ids all scored members share")

        def run_pass(weight_sets, check_labels=False):
            return _blend_pass(members, ids, weight_sets, task, label_map, groups, tta, block_elements, check_labels)

        label = "ensemble (equal weights)" if np.allclose(final, final[0]) else "ensemble (given weights)"
        oof = run_pass([final[scored] / share], check_labels=True)[0]
        rows.append({"model": label, "n_oof": len(ids), **oof.scores()})
        if fit and len(members) >= 2:
            if fit_metric not in task.fit_metrics:
                raise ValueError(f"metric must be one of {sorted(task.fit_metrics)}, got {fit_metric!r}")
            result = pattern_search(lambda ws: [s.metric(fit_metric) for s in run_pass(ws)], len(members),
                                    fit_metric)
            final = final.copy()
            final[scored] = result.weights * share
            fitted, oof = run_pass([result.weights, final[scored] / share])
            rows.append({"model": "ensemble (fitted weights)", "n_oof": len(ids), **fitted.scores()})
            notes.append(f"fitted on OOF {result.metric}: {result.before:.4f} (equal) -> {result.after:.4f} "
                         f"in {result.steps} moves")
        if not task.post_file:
            post = oof.post()
        elif all(os.path.exists(os.path.join(m.run, task.post_file)) for m in members):
            # (members scored before the task saved its post-processing keep their old submissions)
            runs_scored = [m.run for m in members]
            values, others = (rundir.row_values(runs_scored, final[scored], "oof", ids, key) if key else None
                              for key in (task.row_value_key, task.sim_value_key))
            post = oof.post(folds=oof_fold_keys(runs_scored, ids), values=values, others=others)
        if post:
            notes.append("fitted on the ensemble's OOF: " + task.describe_post(post))
    if fit and (len(members) < 2 or share == 0):
        notes.append("--fit_weights: fewer than 2 members with OOF predictions, weights unchanged")
    for row, idx in zip(rows, scored):
        row["weight"] = float(final[idx])
    return rows, notes, final, post, oof
