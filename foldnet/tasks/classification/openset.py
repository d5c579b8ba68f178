"""The open-set rule: when to answer ``new_label`` first for an individual the model never saw.

An individual absent from training spreads its probability over known ones,
so under the natural rule of ``ranking`` (``new_label`` at the rank of the
first non-original class) it often gets ``new_label`` late or not at all.
The rule here adds one decision per row from an open-set score (higher =
more like a trained individual):

- score < ``threshold``: ``new_label`` at rank 1, then the originals in order;
- otherwise: ``new_label`` at its natural rank, or at ``new_rank`` if that
  is earlier (``new_rank`` None: natural).

Scores (``SCORES``), all from the averaged probabilities, so they work for
one member and for an ensemble blend alike: ``max_prob`` (largest
probability over all trained classes), ``max_original_prob`` (over original
classes only), ``neg_entropy`` (minus the entropy of the row). With
``--openset_features`` the prediction files also hold ``STORED_SCORE``
(prototype similarity: the largest cosine similarity of an image's features
to the prototype of an individual its fold trained on, a prototype being the
mean of the unit feature vectors of that individual's training images), and
``fit_best_rule`` uses it (a max_prob rule kept as fallback). They also hold
``NEAREST_SCORE`` (the similarity to the nearest training image: the default
before; its rules still load, and apply their fallback when given prototype
scores). The prototype score put known and new test images further apart on
the photo stand-in (BENCHMARKS.md "Prototype similarity").
Max logit and energy scored below max_prob on the photo stand-in
(BENCHMARKS.md) and are not offered.

Fitting (``fit_rule``) needs rows that behave like unseen individuals
(``simulate``). By default (``openset_features: auto`` stores
``OTHER_SCORE`` for data with a new label) every OOF row of a trained
individual is used twice: as itself (known) and as an unseen individual
("embedding": its similarity to the nearest prototype of another
individual, its probabilities without its own class), so no fold has to be
re-split. OOF rows whose class has no row in the other folds (the model of
their fold never trained on that individual: ``--holdout_individuals``)
count as unseen too; with them only ("holdout") the rule is fitted as before
when the features are off. Without either, the natural rule stays. Proxies
(``proxies=True``: copies of the OOF rows of extra-only classes only)
predicted the test set worse on the photo stand-in and are not used by
default. The rule maximises MAP@5 on the simulated rows plus the ordinary
OOF rows, among the rules that cost known individuals at most
``MAX_KNOWN_LOSS`` OOF MAP@5 against the natural rule; ``curve`` holds the
known / new trade-off as the threshold moves (scores.md, openset_curve.png).
``RULE_FILE`` in a run directory holds a member's fitted rule and its OOF
MAP@5 known / new / all; the ensemble refits it on its OOF blend
(``--openset natural``: the plain rule instead).

No TensorFlow here: this module runs in light processes.
"""
import os

import numpy as np

from foldnet.core import fileio, report
from foldnet.core.errors import DataError
from foldnet.tasks.classification import ranking

RULE_FILE = "openset_rule.json"
SCORES = ("max_prob", "max_original_prob", "neg_entropy")
# A score stored per row in prediction files (--openset_features), not computed from probabilities: the
# cosine similarity of an image's features to the nearest prototype (mean unit feature vector of one trained
# individual's training images) of its fold (test: mean over folds).
STORED_SCORE = "prototype_cosine"
# Stored beside it for OOF rows: the same similarity with the row's own individual's prototype left out, i.e.
# what the fold's model would have measured had it never seen that individual.
OTHER_SCORE = "other_prototype_cosine"
# The stored score of the previous default (kept in prediction files; rules fitted on it still load): the
# cosine similarity to the nearest training image, and to the nearest image of another individual.
NEAREST_SCORE = "nearest_train_cosine"
NEAREST_OTHER_SCORE = "nearest_other_cosine"
STORED_SCORES = (STORED_SCORE, NEAREST_SCORE)
DEFAULT_SCORE = "max_prob"
# The fitted rule may cost known individuals at most this much OOF MAP@5 against the natural rule.
MAX_KNOWN_LOSS = 0.005
# Points of the known / new trade-off curve kept in a rule (thresholds spread over the fitted score).
CURVE_POINTS = 41
NEW_RANKS = (None, 2, 3, 4, 5)
# At most this many candidate thresholds (quantiles of the scores) are tried.
_MAX_THRESHOLDS = 400


