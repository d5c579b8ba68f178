"""Score a segmentation submission (directory or tar of mask TIFFs) against hidden masks.

    python -m foldnet.tasks.segmentation.evaluate --submission sub.tar --answers data/kelp_demo/answers --naming kelp

Prints pooled Dice and IoU over all pixels of all answer tiles (and, with
``--locations CSV`` of id,location, the location-weighted IoU). Every answer
tile must have exactly one prediction of the same shape with 0/1 values;
otherwise one error names every offender (exit 2).
"""
import argparse
import sys

import pandas as pd

from foldnet.core import report
from foldnet.core.errors import DataError
from foldnet.raster import submission as seg_submission
from foldnet.tasks.segmentation import metrics as seg_metrics


def score_masks(pred, truth, locations=None):
    """Scores of {id: mask} predictions against {id: mask} truths (same ids; checked)."""
    problems = seg_submission.id_problems(pred, sorted(truth), "answer tiles without a prediction",
                                          "predictions of tiles not in the answers")
    ids = sorted(set(truth) & set(pred))
    for i in ids:
        problems += seg_submission.mask_problems(i, pred[i], truth[i].shape)
    if problems:
        raise DataError(f"submission does not match the answers ({len(problems)} problems)", problems)
    preds, truths = [pred[i] for i in ids], [truth[i] for i in ids]
    tp, fp, fn = seg_metrics.pooled_counts(preds, truths)
    scores = {"n": len(ids), "dice": seg_metrics.dice_from(tp, fp, fn), "iou": seg_metrics.iou_from(tp, fp, fn),
              "tp": tp, "fp": fp, "fn": fn}
    if locations is not None:
        unknown = [i for i in ids if i not in locations]
        if unknown:
            raise DataError("tiles without a location", [report.preview(unknown)])
        scores["location_iou"] = seg_metrics.location_iou(preds, truths, [locations[i] for i in ids])[0]
    return scores


def score_submission(submission, answers, naming="kelp", answers_naming=None, locations_csv=None):
    """Read both mask sets (directories or tars) and score them; see ``score_masks``."""
    pred = seg_submission.read_masks(submission, naming)
    truth = seg_submission.read_masks(answers, answers_naming or naming)
    locations = None
    if locations_csv is not None:
        df = pd.read_csv(locations_csv, dtype=str, keep_default_na=False)
        locations = dict(zip(df.iloc[:, 0], df.iloc[:, 1]))
    return score_masks(pred, truth, locations)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True, help="directory or tar of mask TIFFs")
    p.add_argument("--answers", required=True, help="directory or tar of the true masks")
    p.add_argument("--naming", type=seg_submission.naming_arg, default="kelp",
                   help=f"file names: {', '.join(f'{k} ({v})' for k, v in seg_submission.NAMING.items())} "
                        "or a pattern with {id} (default: %(default)s)")
    p.add_argument("--answers_naming", type=seg_submission.naming_arg,
                   help="file names of the answers if they differ (default: --naming)")
    p.add_argument("--locations", help="CSV id,location: also report the location-weighted IoU")
    p.add_argument("--label", default="submission", help="name printed with the scores")
    a = p.parse_args(argv)
    from foldnet.core.cli import run_main

    result = []
    rc = run_main(lambda: result.append(score_submission(a.submission, a.answers, a.naming, a.answers_naming,
                                                         a.locations)))
    if rc:
        return rc
    s = result[0]
    extra = f", location-weighted IoU {s['location_iou']:.4f}" if "location_iou" in s else ""
    print(f"{a.label}: test set ({s['n']} tiles): Dice {s['dice']:.4f}, IoU {s['iou']:.4f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
