"""models/kelp_b5.yaml (the Kelp Wanted 2nd-place recipe) builds and trains on CPU: the recipe as
committed, with only the weights (none: no download), the batch size, the tiles per epoch, the
epochs and the folds overridden; synthetic 32 x 32 Kelp tiles."""
import os
import sys

import numpy as np
import pandas as pd
import yaml

import foldnet  # noqa: F401
from foldnet.engine import config, runner
from foldnet.io import records
from foldnet.raster import spectral
from foldnet.tasks.segmentation import demo_data as seg_demo_data
from tests.tasks.segmentation.test_segmentation import ROOT, run

RECIPE = os.path.join(ROOT, "models", "kelp_b5.yaml")


def test_recipe_is_the_winners_settings():
    cfg = yaml.safe_load(open(RECIPE))
    assert cfg["indices"] == list(spectral.KELP_WINNER_INDICES)
    assert cfg["seg_bands"] == ["R", "G", "B", "SWIR", "NIR", "QA", "DEM"]
    assert cfg["sampler"] == {"has_positive": 3.0, "1-positive_share": 0.2, "qa_ok": 0.0, "1-cloud_share": -1.0,
                              "1-dem_nonpositive_share": 0.5, "1-dem_negative_share": 0.25,
                              "1-dem_zero_share": -1.0, "minmax": True}
    assert (cfg["loss"], cfg["max_positive_share"], cfg["tiles_per_epoch"]) == ({"dice2": 1.0, "smooth": 0}, 0.4,
                                                                                 10240)


def test_recipe_builds_and_trains_one_epoch_on_cpu(tmp_path):
    data = tmp_path / "kelp"
    seg_demo_data.build_kelp_dataset(str(data), n_places=8, acquisitions=2, size=32, seed=3)
    run([sys.executable, "create_tfrecords.py", "--data_dir", str(data), "--n_folds", "2", "--no_progress"])
    run_dir = tmp_path / "kelp_b5"
    cfg = config.parse_config(["--config", RECIPE, "--weights", "none", "--data_dir", str(data), "--run_dir",
                               str(run_dir), "--batch_size", "2", "--tiles_per_epoch", "4", "--n_epochs", "1",
                               "--folds", "0", "--job", "train", "--verbose", "0"])
    assert cfg["arch"] == "efficientnet_b5" and cfg["mixed_precision"] == "mixed_bfloat16"
    runner.run(cfg)
    history = pd.read_csv(run_dir / "fold_0" / "history.csv")
    assert history["epoch"].tolist() == [1] and np.isfinite(history["loss"]).all()
    # the 24 channels (7 bands in the winner's order + 17 indices scaled by the converter's statistics)
    from foldnet.tasks.segmentation import task as segmentation

    manifest = records.load_manifest(str(data / "tfrec"))
    features = segmentation.SegmentationTask().features(manifest, cfg)
    assert features.names == cfg["seg_bands"] + list(spectral.KELP_WINNER_INDICES) and features.n_channels == 24
    assert set(features.index_stats) == set(spectral.KELP_WINNER_INDICES)