def open_set_score(probs, label_map, name=DEFAULT_SCORE):
    """Per row, how much it looks like a trained individual (higher = more; see module doc)."""
    probs = np.asarray(probs, dtype=np.float64)
    if name == "max_prob":
        return probs.max(axis=1)
    if name == "max_original_prob":
        keeps = keep_mask(label_map)
        return probs[:, keeps].max(axis=1) if keeps.any() else np.zeros(len(probs))
    if name == "neg_entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return (p * np.log(p)).sum(axis=1)
    raise ValueError(f"unknown open-set score {name!r}: choose one of {', '.join(SCORES)}")


def keep_mask(label_map):
    """Classes that keep their own label in a submission (original, not spelled like the new label)."""
    labels = np.array(label_map.labels, dtype=object)
    return label_map.original_mask & (labels != label_map.new_label)


def new_ranks(probs, label_map, rule, k=5, values=None):
    """Per row, the earliest rank (1-based) ``new_label`` may take under ``rule`` (k + 1: natural only).

    values: the rows' open-set scores if computed elsewhere (default: ``rule["score"]`` of ``probs``)."""
    n = len(probs)
    out = np.full(n, k + 1, dtype=np.int64)
    if not rule:
        return out
    if rule.get("new_rank"):
        out[:] = int(rule["new_rank"])
    if rule.get("threshold") is not None:
        if values is None:
            values = open_set_score(probs, label_map, rule["score"])
        out[np.asarray(values) < float(rule["threshold"])] = 1
    return out


def usable(rule, values, values_score=STORED_SCORE):
    """The rule to apply: ``rule``, or its ``fallback`` (a probability rule) when it needs a stored score
    and ``values`` is None (e.g. --job predict on image files) or holds another stored score
    (``values_score``; e.g. a rule of an older version fitted on ``NEAREST_SCORE`` given prototype scores)."""
    if rule and rule.get("score") in STORED_SCORES and (values is None or rule["score"] != values_score):
        return rule.get("fallback")
    return rule


def top_k_labels(probs, label_map, rule=None, k=5, values=None, values_score=STORED_SCORE):
    """``ranking.top_k_labels`` under the open-set ``rule`` (None: the natural rule).

    values: the rows' stored score (``values_score``, by default ``STORED_SCORE``) when the rule uses it."""
    rule = usable(rule, values, values_score)
    if not rule:
        return ranking.top_k_labels(probs, label_map, k=k)
    values = values if rule.get("score") in STORED_SCORES else None
    return ranking.top_k_labels(probs, label_map, k=k, new_rank=new_ranks(probs, label_map, rule, k, values))


# ---------------------------------------------------------------- scores split known / new


def split_map(truth_is_new, row_scores):
    """{"all", "known", "new", "n_known", "n_new"}: mean of per-row scores over all / known / new rows
    (None for an empty part)."""
    truth_is_new = np.asarray(truth_is_new, bool)
    row_scores = np.asarray(row_scores, dtype=np.float64)

    def mean(mask):
        return float(row_scores[mask].mean()) if mask.any() else None

    return {"all": mean(np.ones(len(row_scores), bool)), "known": mean(~truth_is_new),
            "new": mean(truth_is_new), "n_known": int((~truth_is_new).sum()), "n_new": int(truth_is_new.sum())}


def label_row_scores(true_labels, predicted_label_lists, k=5):
    """Per row, 1 / position of the true label in its first k predictions (0 if absent)."""
    out = np.zeros(len(true_labels))
    for i, (t, preds) in enumerate(zip(true_labels, predicted_label_lists)):
        preds = [str(p) for p in list(preds)[:k]]
        if str(t) in preds:
            out[i] = 1.0 / (preds.index(str(t)) + 1)
    return out


