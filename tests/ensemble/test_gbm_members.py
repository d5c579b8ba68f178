"""A per-pixel GBM member beside UNet members: the OOF-fitted weights never make the ensemble worse than
its best member (map tasks, synthetic members)."""
import numpy as np
import pytest

from foldnet.ensemble import weightfit
from foldnet.io import rundir
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation.task import SegSpec

SEG = tasks.get("segmentation")
SPEC = SegSpec([8, 8, 4], ["B02", "B03", "B04", "B08"], "cloud", "{id}.tif")


def test_search_starts_from_the_best_single_member_when_equal_weights_are_a_local_optimum():
    # equal weights are a local maximum; the best point is member 0 alone, out of reach of small moves
    def score_many(ws):
        return [2.0 if w[0] == 1.0 else -float(np.abs(np.asarray(w) - 1 / 3).sum()) for w in ws]

    fit = weightfit.pattern_search(score_many, 3, "toy")
    np.testing.assert_allclose(fit.weights, [1.0, 0.0, 0.0])
    assert fit.before == 0.0 and fit.after == 2.0
    # equal weights win ties: identical members keep them
    fit = weightfit.pattern_search(lambda ws: [1.0 for _ in ws], 3, "toy")
    np.testing.assert_allclose(fit.weights, [1 / 3] * 3)


def _member(root, name, quality, seed, truth):
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir()
    SPEC.save(str(run / SEG.spec_file))
    rundir.write_task(str(run), SEG.name)
    for fold in range(2):
        ids = [f"t{fold}_{i}" for i in range(6)]
        y = truth[fold]
        probs = np.clip(quality * y + (1 - quality) * rng.random(y.shape), 0, 1)
        rundir.save_predictions(str(run / f"fold_{fold}" / "oof.npz"), ids, SEG.encode_outputs(probs[None]),
                                SEG.encode_targets(y), ["identity"], SPEC.fingerprint(), f"w{seed}{fold}")
    return str(run)


@pytest.mark.parametrize("metric", ["dice", "dice_best"])
def test_fitted_ensemble_of_gbm_and_unets_is_never_below_its_best_member(tmp_path, metric):
    rng = np.random.default_rng(0)
    truth = [(rng.random((6, 8, 8)) > 0.6).astype(np.uint8) for _ in range(2)]
    runs = [_member(tmp_path, "gbm", 0.7, 1, truth), _member(tmp_path, "unet_a", 0.15, 2, truth),
            _member(tmp_path, "unet_b", 0.1, 3, truth)]
    rows, notes, weights, post, _ = weightfit.oof_report(runs, [1 / 3] * 3, SPEC, metric, True, task=SEG)
    by_model = {r["model"]: r for r in rows}
    best_member = max(by_model[r][metric] for r in runs)
    assert by_model["ensemble (equal weights)"][metric] < best_member  # the weak UNets drag the average down
    assert by_model["ensemble (fitted weights)"][metric] >= best_member - 1e-12
    assert weights[0] == max(weights) and weights.sum() == pytest.approx(1.0)
    assert post and 0 < post["threshold"] < 1
