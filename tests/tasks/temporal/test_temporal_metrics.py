"""Temporal RMSE scores against hand-computed values: per-chip mean, pooled, cap, unknown pixels."""
import math

import numpy as np
import pytest

from foldnet.tasks.temporal import metrics as tm


def test_chip_and_pooled_rmse_by_hand():
    targets = np.array([[[10.0, 20.0], [30.0, 500.0]],      # one pixel above the cap
                        [[-1.0, -1.0], [0.0, 100.0]],       # two unknown pixels
                        [[-1.0, -1.0], [-1.0, -1.0]]])      # no valid pixel at all: skipped, never NaN
    preds = np.array([[[13.0, 16.0], [30.0, 400.0]],
                      [[7.0, 7.0], [6.0, 92.0]],
                      [[1.0, 2.0], [3.0, 4.0]]])
    # chip 0 uncapped: errors 3, -4, 0, -100 -> sqrt((9 + 16 + 0 + 10000) / 4)
    c0 = math.sqrt(10025 / 4)
    c1 = math.sqrt((36 + 64) / 2)  # chip 1: errors 6, -8 on its two known pixels
    assert tm.chip_rmse(targets, preds) == pytest.approx((c0 + c1) / 2)
    assert tm.pooled_rmse(targets, preds) == pytest.approx(math.sqrt((10025 + 100) / 6))
    # capped at 400: chip 0 loses its 500 pixel
    c0_cap = math.sqrt(25 / 3)
    assert tm.chip_rmse(targets, preds, cap=400) == pytest.approx((c0_cap + c1) / 2)
    assert tm.pooled_rmse(targets, preds, cap=400) == pytest.approx(math.sqrt(125 / 5))
    per = tm.per_chip_rmse(targets, preds)
    assert per[:2] == pytest.approx([c0, c1]) and math.isnan(per[2])
    s = tm.scores(targets, preds, cap=400)
    assert s["n_chips"] == 2 and s["rmse"] == pytest.approx((c0 + c1) / 2)
    assert s["rmse_capped"] == pytest.approx((c0_cap + c1) / 2) and s["cap"] == 400
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_channel_axis_and_shape_check():
    t = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert tm.chip_rmse(t, t[..., None] + 2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="differ in shape"):
        tm.chip_rmse(t, t[:, :1])
    assert math.isnan(tm.chip_rmse(-np.ones_like(t), t))  # nothing valid anywhere