def _positions(probs, label_map, y, truth_is_new, k):
    """Per row: natural rank of new_label (k + 1 if none within k) and the rank of the true label among
    the kept (original) labels (0 for new-truth rows)."""
    keeps = keep_mask(label_map)
    order = ranking.descending_order(probs)
    kept_sorted = keeps[order]
    cum = np.cumsum(kept_sorted, axis=1)
    rows = np.arange(len(probs))
    has_new = (~kept_sorted).any(axis=1)
    first_new = np.argmax(~kept_sorted, axis=1)
    natural = np.where(has_new, cum[rows, first_new] + 1, k + 1)
    natural = np.minimum(natural, k + 1)
    rank_of_class = np.empty_like(order)
    rank_of_class[rows[:, None], order] = np.arange(order.shape[1])[None, :]
    pos_y = rank_of_class[rows, y]
    orig_rank = np.where(truth_is_new, 0, cum[rows, pos_y])
    return natural, orig_rank


def _row_map(j, truth_is_new, orig_rank, k):
    """Per-row MAP@k when new_label sits at position j (k + 1: absent)."""
    pos = np.where(truth_is_new, j, np.where(orig_rank < j, orig_rank, orig_rank + 1))
    return np.where(pos <= k, 1.0 / np.maximum(pos, 1), 0.0)


# ---------------------------------------------------------------- simulation and fit


def unseen_rows(targets, folds):
    """OOF rows whose class has no row in any other fold: their fold's model never trained on it."""
    targets, folds = np.asarray(targets), np.asarray(folds)
    out = np.zeros(len(targets), bool)
    for c in np.unique(targets):
        rows = targets == c
        out[rows] = len(np.unique(folds[rows])) == 1 and len(np.unique(folds)) > 1
    return out


def without_own_class(probs, targets):
    """Rows of ``probs`` with the probability of their own class (``targets``) set to 0 and renormalised:
    an unseen individual's mass can only go to trained classes."""
    out = np.array(probs, dtype=np.float64, copy=True)
    out[np.arange(len(out)), targets] = 0.0
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)


def simulate(targets, probs, label_map, folds=None, proxies=False, values=None, others=None):
    """Rows to fit the rule on: ``(probs, targets, truth_is_new, method, n_simulated, values)`` (module doc).

    method: ``"embedding"`` (with ``others``, the stored similarity to the
    nearest prototype of another individual: every OOF row of a trained
    individual is appended once more as an unseen one, its score ``others``,
    its probabilities without its own class; only when some class answers
    the new label, so a closed set keeps the natural rule; OOF rows of
    held-out individuals, if any, count as unseen too), ``"holdout"`` (OOF rows of individuals held
    out of their fold's training are taken as new), ``"proxy"`` (only with
    ``proxies``: extra-only rows, copied with their own class removed, are
    appended as unseen), or None (no way to simulate: nothing to fit).
    values: the rows' stored score (returned extended to the appended rows).
    """
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    keeps = keep_mask(label_map)
    is_new = ~keeps[targets]
    unseen = unseen_rows(targets, folds) if folds is not None else np.zeros(len(targets), bool)
    if others is not None and is_new.any():  # (a closed set, where no class answers the new label: no copies)
        trained = np.flatnonzero(~unseen)
        ext = (None if values is None else
               np.concatenate([np.asarray(values, np.float64), np.asarray(others, np.float64)[trained]]))
        return (np.concatenate([probs, without_own_class(probs[trained], targets[trained])]),
                np.concatenate([targets, targets[trained]]),
                np.concatenate([is_new | unseen, np.ones(len(trained), bool)]), "embedding",
                int(unseen.sum()) + len(trained), ext)
    if unseen.any():
        return probs, targets, is_new | unseen, "holdout", int(unseen.sum()), values
    proxy = np.flatnonzero(is_new)
    if not proxies or not len(proxy):
        return probs, targets, is_new, None, 0, values
    copies = without_own_class(probs[proxy], targets[proxy])
    return (np.concatenate([probs, copies]), np.concatenate([targets, targets[proxy]]),
            np.concatenate([is_new, np.ones(len(proxy), bool)]), "proxy", len(proxy), None)


