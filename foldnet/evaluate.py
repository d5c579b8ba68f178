"""Score a submission CSV against an answers CSV (id, true label): MAP@5 and top-1.

    python -m foldnet.evaluate --submission submission.csv --answers data/demo/answers.csv
"""
import argparse
import sys

import pandas as pd

from . import metrics
from .errors import DataError


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


def score_submission(submission_csv, answers_csv, k=5):
    sub = _read(submission_csv, "submission", 2)
    ans = _read(answers_csv, "answers", 2)
    id_col, label_col = ans.columns[0], ans.columns[1]
    if sub.columns[0] != id_col:
        raise DataError(f"{submission_csv}: first column is {sub.columns[0]!r}, answers use {id_col!r}")
    merged = ans.merge(sub, on=id_col, how="left", validate="one_to_one", indicator="_found")
    pred_cols = list(sub.columns[1:1 + k])
    missing = merged[merged["_found"] == "left_only"][id_col].tolist()
    if missing:
        raise DataError(f"{submission_csv}: {len(missing)} answer ids have no prediction", missing)
    preds = merged[pred_cols].values.tolist()
    truth = merged[label_col].tolist()
    return {
        "n": len(truth),
        f"map{k}": metrics.map_at_k_labels(truth, preds, k=k),
        "top1": float(sum(p[0] == t for p, t in zip(preds, truth)) / len(truth)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True)
    p.add_argument("--answers", required=True, help="CSV: id column, true label column")
    a = p.parse_args(argv)
    from .cli import run_main

    scores = []
    rc = run_main(lambda: scores.append(score_submission(a.submission, a.answers)))
    if rc:
        return rc
    s = scores[0]
    print(f"test set ({s['n']} images): MAP@5 {s['map5']:.4f}, top-1 accuracy {s['top1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
