"""The open-set rule on trained members: MAP@5 on known / new individuals, natural rule vs fitted rule.

For each run directory (a member trained on a dataset with test-only
individuals, e.g. ``demo_data --kind photos``): fits the rule on the
member's OOF predictions with every open-set score (``openset.SCORES``) and
applies it to the member's averaged test predictions, scored against the
answers file (known / new / all, and by ``individual_kind``). The OOF
columns show what the fit predicted; the test columns what happened.

    python bench/bench_openset.py --runs RUN_DIR [RUN_DIR ...] --answers data/photos/answers.csv

Nothing is trained here: train the members first (``run.py``), e.g. one on
folds made with ``create_tfrecords.py --holdout_individuals 0.2`` and one
without (the rule is then fitted on extra-only proxies, ``proxies=True``,
which foldnet itself does not use).
"""
import argparse
import os

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd

from foldnet.ensemble.averaging import average_test
from foldnet.io import rundir
from foldnet.tasks import base as tasks
from foldnet.tasks.classification import openset
from foldnet.tasks.classification.evaluate import KIND_COLUMN
from foldnet.tasks.classification.labels import LabelMap
from foldnet.tasks.classification.task import TASK as CLASSIFICATION


def member_arrays(run):
    task = tasks.get("classification")
    label_map = LabelMap.load(os.path.join(run, "label_map.json"))
    folds = rundir.read_oof(run, task, reduce=lambda o: o.mean(axis=0))
    targets = np.concatenate([f.targets for f in folds])
    oof = np.concatenate([f.outputs for f in folds])
    fold = np.concatenate([np.full(len(f.ids), f.fold) for f in folds])
    return label_map, targets, oof, fold


def test_split(probs, label_map, rule, answers):
    preds = openset.top_k_labels(probs, label_map, rule)
    truth = answers.iloc[:, 1].astype(str).tolist()
    row = openset.label_row_scores(truth, preds)
    is_new = np.array([t == label_map.new_label for t in truth])
    out = openset.split_map(is_new, row)
    if KIND_COLUMN in answers.columns:
        for kind in sorted(set(answers[KIND_COLUMN])):
            out[kind] = float(row[(answers[KIND_COLUMN] == kind).to_numpy()].mean())
    return out


COLUMNS = ["run", "rule", "simulation", "threshold", "new_rank", "oof_known", "oof_new", "oof_all",
           "test_known", "test_new", "test_all", "extra_only", "test_only"]


def row(run, name, rule, oof, test):
    return {"run": run, "rule": name, "simulation": (rule or {}).get("simulation"),
            "threshold": (rule or {}).get("threshold"), "new_rank": (rule or {}).get("new_rank") or "natural",
            **{f"oof_{k}": (oof or {}).get(k) for k in ("known", "new", "all")},
            **{f"test_{k}": test[k] for k in ("known", "new", "all")},
            "extra_only": test.get("extra_only"), "test_only": test.get("test_only")}


def main(argv=None):
    from foldnet.core import report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--answers", required=True)
    a = p.parse_args(argv)
    answers = pd.read_csv(a.answers, dtype=str, keep_default_na=False)
    ids = answers.iloc[:, 0].to_numpy()
    rows = []
    for run in a.runs:
        name = os.path.basename(os.path.normpath(run))
        label_map, targets, oof, fold = member_arrays(run)
        test = average_test([run], ids, task=CLASSIFICATION)
        fitted = {score: openset.fit_rule(targets, oof, label_map, fold, score=score, proxies=True)
                  for score in openset.SCORES}
        first = fitted[openset.DEFAULT_SCORE]
        rows.append(row(name, "natural (today)", None, first["oof"]["natural"],
                        test_split(test, label_map, None, answers)))
        for score, rule in fitted.items():
            rows.append(row(name, score, rule, rule["oof"].get("rule"), test_split(test, label_map, rule, answers)))
        # The best max_prob threshold in hindsight on the test set: the ceiling of any fit.
        s = openset.open_set_score(test, label_map)
        tried = [{"score": "max_prob", "threshold": float(c), "new_rank": None, "simulation": "test (hindsight)"}
                 for c in np.unique(s)]
        best = max(tried, key=lambda r: test_split(test, label_map, r, answers)["all"])
        rows.append(row(name, "max_prob, best on test", best, None, test_split(test, label_map, best, answers)))
    text = ("# Open-set rule: natural vs fitted, MAP@5 split by the truth\n\n"
            "oof_*: on the simulated OOF rows the rule was fitted on; test_*: the member's averaged test "
            "predictions against the answers; extra_only / test_only: test rows of those individuals.\n\n")
    common.write_out(text + report.markdown_table(rows, COLUMNS), "openset")


if __name__ == "__main__":
    main()
