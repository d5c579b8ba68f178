"""Segmentation scores in numpy (no TensorFlow): pooled Dice / IoU, location-weighted IoU,
and the Dice-vs-threshold table a decision threshold is fitted on.

Conventions (shared by every function here):

* A prediction is positive where ``prob >= threshold``; binary masks are
  anything with 0/1 (or bool) values, probability maps are floats in [0, 1]
  or uint8 maps quantised as ``value / 255``.
* ``valid`` (optional, per tile) excludes pixels from every count (missing
  data); without it every pixel counts, as in the competitions' scoring.
* Pooled scores sum true positives (TP), false positives (FP) and false
  negatives (FN) over all pixels of all tiles, then take one ratio:
  Dice = 2 TP / (2 TP + FP + FN) (Kelp Wanted), IoU = TP / (TP + FP + FN)
  (On Cloud N). When there is nothing positive in the truth and nothing
  predicted (denominator 0) the score is 1.0: nothing to find, nothing found.
* Location-weighted IoU: per location sum(I) / sum(U) over its tiles, then
  the unweighted mean over locations (a location with U = 0 counts 1.0; ``location_iou_empty0``
  counts it 0, as the 3rd-place On Cloud N solution's validation metric).
"""
import numpy as np

from foldnet.core import fileio, report
from foldnet.tasks.segmentation.settings import DEFAULT_THRESHOLD

# Thresholds of the default Dice-vs-threshold table: 0.05, 0.06, ..., 0.95.
DEFAULT_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)
METRICS = ("dice", "iou")