def fit_rule(targets, probs, label_map, folds=None, score=DEFAULT_SCORE, k=5, values=None, proxies=False,
             others=None, max_known_loss=MAX_KNOWN_LOSS):
    """The open-set rule with the best MAP@k on the simulated OOF rows, with its scores.

    Returns a dict: ``score``, ``threshold`` (None: never new first),
    ``new_rank`` (None: natural), ``simulation``, ``n_simulated_new``,
    ``oof`` = {"natural": split, "rule": split} (``split_map`` of MAP@k on
    the simulated rows) and ``curve`` (known / new / all MAP@k as the
    threshold moves, at the fitted ``new_rank``). Only rules whose MAP@k on
    known rows is at most ``max_known_loss`` below the natural rule's are
    candidates (known individuals protected). Ties go to the simpler rule
    (no threshold, natural rank, lower threshold). When nothing can be
    simulated (no held-out individuals, no ``others``, and ``proxies`` off or
    no non-original rows): the natural rule (threshold and new_rank None).
    values: per-row scores computed elsewhere (the stored score); others: the
    stored score with each row's own individual left out (``OTHER_SCORE``:
    the ``"embedding"`` simulation, needs ``values``).
    """
    probs, targets, truth_is_new, method, n_sim, values = simulate(targets, probs, label_map, folds, proxies,
                                                                   values, others)
    natural, orig_rank = _positions(probs, label_map, targets, truth_is_new, k)
    row_natural = _row_map(natural, truth_is_new, orig_rank, k)
    split_natural = split_map(truth_is_new, row_natural)
    if method is None:  # nothing looks new: keep the natural rule
        return {"score": score, "threshold": None, "new_rank": None, "simulation": None, "n_rows": len(targets),
                "n_simulated_new": 0, "oof": {"natural": split_natural}}
    if values is not None:
        if method == "proxy":
            raise ValueError("values need the held-out or embedding simulation (rows are copied otherwise)")
        s = np.asarray(values, dtype=np.float64)
    else:
        s = open_set_score(probs, label_map, score)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    known = (~truth_is_new)[order]
    n, n_known = len(s), int(known.sum())
    low = _row_map(np.ones_like(natural), truth_is_new, orig_rank, k)[order]
    uniq = np.unique(s_sorted)
    cuts = (uniq[1:] + uniq[:-1]) / 2 if len(uniq) > 1 else np.zeros(0)
    if len(cuts) > _MAX_THRESHOLDS:
        cuts = np.unique(np.quantile(cuts, np.linspace(0, 1, _MAX_THRESHOLDS)))
    cuts = np.concatenate([cuts, [uniq[-1] + 1e-9]])  # last: every row new first
    n_low = np.searchsorted(s_sorted, cuts, side="left")  # rows with score < cut
    known_floor = (split_natural["known"] - max_known_loss - 1e-12) if n_known else -np.inf
    best = None
    for new_rank in NEW_RANKS:
        j = natural if new_rank is None else np.minimum(natural, new_rank)
        high = _row_map(j, truth_is_new, orig_rank, k)[order]
        all_, known_ = _threshold_sweep(low, high, n_low), _threshold_sweep(low * known, high * known, n_low)
        candidates = [(all_[0] / n, known_[0], None)] + [(a / n, kn, float(c))
                                                          for a, kn, c in zip(all_[1:], known_[1:], cuts)]
        for value, known_sum, threshold in candidates:
            if n_known and known_sum / n_known < known_floor:
                continue
            if best is None or value > best[0] + 1e-12:
                best = (value, threshold, new_rank)
    if best is None:  # new_rank None without a threshold is the natural rule: always allowed
        best = (0.0, None, None)
    _, threshold, new_rank = best
    rule = {"score": score, "threshold": threshold, "new_rank": new_rank}
    j = np.minimum(natural, new_ranks(probs, label_map, rule, k, values=s))
    split_rule = split_map(truth_is_new, _row_map(j, truth_is_new, orig_rank, k))
    j = natural if new_rank is None else np.minimum(natural, new_rank)
    high = _row_map(j, truth_is_new, orig_rank, k)[order]
    return {**rule, "simulation": method, "n_rows": int(n), "n_simulated_new": n_sim,
            "known_noise": known_noise(row_natural[~truth_is_new]),
            "oof": {"natural": split_natural, "rule": split_rule},
            "curve": tradeoff_curve(s_sorted, low, high, ~known)}


