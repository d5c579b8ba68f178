"""The open-set rule fitted without held-out folds (embedding simulation) vs with them: MAP@5 known / new / all.

For each run directory whose prediction files hold the stored scores
(``openset_features``: ``nearest_train_cosine`` and ``nearest_other_cosine``,
e.g. ``run.py --job val_test_score`` of this version), fits the rule on the
member's OOF rows in each way foldnet can and applies it to the member's
averaged test predictions (stored score averaged over folds), scored against
the answers file:

- natural: the plain new-label rule;
- holdout max_prob / holdout stored: the rule on OOF rows of held-out
  individuals (folds from ``create_tfrecords.py --holdout_individuals``;
  nothing to fit otherwise), on the largest probability / on the stored
  similarity (the default before);
- embedding: every OOF row again as an unseen individual, its similarity to
  the nearest training image of another individual (the default now), and
  its max_prob fallback; ``unprotected``: the same without the cap on the
  known individuals' OOF loss.

    python bench/bench_openset_embedding.py --runs RUN_DIR [RUN_DIR ...] --answers data/photos/answers.csv
"""
import argparse
import os

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd
from bench_openset import member_arrays

from foldnet.core import report
from foldnet.ensemble.averaging import average_test
from foldnet.io import rundir
from foldnet.tasks.classification import openset
from foldnet.tasks.classification.task import TASK as CLASSIFICATION

COLUMNS = ["run", "rule", "simulation", "score", "threshold", "new_rank", "oof_known", "oof_new", "oof_all",
           "test_known", "test_new", "test_all", "extra_only", "test_only"]


def stored(run, split, ids, key):
    values = rundir.row_values([run], [1.0], split, ids, key)
    return None if values is None else np.array([values[str(i)] for i in ids])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--answers", required=True)
    a = p.parse_args(argv)
    answers = pd.read_csv(a.answers, dtype=str, keep_default_na=False)
    ids = answers.iloc[:, 0].to_numpy()
    rows, rows_curve = [], []
    for run in a.runs:
        name = os.path.basename(os.path.normpath(run))
        label_map, targets, oof, fold = member_arrays(run)
        oof_ids = np.concatenate([f.ids for f in rundir.read_oof(run, CLASSIFICATION, reduce=lambda o: o[0])])
        keys = {"prototype": (openset.STORED_SCORE, openset.OTHER_SCORE),
                "nearest": (openset.NEAREST_SCORE, openset.NEAREST_OTHER_SCORE)}
        test = average_test([run], ids, task=CLASSIFICATION)
        values = {n: stored(run, "oof", oof_ids, k[0]) for n, k in keys.items()}
        others = {n: stored(run, "oof", oof_ids, k[1]) for n, k in keys.items()}
        test_values = {n: stored(run, "test", ids, k[0]) for n, k in keys.items()}
        holdout_prob = openset.fit_rule(targets, oof, label_map, fold)
        holdout = {n: openset.fit_rule(targets, oof, label_map, fold, score=keys[n][0], values=values[n])
                   for n in keys}
        embedding = {n: openset.fit_best_rule(targets, oof, label_map, fold, values=values[n], others=others[n],
                                              score=keys[n][0]) for n in keys}
        free = openset.fit_rule(targets, oof, label_map, fold, score=openset.STORED_SCORE,
                                values=values["prototype"], others=others["prototype"], max_known_loss=1.0)
        default = embedding["prototype"]
        candidates = [("natural", None, holdout_prob["oof"]["natural"]),
                      ("holdout max_prob", holdout_prob, holdout_prob["oof"].get("rule")),
                      ("holdout nearest", holdout["nearest"], holdout["nearest"]["oof"].get("rule")),
                      ("holdout prototype", holdout["prototype"], holdout["prototype"]["oof"].get("rule")),
                      ("embedding nearest (default before)", embedding["nearest"],
                       embedding["nearest"]["oof"].get("rule")),
                      ("embedding prototype (default)", default, default["oof"].get("rule")),
                      ("embedding max_prob (fallback)", default.get("fallback"),
                       (default.get("fallback") or {}).get("oof", {}).get("rule")),
                      ("embedding prototype, unprotected", free, free["oof"].get("rule"))]
        if default.get("noise_matched"):
            nm = {**default, **default["noise_matched"]["rule"]}
            candidates.append((f"embedding prototype, noise-matched cap "
                               f"{default['noise_matched']['max_known_loss']:.4f} (not applied)", nm,
                               default["noise_matched"]["oof"]))
        for label, rule, split in candidates:
            if rule is not None and rule.get("simulation") is None:
                rule = None  # nothing could be simulated: the natural rule
            score = (rule or {}).get("score")
            name_of = {k[0]: n for n, k in keys.items()}
            vals = test_values[name_of[score]] if score in name_of else None
            preds = openset.top_k_labels(test, label_map, rule, values=vals, values_score=score)
            test_row = test_split_from_preds(preds, label_map, answers)
            rows.append({"run": name, "rule": label, "simulation": (rule or {}).get("simulation"),
                         "score": score, "threshold": (rule or {}).get("threshold"),
                         "new_rank": (rule or {}).get("new_rank") or "natural",
                         **{f"oof_{k}": (split or {}).get(k) for k in ("known", "new", "all")},
                         **{f"test_{k}": test_row[k] for k in ("known", "new", "all")},
                         "extra_only": test_row.get("extra_only"), "test_only": test_row.get("test_only")})
        embedding, test_values = default, test_values["prototype"]
        # the trade-off on the test set as the embedding rule's threshold moves
        s = np.sort(test_values)
        curve = []
        for c in np.quantile(s, np.linspace(0, 1, 11)):
            r = {**embedding, "threshold": float(c) + 1e-9}
            t = test_split_from_preds(openset.top_k_labels(test, label_map, r, values=test_values), label_map, answers)
            curve.append({"run": name, "threshold": float(c), "test_known": t["known"], "test_new": t["new"],
                          "test_all": t["all"]})
        rows_curve += curve
    text = ("# Open-set rule without held-out folds (embedding simulation) vs held-out individuals\n\n"
            "oof_*: MAP@5 on the rows each rule was fitted on (simulated rows included); test_*: the member's "
            "averaged test predictions against the answers; extra_only / test_only: test rows of those "
            "individuals.\n\n" + report.markdown_table(rows, COLUMNS)
            + "\n\nTest MAP@5 as the embedding rule's threshold moves:\n\n"
            + report.markdown_table(rows_curve, ["run", "threshold", "test_known", "test_new", "test_all"]))
    common.write_out(text, "openset_embedding")


def test_split_from_preds(preds, label_map, answers):
    from foldnet.tasks.classification.evaluate import KIND_COLUMN

    truth = answers.iloc[:, 1].astype(str).tolist()
    row = openset.label_row_scores(truth, preds)
    is_new = np.array([t == label_map.new_label for t in truth])
    out = openset.split_map(is_new, row)
    if KIND_COLUMN in answers.columns:
        for kind in sorted(set(answers[KIND_COLUMN])):
            out[kind] = float(row[(answers[KIND_COLUMN] == kind).to_numpy()].mean())
    return out


if __name__ == "__main__":
    main()