def as_probs(x):
    """A probability map as float: uint8 maps are ``value / 255``, floats are kept."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == bool:
        return x.astype(np.float32)
    return x


def counts(pred, truth, valid=None):
    """(TP, FP, FN) of one binary prediction against one binary truth, over valid pixels."""
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        pred, truth = pred & valid, truth & valid
    tp = int(np.count_nonzero(pred & truth))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp


def dice_from(tp, fp, fn):
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2.0 * tp / den


def iou_from(tp, fp, fn):
    den = tp + fp + fn
    return 1.0 if den == 0 else tp / den


def _tiles(preds, truths, valids):
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} truths")
    valids = [None] * len(preds) if valids is None else list(valids)
    if len(valids) != len(preds):
        raise ValueError(f"{len(valids)} valid masks for {len(preds)} tiles")
    return zip(preds, truths, valids)


def pooled_counts(preds, truths, valids=None):
    """(TP, FP, FN) summed over all tiles; preds/truths: sequences (or stacked arrays) of [H, W]."""
    tp = fp = fn = 0
    for p, t, v in _tiles(preds, truths, valids):
        a, b, c = counts(p, t, v)
        tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn


def pooled_dice(preds, truths, valids=None):
    """Dice over all pixels of all tiles (Kelp Wanted's metric)."""
    return dice_from(*pooled_counts(preds, truths, valids))


def pooled_iou(preds, truths, valids=None):
    """IoU (Jaccard) over all pixels of all tiles (On Cloud N's metric)."""
    return iou_from(*pooled_counts(preds, truths, valids))


def location_iou(preds, truths, locations, valids=None):
    """Mean over locations of (sum of intersections / sum of unions) of each location's tiles.

    preds: binary predictions. Returns (score, {location: iou}).
    """
    preds, locations = list(preds), [str(x) for x in locations]
    if len(locations) != len(preds):
        raise ValueError(f"{len(locations)} locations for {len(preds)} tiles")
    if not preds:
        raise ValueError("no tiles to score")
    acc = Scores(thresholds=[DEFAULT_THRESHOLD], locations={str(k): loc for k, loc in enumerate(locations)})
    acc.add([np.asarray(p).astype(bool) for p in preds], truths, range(len(preds)), valids)
    return acc.location_iou()


# ---------------------------------------------------------------- threshold fitting


class ThresholdCurve:
    """TP / FP / FN at many thresholds, accumulated tile by tile (memory: the thresholds only).

    ``add(prob, truth, valid)`` takes one probability map; a pixel is
    positive at threshold t when prob >= t. Exact for any probabilities (no
    binning): the counts of pixels by number of thresholds passed come from
    a search of the thresholds in the sorted probabilities, and cumulative
    sums give the counts at every threshold.
    """

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = np.asarray(sorted(float(t) for t in thresholds), np.float64)
        if len(self.thresholds) == 0:
            raise ValueError("no thresholds")
        k = len(self.thresholds)
        self._pos = np.zeros(k + 1, np.int64)  # truth-positive pixels by number of thresholds passed
        self._neg = np.zeros(k + 1, np.int64)

    def add(self, prob, truth, valid=None):
        prob = as_probs(prob)
        truth = np.asarray(truth).astype(bool)
        if prob.shape != truth.shape:
            raise ValueError(f"probability map shape {prob.shape} != truth shape {truth.shape}")
        if valid is not None:
            keep = np.asarray(valid).astype(bool)
            prob, truth = prob[keep], truth[keep]
        prob, truth = prob.ravel(), truth.ravel()
        self._pos += self._passed(prob[truth])
        self._neg += self._passed(prob[~truth])
        return self

    def merge(self, other):
        """Add the counts of another curve over the same thresholds."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("curves over different thresholds")
        self._pos += other._pos
        self._neg += other._neg
        return self

    def _passed(self, values):
        """Pixels by number of thresholds passed (``values >= t``): [k + 1] counts.

        Sorting the values and searching the few thresholds in them is ~3x
        faster than searching every value among the thresholds; the
        comparisons are the same (in float64).
        """
        below = np.searchsorted(np.sort(values), self.thresholds, side="left")  # values < t_j
        return np.diff(below, prepend=0, append=len(values))

    def table(self):
        """Rows {threshold, dice, iou, tp, fp, fn}, one per threshold (ascending)."""
        # A pixel that passed m thresholds is positive at thresholds 0..m-1: counts at threshold j
        # are the pixels with m > j, a reversed cumulative sum.
        tp_at = np.cumsum(self._pos[::-1])[::-1][1:]
        fp_at = np.cumsum(self._neg[::-1])[::-1][1:]
        total_pos = int(self._pos.sum())
        rows = []
        for t, tp, fp in zip(self.thresholds, tp_at, fp_at):
            tp, fp = int(tp), int(fp)
            fn = total_pos - tp
            rows.append({"threshold": float(t), "dice": dice_from(tp, fp, fn), "iou": iou_from(tp, fp, fn),
                         "tp": tp, "fp": fp, "fn": fn})
        return rows


def best_threshold(rows, metric="dice"):
    """The row with the highest ``metric``; ties go to the threshold nearest 0.5."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return max(rows, key=lambda r: (r[metric], -abs(r["threshold"] - 0.5)))


def threshold_table(probs, truths, valids=None, thresholds=DEFAULT_THRESHOLDS, metric="dice"):
    """(rows, best row) of the pooled score at each threshold over tiles of probability maps."""
    curve = ThresholdCurve(thresholds)
    for p, t, v in _tiles(probs, truths, valids):
        curve.add(p, t, v)
    rows = curve.table()
    return rows, best_threshold(rows, metric)


class Scores:
    """Every OOF score of probability maps, accumulated block by block (memory: counters only).

    ``add(probs, truths, ids)`` takes a block of tiles ([n, H, W] maps and
    masks; ``ids`` needed only with ``locations``). Holds the pooled TP / FP /
    FN at ``threshold`` (positive where prob >= threshold), the
    ``ThresholdCurve`` and, with ``locations`` ({tile id: location}), each
    location's sum of intersections and unions at ``threshold``. Adding the
    tiles in any blocks gives the same results as adding them all at once.
    """

    def __init__(self, thresholds=DEFAULT_THRESHOLDS, threshold=DEFAULT_THRESHOLD, locations=None):
        self.curve = ThresholdCurve(thresholds)
        self.threshold = float(threshold)
        self.locations = locations
        self.tp = self.fp = self.fn = 0
        self.per_location = {}
        self.n = 0

    def add(self, probs, truths, ids=None, valids=None):
        if self.locations is not None and ids is None:
            raise ValueError("location scores need the tile ids")
        ids = [None] * len(probs) if ids is None else [str(i) for i in ids]
        for (p, t, v), tile in zip(_tiles(probs, truths, valids), ids, strict=True):
            p = as_probs(p)
            tp, fp, fn = counts(p >= self.threshold, t, v)
            self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
            if self.locations is not None:
                if tile not in self.locations:
                    raise ValueError(f"tile {tile!r} has no location")
                loc = str(self.locations[tile])
                inter, union = self.per_location.get(loc, (0, 0))
                self.per_location[loc] = (inter + tp, union + tp + fp + fn)
            self.curve.add(p, t, v)
            self.n += 1
        return self

    def merge(self, other):
        """Add the counts of another ``Scores`` (same thresholds): as if its tiles had been added here."""
        if other.threshold != self.threshold:
            raise ValueError("scores at different thresholds")
        self.curve.merge(other.curve)
        self.tp, self.fp, self.fn, self.n = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.n + other.n
        for loc, (i, u) in other.per_location.items():
            inter, union = self.per_location.get(loc, (0, 0))
            self.per_location[loc] = (inter + i, union + u)
        return self

    def location_iou(self, empty=1.0):
        """(mean over locations of sum I / sum U, {location: iou}); (None, {}) without locations.

        empty: the IoU of a location with no predicted and no true pixel (sum U = 0): 1.0, foldnet's
        convention, or 0.0, the 3rd-place On Cloud N solution's (``train.py:160-162``)."""
        if not self.per_location:
            return None, {}
        ious = {loc: (float(empty) if u == 0 else i / u) for loc, (i, u) in sorted(self.per_location.items())}
        return float(np.mean(list(ious.values()))), ious

    def result(self, metric="dice"):
        """{dice, iou[, location_iou, location_iou_empty0], dice_best, threshold}: pooled at ``threshold``
        and the best of the curve; location_iou_empty0 scores an empty location 0 (``location_iou``)."""
        rows = self.curve.table()
        best = best_threshold(rows, metric)
        out = {"dice": dice_from(self.tp, self.fp, self.fn), "iou": iou_from(self.tp, self.fp, self.fn)}
        loc, _ = self.location_iou()
        if loc is not None:
            out["location_iou"] = loc
            out["location_iou_empty0"] = self.location_iou(empty=0.0)[0]
        out.update({"dice_best": best["dice"], "threshold": best["threshold"]})
        return out


def write_threshold_report(rows, best, md_path, png_path=None, title="", metric="dice"):
    """Markdown table (and PNG curve) of score vs threshold; returns the paths written."""
    lines = [f"# {title or 'Score vs decision threshold'}\n",
             f"Best {metric} {best[metric]:.4f} at threshold {best['threshold']:.2f} "
             f"(pooled over all pixels; positive where probability >= threshold).\n",
             report.markdown_table(rows, ["threshold", "dice", "iou", "tp", "fp", "fn"])]
    fileio.atomic_write_owned_text(md_path, "\n".join(lines))
    written = [md_path]
    if png_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        th = [r["threshold"] for r in rows]
        for m in METRICS:
            ax.plot(th, [r[m] for r in rows], label=m)
        ax.axvline(best["threshold"], color="grey", ls="--", lw=1)
        ax.annotate(f"best {metric} {best[metric]:.4f} @ {best['threshold']:.2f}",
                    (best["threshold"], best[metric]), fontsize=8)
        ax.set_xlabel("threshold")
        ax.set_ylabel("pooled score")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with fileio.owned_path(png_path) as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
        written.append(png_path)
    return written