def known_noise(row_scores):
    """Standard error of the mean of per-row MAP@k (the known rows under the natural rule): how far the
    known-individual OOF MAP@k moves by chance (0 for fewer than 2 rows)."""
    row_scores = np.asarray(row_scores, np.float64)
    return float(row_scores.std(ddof=1) / np.sqrt(len(row_scores))) if len(row_scores) > 1 else 0.0


def _threshold_sweep(low, high, n_low):
    """Sums of per-row MAP (rows sorted by score) with no threshold, then with rows below each cut new
    first: [len(n_low) + 1]."""
    cum_low = np.concatenate([[0.0], np.cumsum(low)])
    cum_high = np.concatenate([[0.0], np.cumsum(high)])
    return np.concatenate([[cum_high[-1]], cum_low[n_low] + cum_high[-1] - cum_high[n_low]])


def tradeoff_curve(s_sorted, low, high, is_new, points=CURVE_POINTS):
    """Known / new / all MAP@k as the threshold moves over the scores (rows sorted by score; ``low`` /
    ``high``: per-row MAP with / without new label first): list of {threshold, known, new, all}, lowest
    threshold (no row new first) first."""
    cuts = np.quantile(s_sorted, np.linspace(0, 1, points)) if len(s_sorted) else np.zeros(0)
    cuts = np.unique(np.concatenate([[s_sorted[0] - 1e-9], cuts, [s_sorted[-1] + 1e-9]])) if len(s_sorted) else cuts
    n_low = np.searchsorted(s_sorted, cuts, side="left")
    out = []
    for m, c in zip(n_low, cuts):
        row = np.concatenate([low[:m], high[m:]])
        part = split_map(is_new, row)
        out.append({"threshold": float(c), "known": part["known"], "new": part["new"], "all": part["all"]})
    return out


def describe(rule):
    """One line: what the rule does."""
    if not rule or (rule.get("threshold") is None and not rule.get("new_rank")):
        return "new label at its natural rank"
    parts = []
    if rule.get("threshold") is not None:
        parts.append(f"new label first when {rule['score']} < {rule['threshold']:.4f}")
    if rule.get("new_rank"):
        parts.append(f"new label at rank {rule['new_rank']} at the latest")
    return ", ".join(parts)


def fit_best_rule(targets, probs, label_map, folds=None, values=None, k=5, others=None, score=STORED_SCORE):
    """``fit_rule`` with ``DEFAULT_SCORE``; when ``values`` (the stored score per row, ``--openset_features``)
    are given, the rule on the stored score instead, carrying the probability rule as its ``fallback``
    (for rows without stored values). The stored score is not chosen by OOF MAP: on the photo stand-in
    both rules tied out of fold (0.956 vs 0.958) while on the test set the stored score was far better
    (new individuals 0.983 vs 0.897), since the test score averages the folds' models (BENCHMARKS.md).

    others: the stored score with each row's own individual left out (``OTHER_SCORE``): the rule is then
    fitted without held-out folds (``simulate``'s ``"embedding"``), and its max_prob fallback on the same
    copies (probabilities without their own class). score: the name of the stored score ``values`` /
    ``others`` hold (``STORED_SCORE``, or ``NEAREST_SCORE`` for the rule of the previous default)."""
    if values is not None and others is not None:
        stored = fit_rule(targets, probs, label_map, folds, score=score, k=k, values=values, others=others)
        cap = max(MAX_KNOWN_LOSS, stored.get("known_noise") or 0.0)
        matched = (stored if cap == MAX_KNOWN_LOSS else
                   fit_rule(targets, probs, label_map, folds, score=score, k=k, values=values, others=others,
                            max_known_loss=cap))
        noise_matched = {"max_known_loss": cap, "applied": False,
                         "rule": {"threshold": matched["threshold"], "new_rank": matched["new_rank"]},
                         "oof": matched["oof"].get("rule", matched["oof"]["natural"])}
        return {**stored, "noise_matched": noise_matched,
                "fallback": fit_rule(targets, probs, label_map, folds, k=k, others=others)}
    rule = fit_rule(targets, probs, label_map, folds, k=k)
    if values is None or rule["simulation"] is None:
        return rule
    stored = fit_rule(targets, probs, label_map, folds, score=score, k=k, values=values)
    return {**stored, "fallback": rule}


