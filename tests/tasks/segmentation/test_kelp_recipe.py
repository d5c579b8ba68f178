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
    """The recipe's data, loss, sampler, optimiser and schedule train one epoch end to end on the tiny UNet
    (tracing B5's training and validation graphs costs ~50 s of CPU), and its own model, the B5 UNet with
    stage taps and the cyclic stem, builds on the 24 channels and predicts."""
    data = tmp_path / "kelp"
    seg_demo_data.build_kelp_dataset(str(data), n_places=8, acquisitions=2, size=32, seed=3)
    run([sys.executable, "create_tfrecords.py", "--data_dir", str(data), "--n_folds", "2", "--no_progress"])
    run_dir = tmp_path / "kelp_tiny"
    argv = ["--config", RECIPE, "--weights", "none", "--data_dir", str(data), "--run_dir", str(run_dir),
            "--batch_size", "2", "--tiles_per_epoch", "4", "--n_epochs", "1", "--folds", "0", "--job", "train",
            "--verbose", "0"]
    recipe_cfg = config.parse_config(argv)
    assert recipe_cfg["arch"] == "efficientnet_b5" and recipe_cfg["mixed_precision"] == "mixed_bfloat16"
    cfg = config.parse_config(argv + ["--arch", "tiny", "--arch_options", "{}"])
    model_side = ("arch", "arch_options")
    assert {k: v for k, v in cfg.items() if k not in model_side} == {
        k: v for k, v in recipe_cfg.items() if k not in model_side}
    runner.run(cfg)
    history = pd.read_csv(run_dir / "fold_0" / "history.csv")
    assert history["epoch"].tolist() == [1] and np.isfinite(history["loss"]).all()
    # the 24 channels (7 bands in the winner's order + 17 indices scaled by the converter's statistics)
    from foldnet.tasks.segmentation import task as segmentation

    task = segmentation.SegmentationTask()
    manifest = records.load_manifest(str(data / "tfrec"))
    features = task.features(manifest, recipe_cfg)
    assert features.names == cfg["seg_bands"] + list(spectral.KELP_WINNER_INDICES) and features.n_channels == 24
    assert set(features.index_stats) == set(spectral.KELP_WINNER_INDICES)
    # the recipe's own model: B5 UNet on 24 channels at the padded tile size, one sigmoid map out
    spec = task.load_spec(manifest)
    model = task.build_model(recipe_cfg, spec, "none")
    assert tuple(model.input_shape) == (None, 32, 32, 24)
    assert tuple(model.output_shape) == (None, 32, 32, 1)
    assert model.count_params() > 25_000_000                       # B5's encoder alone is ~28M; B0's 4M
    out = model(np.random.RandomState(0).rand(1, 32, 32, 24).astype("float32"), training=False).numpy()
    assert np.isfinite(out).all() and (0 <= out).all() and (out <= 1).all()
