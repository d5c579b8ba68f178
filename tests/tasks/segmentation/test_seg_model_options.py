"""A segmentation fold trained with the winners' model and optimiser settings together: stage taps,
SCSE, decoder without BN, 1x1 head, input_norm none, SGD without Nesterov, global-norm clipping,
decay exclusions, gradient accumulation and the one-cycle schedule (learning rates checked)."""
import pandas as pd
import pytest

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.engine import config, runner, train
from foldnet.tasks.segmentation import demo_data as seg_demo_data


def test_fold_trains_with_the_new_settings(tmp_path, log_lines):
    data = tmp_path / "kelp"
    seg_demo_data.build_kelp_dataset(str(data), n_places=8, acquisitions=2, size=32, seed=3)
    assert convert.main(["--data_dir", str(data), "--n_folds", "2", "--workers", "1", "--no_progress"]) == 0
    cfg = config.make_config(
        data_dir=str(data), run_dir=str(tmp_path / "run"), arch="tiny", weights="none", job="train", folds="0",
        arch_options={"decoder_filters": [16, 8, 8], "encoder_taps": "stages", "decoder_attention": "scse",
                      "decoder_norm": "none", "head_kernel": 1},
        input_norm="none", optimizer="sgd", nesterov=False, clip_norm=1.0, weight_decay=1e-4, decay_all=False,
        accum_steps=2, batch_size=2, tiles_per_epoch=8, n_epochs=2, lr=0.01, schedule="onecycle",
        schedule_options={"pct_start": 0.5, "div_factor": 2, "final_div_factor": 10},
        early_stop_patience=0, monitor="val_dice", verbose=0)
    assert runner.run(cfg) == 0
    history = pd.read_csv(tmp_path / "run" / "fold_0" / "history.csv")
    # 8 tiles per epoch / (2 x 2 per update) = 2 updates per epoch, 4 in all (with one update per batch
    # of 2 there would be 8); the lr logged for epoch k is the rate of its last update, 2k - 1:
    # update 1 is the peak (pct_start * 4 - 1), update 3 the end value 0.01 / 2 / 10
    assert any("2 steps/epoch of 4" in line for line in log_lines), log_lines
    assert history["lr"].tolist() == pytest.approx([0.01, 0.0005], rel=1e-5)
    schedule = train.OneCycle(0.01, 4, pct_start=0.5, div_factor=2, final_div_factor=10)
    assert [float(schedule(1)), float(schedule(3))] == pytest.approx([0.01, 0.0005], rel=1e-5)
    assert history["loss"].notna().all() and (tmp_path / "run" / "fold_0" / "done.json").exists()