def rule_markdown(rule, title="Open-set rule (new individuals)"):
    """A short Markdown section about a fitted rule and its OOF MAP@5 known / new / all."""
    if not rule:
        return ""
    how = {"holdout": "individuals held out of their fold's training",
           "embedding": "every OOF row again with its own individual left out of the stored similarity "
                        "(its prototype, or its training images) and its own class out of the probabilities",
           "proxy": "extra-only rows without their own class (proxies)",
           None: "none: no row could stand for an unseen individual"}[rule["simulation"]]
    text = (f"## {title}\n\n{describe(rule)}. Fitted on {rule['n_rows']} OOF rows; simulated unseen "
            f"individuals: {rule['n_simulated_new']} rows ({how}). MAP@5 split by the truth: known = an "
            f"original individual, new = the new label (extra-only or unseen individual).\n\n")
    rows = [{"rule": name, "map5_all": part["all"], "map5_known": part["known"], "map5_new": part["new"],
             "n_known": part["n_known"], "n_new": part["n_new"]} for name, part in rule["oof"].items()]
    text += report.markdown_table(rows, ["rule", "map5_all", "map5_known", "map5_new", "n_known", "n_new"])
    matched = rule.get("noise_matched")
    if matched:
        oof = matched["oof"]
        text += (f"\nNoise-matched cap (recorded, not applied): allowing known individuals to lose "
                 f"{matched['max_known_loss']:.4f} OOF MAP@5 (the standard error of their natural-rule MAP@5, "
                 f"if above {MAX_KNOWN_LOSS}) would give "
                 f"{describe({'score': rule['score'], **matched['rule']})}: MAP@5 known {_num(oof['known'])}, "
                 f"new {_num(oof['new'])}, all {_num(oof['all'])}.\n")
    curve = rule.get("curve")
    if curve:
        step = max(1, len(curve) // 12)
        picked = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
        text += (f"\nKnown vs new MAP@5 on the same rows as the threshold on {rule['score']} moves (new label "
                 f"first below it; otherwise at rank {rule.get('new_rank') or 'natural'} at the latest); "
                 f"the fitted rule keeps known individuals within {MAX_KNOWN_LOSS} of the natural rule:\n\n")
        text += report.markdown_table([{"threshold": c["threshold"], "map5_known": c["known"], "map5_new": c["new"],
                                        "map5_all": c["all"]} for c in picked],
                                      ["threshold", "map5_known", "map5_new", "map5_all"])
    return text


def _num(x):
    return "-" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------- run directory


def rule_path(run_dir):
    return os.path.join(run_dir, RULE_FILE)


def load_rule(run_dir):
    """A member's fitted rule, or None if the run directory has none (old runs: natural rule)."""
    path = rule_path(run_dir)
    if not os.path.exists(path):
        return None
    try:
        rule = fileio.read_json(path)
        if rule["score"] not in SCORES + STORED_SCORES:
            raise ValueError(f"unknown score {rule['score']!r}")
        return rule
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable open-set rule", [f"{path}: {type(e).__name__}: {e}"]) from e
