"""run.py settings: defaults < YAML < command line, validation, help."""
import os
import subprocess
import sys

import pytest

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError
from foldnet.engine import config
from tests.paths import ROOT as ROOT_DIR


def write(tmp_path, text, name="member.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_then_flags_override(tmp_path):
    cfg_path = write(tmp_path, "arch: efficientnet_b0\nlr: 0.0005\ndim: 128\nmonitor: val_acc\n")
    cfg = config.parse_config(["--config", cfg_path, "--lr", "0.01", "--folds", "0,2"])
    assert cfg["arch"] == "efficientnet_b0" and cfg["dim"] == 128 and cfg["monitor"] == "val_acc"
    assert cfg["lr"] == 0.01  # the flag wins over the YAML
    assert cfg["batch_size"] == config.DEFAULTS["batch_size"]  # neither: the default
    # derived paths: run dir runs/<config name> in the current folder
    assert cfg["run_dir"] == os.path.join("runs", "member")
    assert cfg["tfrec_dir"] == "data/tfrec" and cfg["template"] is None  # the task's default (runner)
    assert config.parse_folds(cfg["folds"], 5) == [0, 2]


def test_yaml_types_are_coerced_and_none_means_none(tmp_path):
    cfg = config.parse_config(["--config", write(tmp_path, "dim: '96'\njit_compile: 'true'\nweights: none\n")])
    assert cfg["dim"] == 96 and cfg["jit_compile"] is True and cfg["weights"] is None


@pytest.mark.parametrize("text, needle", [
    ("arhc: small_cnn\n", "unknown settings ['arhc']"),
    ("- just\n- a list\n", "expected a mapping"),
    ("dim: [1, 2\n", "not valid YAML"),
    ("dim: abc\n", "bad value for dim"),
])
def test_bad_yaml_is_named(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.parse_config(["--config", path])
    assert needle in str(e.value) and path in str(e.value)


def test_bad_values_are_all_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config.make_config(mixed_precision="fp8", optimizer="lion", aug_probability=2.0, monitor="loss", job="fit")
    msg = str(e.value)
    for needle in ("mixed_precision='fp8'", "optimizer='lion'", "aug_probability", "monitor='loss'", "'fit'"):
        assert needle in msg


def test_folds_and_jobs():
    assert config.parse_folds("all", 3) == [0, 1, 2]
    with pytest.raises(ConfigError):
        config.parse_folds("0,5", 5)
    assert config.job_words("train_val_test_score_subm") == {"train", "val", "test", "score", "subm"}


def test_help_lists_every_flag_with_its_default():
    out = subprocess.run([sys.executable, "run.py", "--help"], capture_output=True, text=True, check=True).stdout
    for name in config.FLAG_NAMES:
        assert f"--{name}" in out
    assert "(default: val_loss)" in out


def test_cli_reports_bad_config_without_traceback(tmp_path):
    path = write(tmp_path, "optimizer: lion\n")
    out = subprocess.run([sys.executable, "run.py", "--config", path], capture_output=True, text=True)
    assert out.returncode == 2 and "optimizer='lion'" in out.stderr and "Traceback" not in out.stderr


def test_a_run_dir_made_beside_the_config_by_earlier_versions_is_still_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = write(tmp_path, "arch: small_cnn\n")
    assert config.parse_config(["--config", cfg_path])["run_dir"] == os.path.join("runs", "member")
    (tmp_path / "member" / "fold_0").mkdir(parents=True)  # an old run dir beside the config
    assert config.parse_config(["--config", cfg_path])["run_dir"] == str(tmp_path / "member")
    (tmp_path / "runs" / "member").mkdir(parents=True)  # once runs/<name> exists, it wins
    assert config.parse_config(["--config", cfg_path])["run_dir"] == os.path.join("runs", "member")


def test_committed_member_configs_are_valid():
    import glob
    import os

    root = ROOT_DIR
    paths = sorted(glob.glob(os.path.join(root, "models", "**", "*.yaml"), recursive=True))
    assert {os.path.basename(p) for p in paths} >= {"demo.yaml", "ef1b7.yaml", "beitl.yaml", "ef1l2.yaml",
                                                     "ef1l2_s2.yaml", "ef2l.yaml", "ef2xl.yaml"}
    from foldnet.models import backbones as models
    from foldnet.tasks.segmentation import task as segmentation

    names = {a["name"] for a in models.list_architectures()}
    kelp = segmentation.SegSpec([350, 350, 7], ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"], "kelp", "{id}_kelp.tif")
    cloud = segmentation.SegSpec([512, 512, 4], ["B02", "B03", "B04", "B08"], "cloud", "{id}.tif")
    seg = {"seg_demo.yaml": kelp, "seg_small.yaml": kelp, "kelp_b5.yaml": kelp, "cloud_unet.yaml": cloud}
    assert {os.path.basename(p) for p in paths} >= set(seg)
    from foldnet.tasks.temporal import layouts as tl
    from foldnet.tasks.temporal import records as temporal_records
    from foldnet.tasks.temporal import task as temporal

    biomass = temporal_records.TemporalSpec(12, (256, 256), list(tl.BIOMASSTERS_BANDS), dict(tl.BIOMASSTERS_NORM),
                                            dict(tl.BIOMASSTERS_TARGET), "biomassters", list(tl.BIOMASSTERS_MONTHS))
    temporal_recipes = {"biomass_l.yaml", "biomass_demo.yaml", "biomass_small.yaml", "biomass_one_month.yaml",
                        "biomass_mean.yaml"}
    assert {os.path.basename(p) for p in paths} >= temporal_recipes
    for p in paths:
        if os.path.basename(p) == "biomass_l.yaml" and missing_settings(p):
            continue  # test_biomass_l_is_the_winners_recipe names the settings this tree lacks
        cfg = config.parse_config(["--config", p])
        if os.path.basename(os.path.dirname(p)) == "cloud":  # the On Cloud N members: the segmentation check
            assert segmentation.TASK.check_config(cfg, cloud) == [], p
        elif os.path.basename(p) in seg:  # segmentation recipes: the task's own check
            assert segmentation.TASK.check_config(cfg, seg[os.path.basename(p)]) == [], p
        elif os.path.basename(p) in temporal_recipes:  # temporal regression recipes: that task's check
            assert temporal.TASK.check_config(cfg, biomass) == [], p
        else:
            assert cfg["arch"] in names, p


def test_out_of_range_values_fail_at_config_time_with_the_shared_bounds():
    # aug_number 12 used to pass here and fail only while tf.data traced, after the model was built
    with pytest.raises(ConfigError) as e:
        config.make_config(aug_number=12, tta_number=10, dropout=1.0, aug_rotate=200)
    msg = str(e.value)
    for needle in ("aug_number must be in [0, 9], got 12", "tta_number must be in [0, 9], got 10",
                   "dropout must be in [0, 1), got 1.0", "aug_rotate must be in [0, 180], got 200"):
        assert needle in msg
    from foldnet.tasks.classification import augment

    assert config.BOUNDS["aug_number"].high == augment.MAX_NUMBER == len(augment.TRANSFORMS) - 1


def test_config_is_frozen_typed_and_reads_as_a_mapping(tmp_path):
    cfg = config.make_config(dim="24", job="train_val", folds="2,0", aug_number=3, aug_rotate=10)
    assert cfg.dim == 24 and cfg["dim"] == 24 and cfg.jobs == {"train", "val"}
    assert cfg.folds_for(3) == [0, 2]
    assert cfg.aug == config.Augmentation(number=3, probability=0.5, crop_scale=0.0, rotate=10.0, photometric=0.0)
    with pytest.raises(Exception):
        cfg.dim = 32
    again = config.Config.build(dict(cfg, dim=32))
    assert again.dim == 32 and again.run_dir == cfg.run_dir
    with pytest.raises(ConfigError, match=r"dim must be in \[1, "):
        cfg.replace(dim=0)


def test_arch_options_reach_the_builder(tmp_path):
    from foldnet.tasks.classification import task as classification
    from foldnet.tasks.classification.labels import LabelMap

    path = write(tmp_path, "arch: small_cnn\ndim: 16\narch_options: {width: 8, depth: 2}\n")
    cfg = config.parse_config(["--config", path])
    assert cfg.arch_options == {"width": 8, "depth": 2}
    assert "arch_options" in config.to_yaml(cfg)
    flag = config.parse_config(["--config", path, "--arch_options", "{width: 16, depth: 2}"])
    lm = LabelMap(["a", "b", "c"])
    narrow = classification.TASK.build_model(cfg, lm, None).count_params()
    wide = classification.TASK.build_model(flag, lm, None).count_params()
    assert narrow < wide
    with pytest.raises(ConfigError, match="arch_options"):
        config.make_config(arch_options="[1, 2]")


def missing_settings(path):
    """Top-level settings of a recipe that this tree's run.py does not know (owned by other branches)."""
    import yaml

    with open(path) as f:
        return sorted(set(yaml.safe_load(f)) - set(config.FLAG_NAMES))


def test_biomass_l_is_the_winners_recipe():
    """models/biomass_l.yaml holds the 1st place's values (docs/recipes/biomassters.md) and validates."""
    import os

    import yaml

    path = os.path.join(ROOT_DIR, "models", "biomass_l.yaml")
    with open(path) as f:
        r = yaml.safe_load(f)
    winner = {"arch": "efficientnet_v2_l", "weights": "imagenet21k", "input_norm": "none", "target_cap": 400,
              "nonneg": "none", "loss": "rmse", "month_dropout": 0.3, "month_dropout_chips": 0.5, "lr": 0.001,
              "optimizer": "adamw", "weight_decay": 0.01, "decay_all": False, "clip_norm": 5.0, "schedule": "cosine",
              "warmup_epochs": 0, "n_epochs": 800, "early_stop_patience": 0, "monitor": "val_chip_rmse_uncapped",
              "aug_number": 3, "folds": "0", "full_from": 0, "full_lr": 0.0001, "full_models": "only"}
    assert {k: r.get(k) for k in winner} == winner
    assert r["batch_size"] * r["accum_steps"] == 16  # 8 per GPU x 2 GPUs per update
    assert r["arch_options"] == {"decoder_filters": [384, 368, 352, 336, 320], "encoder_taps": "stages",
                                 "decoder_attention": "scse", "decoder_norm": "batch", "head_kernel": 3,
                                 "stem": "cyclic"}
    assert r["map_aug"] == {"p": 0.7, "rotate": 45, "shift": 0.1, "target_interp": "bilinear"}
    missing = missing_settings(path)
    if missing:
        pytest.xfail(f"settings of other branches not in this tree: {', '.join(missing)}")
    from foldnet.tasks.temporal import layouts as tl
    from foldnet.tasks.temporal import records as temporal_records
    from foldnet.tasks.temporal import task as temporal

    cfg = config.parse_config(["--config", path])
    spec = temporal_records.TemporalSpec(12, (256, 256), list(tl.BIOMASSTERS_BANDS), dict(tl.BIOMASSTERS_NORM),
                                         dict(tl.BIOMASSTERS_TARGET), "biomassters", list(tl.BIOMASSTERS_MONTHS),
                                         groups=[("S1", 4, "float32"), ("S2", 11, "uint16")])
    assert temporal.TASK.check_config(cfg, spec) == []
