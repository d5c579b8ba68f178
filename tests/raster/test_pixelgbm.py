"""raster.pixelgbm: out-of-fold per-pixel gradient boosting written as a run directory (in-memory sources)."""
import json
import os

import numpy as np
import pytest

from foldnet.core.errors import DataError
from foldnet.io import rundir
from foldnet.raster import pixelgbm

H = W = 8


def _manifest(tmp_path, n_folds, per_fold, n_test):
    folds = [{"fold": f, "files": [f"fold{f}.tfrec"], "n_examples": per_fold} for f in range(n_folds)]
    return {"dir": str(tmp_path), "n_folds": n_folds, "folds": folds,
            "test": {"files": ["test.tfrec"] if n_test else [], "n_examples": n_test}, "fingerprint": "x"}


def _source(tiles, kind="classifier", clip=None):
    """A PixelSource over ``tiles`` {file name: (ids, x [b, H, W, F], y [b, H, W])}."""
    def blocks(files):
        for f in files:
            ids, x, y = tiles[os.path.basename(f)]
            yield ids, x, y, np.ones(y.shape, bool)

    encode = (lambda o: np.rint(np.clip(o, 0, 1) * 255).astype(np.uint8)) if kind == "classifier" \
        else (lambda o: np.asarray(o, np.float16))
    return pixelgbm.PixelSource(blocks, ["a", "b"], kind, encode, lambda t: np.asarray(t, np.float32), clip)


def _tiles(rng, name, n, flip=False):
    x = rng.normal(size=(n, H, W, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.uint8)
    return [f"{name}_{i}" for i in range(n)], x, (1 - y if flip else y)


def test_each_fold_is_predicted_by_a_model_that_never_saw_it(tmp_path):
    rng = np.random.default_rng(0)
    # fold 0's labels follow the opposite rule: a model that saw them could not predict them this badly
    tiles = {"fold0.tfrec": _tiles(rng, "a", 4, flip=True), "fold1.tfrec": _tiles(rng, "b", 4),
             "fold2.tfrec": _tiles(rng, "c", 4), "test.tfrec": _tiles(rng, "t", 3)}
    run = tmp_path / "run"
    out = pixelgbm.fit_run(_manifest(tmp_path, 3, 4, 3), _source(tiles), str(run), "spec-fp", cap=400, seed=1,
                           params={"max_iter": 30})
    assert [r["fold"] for r in out["folds"]] == [0, 1, 2]
    # cap 400 per fold over the 8 tiles of the other folds: 50 pixels a tile
    assert all(r["n_pixels"] == 400 for r in out["folds"])
    for fold, name in enumerate(["fold0.tfrec", "fold1.tfrec", "fold2.tfrec"]):
        ids, x, y = tiles[name]
        oof = rundir.load_predictions(str(run / f"fold_{fold}" / "oof.npz"))
        assert list(oof["ids"]) == ids and oof["outputs"].shape == (1, 4, H, W) and oof["outputs"].dtype == np.uint8
        np.testing.assert_array_equal(oof["labels"], y.astype(np.float32))
        assert str(oof["label_map_fingerprint"]) == "spec-fp" and list(oof["tta_names"]) == ["identity"]
        agree = ((oof["outputs"][0] >= 128) == (y == 1)).mean()
        # fold 0's model learnt the rule of folds 1-2 (x0 > 0), so it gets fold 0 almost all wrong;
        # fold 1's and 2's models saw fold 0's opposite rule too and are pulled towards a coin flip
        assert agree < 0.1 if fold == 0 else agree > 0.4
        test = rundir.load_predictions(str(run / f"fold_{fold}" / "test.npz"))
        assert list(test["ids"]) == tiles["test.tfrec"][0] and test["outputs"].shape == (1, 3, H, W)
    assert rundir.read_header(str(run / "fold_0" / "test.npz")).weights_fingerprint != \
        rundir.read_header(str(run / "fold_1" / "test.npz")).weights_fingerprint
    meta = json.loads((run / pixelgbm.META_FILE).read_text())
    assert meta["features"] == ["a", "b"] and meta["cap"] == 400 and len(meta["folds"]) == 3
    ids, targets, maps = out["oof"]
    assert len(ids) == 12 and maps.shape == targets.shape == (12, H, W)


def test_regressor_clips_and_handles_missing_values(tmp_path):
    rng = np.random.default_rng(1)
    tiles = {}
    for f in range(2):
        x = rng.normal(size=(3, H, W, 2)).astype(np.float32)
        y = np.maximum(10 * x[..., 0], 0).astype(np.float32)
        x[:, 0, :, 1] = np.nan  # a missing feature value: HistGradientBoosting takes NaN natively
        tiles[f"fold{f}.tfrec"] = ([f"c{f}_{i}" for i in range(3)], x, y)
    run = tmp_path / "run"
    out = pixelgbm.fit_run(_manifest(tmp_path, 2, 3, 0), _source(tiles, "regressor", clip=(0.0, None)), str(run),
                           "fp", cap=10_000, params={"max_iter": 50})
    _, targets, maps = out["oof"]
    assert maps.min() >= 0.0 and np.isfinite(maps).all()
    assert np.sqrt(np.mean((maps - targets) ** 2)) < 0.5 * targets.std()  # it learnt the rule out of fold
    assert not (run / "fold_0" / "test.npz").exists()  # no test tiles, no test file


def test_no_usable_pixel_is_one_clear_error(tmp_path):
    def blocks(files):
        yield ["a"], np.zeros((1, H, W, 2), np.float32), np.zeros((1, H, W)), np.zeros((1, H, W), bool)

    source = pixelgbm.PixelSource(blocks, ["a", "b"], "classifier", lambda o: o, lambda t: t)
    with pytest.raises(DataError) as e:
        pixelgbm.fit_run(_manifest(tmp_path, 2, 1, 0), source, str(tmp_path / "run"), "fp")
    assert "fold 0" in str(e.value) and "fold 1" in str(e.value)


def test_month_statistics_exclude_missing_months():
    values = np.array([1.0, 5.0, 100.0, 3.0], np.float32).reshape(4, 1, 1)  # [T, pixel, C]
    present = np.array([True, True, False, True]).reshape(4, 1, 1)
    stats = pixelgbm.nan_month_stats(values, present)[0, 0]
    np.testing.assert_allclose(stats, [3.0, np.std([1, 5, 3]), 1.0, 5.0, 3.0], rtol=1e-6)
    none = pixelgbm.nan_month_stats(values, np.zeros_like(present))[0, 0]
    assert np.isnan(none).all()
