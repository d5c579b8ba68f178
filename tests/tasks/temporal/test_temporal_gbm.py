"""The per-pixel gradient-boosting member of temporal regression: month statistics, run directory, ensemble."""
import numpy as np
import pytest

from foldnet.commands import convert as convert_cmd
from foldnet.commands import main as foldnet_main
from foldnet.ensemble.cli import make_ensemble
from foldnet.io import rundir
from foldnet.tasks.temporal import baseline
from foldnet.tasks.temporal import demo_data as temporal_demo_data


def test_month_statistics_per_band_and_index_skip_missing_months():
    bands = ["VV", "B04", "B08"]
    # one chip, 3 months, one pixel: month 1 has no optical data, month 2 no data at all
    image = np.array([[10, 100, 300], [20, 0, 0], [0, 0, 0]], np.float32).reshape(1, 3, 1, 1, 3)
    valid = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool).reshape(1, 3, 1, 1, 3)
    x = baseline.pixel_features(image, valid, bands, ["NDVI"])
    names = baseline.feature_names(bands, ["NDVI"])
    assert x.shape == (1, 1, 1, len(names)) == (1, 1, 1, 4 * 5 + 1)
    f = dict(zip(names, x[0, 0, 0]))
    assert (f["VV_mean"], f["VV_min"], f["VV_max"], f["VV_median"]) == (15.0, 10.0, 20.0, 15.0)
    assert f["VV_std"] == pytest.approx(5.0)
    assert (f["B04_mean"], f["B04_std"], f["B08_max"]) == (100.0, 0.0, 300.0)  # the zeros of missing months excluded
    assert f["NDVI_mean"] == pytest.approx(0.5) and f["n_months"] == 2.0
    assert baseline.default_indices(bands) == ["NDVI"] and baseline.default_indices(["VV", "VH"]) == []


def test_gbm_member_ensembles_with_itself_and_scores_rmse(tmp_path, capsys):
    data = tmp_path / "bio"
    temporal_demo_data.build_biomass_dataset(str(data), n_train=10, n_test=2, size=16, seed=3)
    assert convert_cmd.main(["--data_dir", str(data), "--n_folds", "2", "--no_progress"]) == 0
    run = tmp_path / "gbm"
    assert foldnet_main.main(["baseline", "--data_dir", str(data), "--run_dir", str(run), "--cap", "1000"]) == 0
    assert "per-pixel GBM: OOF RMSE per chip" in capsys.readouterr().out
    assert rundir.read_task(str(run)) == "temporal_regression"
    oof = rundir.load_predictions(str(run / "fold_1" / "oof.npz"))
    assert oof["outputs"].dtype == np.float16 and oof["outputs"].shape == (1, 5, 16, 16)
    assert oof["outputs"].min() >= 0 and np.ptp(oof["outputs"].astype(np.float32)) > 0
    test = rundir.load_predictions(str(run / "fold_0" / "test.npz"))
    assert test["outputs"].shape == (1, 2, 16, 16)
    sub = tmp_path / "sub"
    make_ensemble([str(run)], str(sub), str(data / "tfrec" / "chips.csv"), tfrec_dir=str(data / "tfrec"))
    assert len(list(sub.iterdir())) == 2
