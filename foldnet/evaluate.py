"""Score a submission CSV against an answers CSV (id, true label): MAP@5 and top-1.

    python -m foldnet.evaluate --submission submission.csv --answers data/demo/answers.csv
"""
import argparse
import sys

import pandas as pd

from . import metrics
from .errors import DataError


def score_submission(submission_csv, answers_csv, k=5):
    sub = pd.read_csv(submission_csv, dtype=str)
    ans = pd.read_csv(answers_csv, dtype=str)
    id_col, label_col = ans.columns[0], ans.columns[1]
    if sub.columns[0] != id_col:
        raise DataError(f"{submission_csv}: first column is {sub.columns[0]!r}, answers use {id_col!r}")
    merged = ans.merge(sub, on=id_col, how="left", validate="one_to_one")
    pred_cols = list(sub.columns[1:1 + k])
    missing = merged[merged[pred_cols[0]].isna()][id_col].tolist()
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
    try:
        s = score_submission(a.submission, a.answers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"test set ({s['n']} images): MAP@5 {s['map5']:.4f}, top-1 accuracy {s['top1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
