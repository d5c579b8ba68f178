"""RMSE scores of predicted maps against target maps (numpy; no TensorFlow).

Valid pixels: target >= 0 (negative targets mark unknown pixels: padding,
no-data labels, test chips) and, when ``cap`` is given, target <= cap (the
1st place's loss ignored targets above 400).

* ``chip_rmse``: RMSE of each chip over its valid pixels, then the mean over
  the chips that have any valid pixel (a chip without one is skipped, never
  NaN). The BioMassters metric is this without a cap ("average RMSE").
* ``pooled_rmse``: one RMSE over the valid pixels of all chips.

``scores`` reports both, capped and uncapped. Arguments in the order of
sklearn's metrics: targets first, then predictions.
"""
import numpy as np

from foldnet.tasks.temporal.settings import TARGET_CAP

DEFAULT_CAP = TARGET_CAP


def _valid(targets, cap):
    ok = np.isfinite(targets) & (targets >= 0)
    if cap is not None:
        ok &= targets <= cap
    return ok


def _as_maps(targets, preds):
    preds = np.asarray(preds, np.float64)
    targets = np.asarray(targets, np.float64)
    if preds.ndim == targets.ndim + 1 and preds.shape[-1] == 1:
        preds = preds[..., 0]
    if preds.shape != targets.shape:
        raise ValueError(f"predictions {preds.shape} and targets {targets.shape} differ in shape")
    if preds.ndim == 2:
        preds, targets = preds[None], targets[None]
    return preds.reshape(len(preds), -1), targets.reshape(len(targets), -1)


def chip_errors(targets, preds, cap=None):
    """(sum of squared errors, valid pixel count) per chip: float64 [n], int64 [n]."""
    p, t = _as_maps(targets, preds)
    ok = _valid(t, cap)
    sq = np.where(ok, (p - np.where(ok, t, 0.0)) ** 2, 0.0)
    return sq.sum(1), ok.sum(1)


def per_chip_rmse(targets, preds, cap=None):
    """RMSE of every chip over its valid pixels: float64 [n], NaN for a chip without any (see chip_rmse)."""
    sse, n = chip_errors(targets, preds, cap)
    out = np.full(len(n), np.nan)
    out[n > 0] = np.sqrt(sse[n > 0] / n[n > 0])
    return out


def rmse_of_errors(sse, n):
    """(chip RMSE, pooled RMSE) from per-chip sums of squared errors and valid pixel counts
    (``chip_errors``): the mean over the chips with a valid pixel of their RMSE, and the RMSE over
    all valid pixels; NaN only when no chip has any valid pixel."""
    sse, n = np.asarray(sse, np.float64), np.asarray(n)
    has = n > 0
    chip = float(np.mean(np.sqrt(sse[has] / n[has]))) if has.any() else float("nan")
    pooled = float(np.sqrt(sse.sum() / n.sum())) if n.sum() else float("nan")
    return chip, pooled


def chip_rmse(targets, preds, cap=None):
    """Mean over the chips with a valid pixel of the per-chip RMSE (chips without one skipped); NaN only
    when no chip has any valid pixel."""
    return rmse_of_errors(*chip_errors(targets, preds, cap))[0]


def pooled_rmse(targets, preds, cap=None):
    """RMSE over the valid pixels of all chips (NaN only when there is none)."""
    return rmse_of_errors(*chip_errors(targets, preds, cap))[1]


def scores(targets, preds, cap=DEFAULT_CAP):
    """{rmse, pooled_rmse (uncapped: the competition's view), rmse_capped, pooled_rmse_capped (targets <= cap),
    n_chips (with a valid pixel), cap}."""
    sse, n = chip_errors(targets, preds, None)
    out = {"rmse": chip_rmse(targets, preds), "pooled_rmse": pooled_rmse(targets, preds),
           "n_chips": int((n > 0).sum())}
    if cap is not None:
        out.update(rmse_capped=chip_rmse(targets, preds, cap), pooled_rmse_capped=pooled_rmse(targets, preds, cap),
                   cap=float(cap))
    return out
