"""Score a submission CSV against an answers CSV (id, true label): MAP@5 and top-1, all / known / new.

    python -m foldnet.tasks.classification.evaluate --submission submission.csv --answers data/demo/answers.csv

Rows whose true label is the new label (``--new_label``, default
``new_turtle``) are "new", the others "known"; each part is scored alone
too. An answers column ``individual_kind`` (the demo datasets write one:
original / extra_only / test_only) splits the scores further.
"""
import argparse
import sys

import numpy as np
import pandas as pd

from foldnet.core.errors import DataError
from foldnet.tasks.classification import metrics
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL

KIND_COLUMN = "individual_kind"


def _read(path, what, min_columns):
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:  # missing, unreadable, empty or not a CSV
        raise DataError(f"cannot read the {what} {path}", [f"{path}: {e}"]) from None
    if df.shape[1] < min_columns:
        raise DataError(f"{path}: the {what} needs at least {min_columns} columns", [f"columns: {list(df.columns)}"])
    dup = df.iloc[:, 0][df.iloc[:, 0].duplicated()].tolist()
    if dup:
        raise DataError(f"{path}: repeated ids in the {what}", dup[:20])
    return df


def score_submission(submission_csv, answers_csv, k=5, new_label=DEFAULT_NEW_LABEL):
    """{"n", "map<k>", "top1", "known": part, "new": part[, "by_kind": {kind: part}]} (see module doc)."""
    sub = _read(submission_csv, "submission", 2)
    ans = _read(answers_csv, "answers", 2)
    id_col, label_col = ans.columns[0], ans.columns[1]
    if sub.columns[0] != id_col:
        raise DataError(f"{submission_csv}: first column is {sub.columns[0]!r}, answers use {id_col!r}")
    same = [c for c in sub.columns[1:1 + k] if c in ans.columns]
    if same:
        raise DataError(f"{submission_csv}: not a submission: its prediction columns {same} are columns of the "
                        f"answers {answers_csv} (a submission has the id column, then prediction1..prediction{k})")
    merged = ans.merge(sub, on=id_col, how="left", validate="one_to_one", indicator="_found")
    pred_cols = list(sub.columns[1:1 + k])
    missing = merged[merged["_found"] == "left_only"][id_col].tolist()
    if missing:
        raise DataError(f"{submission_csv}: {len(missing)} answer ids have no prediction", missing)
    preds = merged[pred_cols].values.tolist()
    truth = merged[label_col].tolist()
    out = _part(truth, preds, k)
    is_new = np.array([t == new_label for t in truth])
    out["known"] = _part(*_rows(truth, preds, ~is_new), k)
    out["new"] = _part(*_rows(truth, preds, is_new), k)
    if KIND_COLUMN in ans.columns:
        kinds = merged[KIND_COLUMN].to_numpy()
        out["by_kind"] = {str(kind): _part(*_rows(truth, preds, kinds == kind), k) for kind in sorted(set(kinds))}
    return out


def _rows(truth, preds, mask):
    return [t for t, m in zip(truth, mask) if m], [p for p, m in zip(preds, mask) if m]


def _part(truth, preds, k):
    """{"n", "map<k>", "top1"} of some rows (scores None when there are none)."""
    if not truth:
        return {"n": 0, f"map{k}": None, "top1": None}
    return {
        "n": len(truth),
        f"map{k}": metrics.map_at_k_labels(truth, preds, k=k),
        "top1": float(sum(p[0] == t for p, t in zip(preds, truth)) / len(truth)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True)
    p.add_argument("--answers", required=True, help="CSV: id column, true label column")
    p.add_argument("--new_label", default=DEFAULT_NEW_LABEL,
                   help="true label of new individuals (default: %(default)s)")
    a = p.parse_args(argv)
    from foldnet.core.cli import run_main

    scores = []
    rc = run_main(lambda: scores.append(score_submission(a.submission, a.answers, new_label=a.new_label)))
    if rc:
        return rc
    s = scores[0]
    print(f"test set ({s['n']} images): MAP@5 {s['map5']:.4f}, top-1 accuracy {s['top1']:.4f}")
    parts = [("known individuals", s["known"]), (f"new individuals ({a.new_label})", s["new"])]
    parts += [(f"  {kind}", part) for kind, part in s.get("by_kind", {}).items()]
    for name, part in parts:
        if part["n"]:
            print(f"  {name} ({part['n']} images): MAP@5 {part['map5']:.4f}, top-1 accuracy {part['top1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
