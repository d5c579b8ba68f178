"""An empty location (no true and no predicted pixel) scores 1 in foldnet's location IoU and 0 in the
On Cloud N 3rd place's (train.py:160-162): both reported, the Keras metric takes either; the ensemble's
fixed threshold reports the OOF Dice at it and at the fitted one."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.ensemble.cli import fixed_threshold
from foldnet.tasks.segmentation import losses as seg_losses
from foldnet.tasks.segmentation import metrics as seg_metrics
from foldnet.tasks.segmentation.task import SegScorer

# three 1x2 tiles: location a (I 1, U 2), b (I 1, U 1), c empty (no true, no predicted pixel)
PROBS = np.array([[[0.9, 0.8]], [[0.7, 0.1]], [[0.2, 0.3]]], np.float32)
TRUTH = np.array([[[1, 0]], [[1, 0]], [[0, 0]]], np.uint8)
LOCATIONS = {"t0": "a", "t1": "b", "t2": "c"}


def test_scores_report_both_conventions():
    acc = seg_metrics.Scores(locations=LOCATIONS)
    acc.add(PROBS, TRUTH, ["t0", "t1", "t2"])
    result = acc.result()
    assert result["location_iou"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert result["location_iou_empty0"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert acc.location_iou(empty=0.0)[1] == {"a": 0.5, "b": 1.0, "c": 0.0}
    # without locations neither key
    plain = seg_metrics.Scores()
    plain.add(PROBS, TRUTH)
    assert "location_iou_empty0" not in plain.result()


@pytest.mark.parametrize("empty, want", [(1.0, 2.5 / 3), (0.0, 1.5 / 3)])
def test_keras_location_iou_takes_the_convention(empty, want):
    # target channels: mask, valid, group index
    groups = np.array([0, 1, 2], np.float32)[:, None, None] * np.ones([3, 1, 2], np.float32)
    y_true = np.stack([TRUTH.astype(np.float32), np.ones([3, 1, 2], np.float32), groups], -1)
    (metric,) = seg_losses.make_metrics(["location_iou"], 0.5, n_groups=3, empty_location=empty)
    metric.update_state(tf.constant(y_true), tf.constant(PROBS[..., None]))
    assert float(metric.result()) == pytest.approx(want, abs=1e-6)


def test_fixed_threshold_reports_the_fitted_one_and_both_dice():
    scorer = SegScorer().add(TRUTH, PROBS)
    post = scorer.post()
    new, line = fixed_threshold(post, 0.5, scorer)
    assert new == {"threshold": 0.5}
    # at 0.5: predicted {t0: both, t1: first}: TP 2, FP 1, FN 0 -> Dice 4 / 5
    assert "OOF blend Dice 0.8000" in line and f"fitted on the OOF blend, {post['threshold']:g}" in line
    best = seg_metrics.best_threshold(scorer.acc.curve.table())["dice"]
    assert f"difference {best - 0.8:+.4f}" in line
