"""Score a temporal regression submission (directory or tar of map TIFFs) against hidden target maps.

    python -m foldnet.tasks.temporal.evaluate --submission sub.tar --answers data/biomass_demo/answers

Prints the competition's metric (RMSE per chip, averaged over chips, no cap)
and the pooled RMSE, and both over targets <= ``--cap`` (default 400). Every
answer chip must have exactly one prediction of the same shape with finite
values; otherwise one error names every offender (exit 2).
"""
import argparse
import sys

import numpy as np

from foldnet.core.errors import DataError
from foldnet.raster import submission as seg_submission
from foldnet.tasks.temporal import metrics as temporal_metrics
from foldnet.tasks.temporal import submission as temporal_submission


def score_maps(pred, truth, cap=temporal_metrics.DEFAULT_CAP):
    """``temporal_metrics.scores`` of {id: map} predictions against {id: map} truths (same ids; checked)."""
    problems = seg_submission.id_problems(pred, sorted(truth), "answer chips without a prediction",
                                          "predictions of chips not in the answers")
    ids = sorted(set(truth) & set(pred))
    for i in ids:
        problems += temporal_submission.map_problems(i, pred[i], truth[i].shape)
    if problems:
        raise DataError(f"submission does not match the answers ({len(problems)} problems)", problems)
    if not ids:
        raise DataError("no answer chips to score")
    preds = np.stack([np.asarray(pred[i], np.float32) for i in ids])
    truths = np.stack([np.asarray(truth[i], np.float32) for i in ids])
    return temporal_metrics.scores(truths, preds, cap)


def score_submission(submission, answers, naming="biomassters", answers_naming=None, cap=temporal_metrics.DEFAULT_CAP):
    """Read both map sets (directories or tars) and score them; see ``score_maps``."""
    pred = temporal_submission.read_maps(submission, naming)
    truth = temporal_submission.read_maps(answers, answers_naming or naming)
    return score_maps(pred, truth, cap)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True, help="directory or tar of map TIFFs")
    p.add_argument("--answers", required=True, help="directory or tar of the true maps")
    p.add_argument("--naming", type=seg_submission.naming_arg, default="biomassters",
                   help="file names: biomassters ({id}_agbm.tif), generic ({id}.tif) or a pattern with {id} "
                        "(default: %(default)s)")
    p.add_argument("--answers_naming", type=seg_submission.naming_arg,
                   help="file names of the answers if they differ (default: --naming)")
    p.add_argument("--cap", type=float, default=temporal_metrics.DEFAULT_CAP,
                   help="also score only targets <= cap (default: %(default)s)")
    p.add_argument("--label", default="submission", help="name printed with the scores")
    a = p.parse_args(argv)
    from foldnet.core.cli import run_main

    result = []
    rc = run_main(lambda: result.append(score_submission(a.submission, a.answers, a.naming, a.answers_naming, a.cap)))
    if rc:
        return rc
    s = result[0]
    print(f"{a.label}: test set ({s['n_chips']} chips): RMSE {s['rmse']:.4f} (per chip, averaged; pooled "
          f"{s['pooled_rmse']:.4f}); targets <= {s['cap']:g}: RMSE {s['rmse_capped']:.4f} (pooled "
          f"{s['pooled_rmse_capped']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
