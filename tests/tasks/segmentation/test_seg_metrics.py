"""Segmentation scores (numpy) against hand-computed values."""
import numpy as np
import pytest

from foldnet.tasks.segmentation import metrics as seg_metrics


def test_pooled_dice_and_iou_hand_example():
    # tile a: truth 3 positives, prediction hits 2 of them and 1 false positive -> TP 2, FP 1, FN 1
    # tile b: truth empty, prediction 2 pixels -> FP 2
    # tile c: truth 2, prediction empty -> FN 2
    # pooled: TP 2, FP 3, FN 3 -> Dice 4/10 = 0.4, IoU 2/8 = 0.25
    ta = np.array([[1, 1], [1, 0]])
    pa = np.array([[1, 1], [0, 1]])
    tb = np.zeros((2, 2))
    pb = np.array([[1, 0], [0, 1]])
    tc = np.array([[0, 1], [0, 1]])
    pc = np.zeros((2, 2))
    preds, truths = [pa, pb, pc], [ta, tb, tc]
    assert seg_metrics.pooled_counts(preds, truths) == (2, 3, 3)
    assert seg_metrics.pooled_dice(preds, truths) == pytest.approx(0.4)
    assert seg_metrics.pooled_iou(preds, truths) == pytest.approx(0.25)
    # Pooled is not the mean of per-tile Dice (tile a alone: 4/6; b and c: 0)
    assert seg_metrics.pooled_dice([pa], [ta]) == pytest.approx(4 / 6)


def test_empty_masks_and_invalid_pixels():
    z = np.zeros((3, 3), np.uint8)
    assert seg_metrics.pooled_dice([z, z], [z, z]) == 1.0  # nothing to find, nothing found
    assert seg_metrics.pooled_iou([z], [z]) == 1.0
    one = z.copy()
    one[0, 0] = 1
    assert seg_metrics.pooled_dice([one], [z]) == 0.0
    # The false positive sits on an invalid pixel: excluded -> perfect again
    valid = np.ones((3, 3), bool)
    valid[0, 0] = False
    assert seg_metrics.pooled_dice([one], [z], [valid]) == 1.0
    # All pixels invalid: nothing counted
    assert seg_metrics.pooled_counts([one], [one], [np.zeros((3, 3))]) == (0, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        seg_metrics.pooled_dice([np.zeros((2, 2))], [np.zeros((2, 3))])


def test_location_weighted_iou():
    # location A: tile1 I=1 U=2, tile2 I=1 U=1 -> 2/3; location B: I=0 U=1 -> 0; C: empty -> 1
    t1, p1 = np.array([[1, 1]]), np.array([[1, 0]])
    t2, p2 = np.array([[1, 0]]), np.array([[1, 0]])
    t3, p3 = np.array([[0, 0]]), np.array([[0, 1]])
    t4, p4 = np.array([[0, 0]]), np.array([[0, 0]])
    score, per = seg_metrics.location_iou([p1, p2, p3, p4], [t1, t2, t3, t4], ["A", "A", "B", "C"])
    assert per == pytest.approx({"A": 2 / 3, "B": 0.0, "C": 1.0})
    assert score == pytest.approx((2 / 3 + 0 + 1) / 3)
    # pooled IoU would weight by pixels instead: I=2, U=4
    assert seg_metrics.pooled_iou([p1, p2, p3, p4], [t1, t2, t3, t4]) == pytest.approx(0.5)


def test_threshold_table_matches_direct_scores_and_finds_best():
    # probs and truths; at t=0.5: pred = [.9,.6,.7] -> TP 2 (0.9, 0.6), FP 1 (0.7), FN 1 (0.3)
    prob = np.array([[0.9, 0.6, 0.3, 0.7, 0.1]])
    truth = np.array([[1, 1, 1, 0, 0]])
    rows, best = seg_metrics.threshold_table([prob], [truth], thresholds=[0.2, 0.5, 0.65, 0.8])
    by_t = {r["threshold"]: r for r in rows}
    assert (by_t[0.5]["tp"], by_t[0.5]["fp"], by_t[0.5]["fn"]) == (2, 1, 1)
    assert by_t[0.5]["dice"] == pytest.approx(4 / 6)
    # t=0.2: TP 3, FP 1 -> 6/7; t=0.65: TP 1 (0.9), FP 1, FN 2 -> 2/5; t=0.8: TP 1, FN 2 -> 2/4
    assert by_t[0.2]["dice"] == pytest.approx(6 / 7)
    assert by_t[0.65]["dice"] == pytest.approx(0.4)
    assert by_t[0.8]["dice"] == pytest.approx(0.5)
    assert best["threshold"] == 0.2
    # a probability equal to a threshold counts as positive (prob >= t)
    rows, _ = seg_metrics.threshold_table([np.array([[0.5]])], [np.array([[1]])], thresholds=[0.5])
    assert rows[0]["tp"] == 1
    # every row agrees with thresholding directly, on random maps over several tiles, with valid masks
    rng = np.random.default_rng(0)
    probs = [rng.random((7, 5)) for _ in range(4)]
    truths = [rng.random((7, 5)) < 0.3 for _ in range(4)]
    valids = [rng.random((7, 5)) < 0.8 for _ in range(4)]
    rows, best = seg_metrics.threshold_table(probs, truths, valids)
    for r in rows[::10]:
        direct = seg_metrics.pooled_dice([p >= r["threshold"] for p in probs], truths, valids)
        assert r["dice"] == pytest.approx(direct)
    assert best["dice"] == max(r["dice"] for r in rows)


def test_uint8_probability_maps_are_scaled():
    prob = np.array([[255, 128, 127, 0]], np.uint8)  # 1.0, 0.502, 0.498, 0
    truth = np.array([[1, 1, 0, 0]])
    rows, best = seg_metrics.threshold_table([prob], [truth], thresholds=[0.5])
    assert (rows[0]["tp"], rows[0]["fp"], rows[0]["fn"]) == (2, 0, 0)


def test_threshold_report_files(tmp_path):
    rows, best = seg_metrics.threshold_table([np.array([[0.9, 0.2]])], [np.array([[1, 0]])],
                                             thresholds=[0.1, 0.5])
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    seg_metrics.write_threshold_report(rows, best, str(md), str(png), title="fold 0")
    text = md.read_text()
    assert "# fold 0" in text and "Best dice 1.0000 at threshold 0.50" in text
    assert "| 0.1000 | 0.6667 |" in text  # at 0.1 both pixels positive: TP 1, FP 1 -> 2/3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_curve_counts_equal_direct_comparisons_at_and_between_thresholds():
    rng = np.random.default_rng(3)
    th = seg_metrics.DEFAULT_THRESHOLDS
    # random maps plus values exactly on the thresholds (float32 and float64) and the ends
    for probs in (np.concatenate([rng.random(3000), th, [0.0, 1.0]]).astype(np.float32),
                  np.concatenate([rng.random(3000), th, np.nextafter(th, 0), [0.0, 1.0]])):
        truth = rng.random(len(probs)) < 0.4
        rows = seg_metrics.ThresholdCurve().add(probs[None], truth[None]).table()
        for row in rows:
            pred = probs.astype(np.float64) >= row["threshold"]  # the curve compares in float64
            assert (row["tp"], row["fp"], row["fn"]) == seg_metrics.counts(pred, truth), row["threshold"]
