"""The eight On Cloud N 3rd-place members (models/cloud/*.yaml) on tiny synthetic chips: round-robin
location folds from the converter, the data side of every recipe (normalisation, map_aug) on real
records, and a CPU smoke run of each member with --weights none (sizes, epochs and steps overridden
only). Members whose settings are not in this tree yet are xfailed naming them."""
import glob
import os

import numpy as np
import pandas as pd
import pytest
import yaml

import foldnet  # noqa: F401
from foldnet.core.errors import DataError
from foldnet.engine import config, runner
from foldnet.io import records, rundir
from foldnet.models import backbones
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation import convert as seg_convert
from foldnet.tasks.segmentation import demo_data as seg_demo_data
from tests.paths import ROOT

RECIPES = sorted(glob.glob(os.path.join(ROOT, "models", "cloud", "*.yaml")))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in RECIPES]
# the only settings the smoke run changes: sizes, epochs, steps, precision, output
SMOKE = {"weights": "none", "batch_size": 2, "n_epochs": 1, "steps_per_epoch": 1, "mixed_precision": "none",
         "verbose": 0, "job": "train"}


def recipe(name):
    with open(os.path.join(ROOT, "models", "cloud", f"{name}.yaml")) as f:
        return yaml.safe_load(f)


# Settings that change only the values fed to the model (test_data_side_of_the_recipes checks them per
# member on real records): members equal in everything else train the same graph, so one smoke run
# stands for all of them (the three-band ResNet-34 members minmax and scaled).
DATA_ONLY = {"norm", "norm_max"}


def smoke_groups():
    """[[member, ...]] of the members equal in every setting but DATA_ONLY and what SMOKE overrides."""
    groups = {}
    for name in NAMES:
        key = yaml.safe_dump({k: v for k, v in recipe(name).items() if k not in DATA_ONLY | set(SMOKE)},
                             sort_keys=True)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


SMOKE_GROUPS = smoke_groups()


def not_here(values):
    """The recipe's settings (and values) this tree does not know yet, as names."""
    missing = [k for k in values if k not in config.FLAG_NAMES]
    if "schedule" in values and values["schedule"] not in config.SCHEDULES:
        missing.append(f"schedule: {values['schedule']}")
    arch = values.get("arch", "")
    if not arch.startswith("kecam:") and arch not in {a["name"] for a in backbones.list_architectures()}:
        missing.append(f"arch: {arch}")
    return missing


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud_members")
    data = root / "cloud"
    seg_demo_data.build_cloud_dataset(str(data), n_locations=10, chips_per_location=2, size=32, test_fraction=0.2,
                                      seed=5)
    seg_convert.create_seg_tfrecords("cloud", str(data), str(data / "tfrec"), n_folds=4, seed=1,
                                     fold_method="round_robin", progress=False)
    return root, data


def test_eight_recipes_one_per_member():
    assert NAMES == ["b0ns_4b_30000", "b3ns_4b", "effv2b0_3b", "effv2b0_4b_minmax", "effv2s_4b", "r34_3b_minmax",
                     "r34_3b_scaled", "r34_4b_20000"]
    epochs = {n: recipe(n)["n_epochs"] for n in NAMES}  # train.sh:4-11 --epoches
    assert epochs == {"effv2s_4b": 100, "effv2b0_4b_minmax": 90, "effv2b0_3b": 80, "r34_3b_scaled": 60,
                      "r34_3b_minmax": 60, "r34_4b_20000": 60, "b3ns_4b": 70, "b0ns_4b_30000": 60}
    for n in NAMES:
        r = recipe(n)
        assert r["folds"] == "2" and r["norm_output"] == "symmetric" and r["lr"] == 0.002
        assert r["map_aug"]["p"] == 0.7 and r["map_aug"]["cutout_p"] == 0.15


def test_round_robin_location_folds(chips):
    _, data = chips
    tiles = pd.read_csv(data / "tfrec" / "tiles.csv", dtype={"id": str, "group": str})
    train = tiles[tiles["split"] == "train"]
    assert train.groupby("group")["fold"].nunique().max() == 1       # a location in one fold
    per_fold = train.groupby("fold")["group"].nunique()
    assert sorted(per_fold.index) == [0, 1, 2, 3] and per_fold.max() - per_fold.min() <= 1  # 8 locations: 2 each
    assert records.load_manifest(str(data / "tfrec"))["n_folds"] == 4


def test_fewer_locations_than_folds_names_the_fix(tmp_path):
    data = tmp_path / "three"
    seg_demo_data.build_cloud_dataset(str(data), n_locations=4, chips_per_location=2, size=16, test_fraction=0.25)
    with pytest.raises(DataError, match=r"cannot assign folds: 3 groups cannot be split into 5 folds: "
                                        r"convert with --n_folds 3 or fewer"):
        seg_convert.create_seg_tfrecords("cloud", str(data), str(tmp_path / "tfrec"), n_folds=5, progress=False)


# one member per normalisation: band_max 4 and 3 bands, image_minmax, fixed (member 8: the smoke body test below)
@pytest.mark.parametrize("name", ["effv2s_4b", "effv2b0_3b", "r34_3b_minmax", "r34_4b_20000"])
def test_data_side_of_the_recipes(chips, name):
    """The recipe's normalisation and augmentation settings on real records: one training batch."""
    root, data = chips
    values = {k: v for k, v in recipe(name).items() if k in config.FLAG_NAMES and k != "schedule"}
    values.update(SMOKE, data_dir=str(data), tfrec_dir=str(data / "tfrec"), run_dir=str(root / "data" / name))
    cfg = config.make_config(**values)
    task = tasks.get("segmentation")
    manifest = records.load_manifest(str(data / "tfrec"))
    spec = task.load_spec(manifest)
    assert task.check_config(cfg, spec) == [] or all("arch" in p for p in task.check_config(cfg, spec))
    files = records.fold_files(manifest, [0, 1, 3])

    def first_batch(cfg):
        x, target = next(iter(task.train_dataset(files, spec, cfg, seed=0, cache="none", drop_remainder=True,
                                                 n_workers=1)))
        return x.numpy(), target.numpy()

    x, target = first_batch(cfg)
    assert x.shape == (2, 32, 32, len(recipe(name).get("seg_bands") or ["B02", "B03", "B04", "B08"]))
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.min() < -0.5          # 2u - 1 of u in [0, 1]
    assert set(np.unique(target[..., 0])) <= {0.0, 1.0}                    # the bilinear mask binarised
    if recipe(name)["norm"] == "image_minmax":
        # before augmentation (which interpolates and may change brightness) every chip and band spans its
        # own range: -1 and 1 both reached (to float32 rounding of 2u - 1)
        plain, _ = first_batch(config.make_config(**dict(values, map_aug={}, aug_number=0)))
        np.testing.assert_allclose(plain.min(axis=(1, 2)), -1.0, atol=1e-6)
        np.testing.assert_allclose(plain.max(axis=(1, 2)), 1.0, atol=1e-6)


def smoke(chips, name, values):
    root, data = chips
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(values, **SMOKE)))
    cfg = config.parse_config(["--config", str(path), "--data_dir", str(data), "--tfrec_dir", str(data / "tfrec"),
                               "--run_dir", str(root / "runs" / name)])
    runner.run(cfg)
    fold = root / "runs" / name / "fold_2"
    history = pd.read_csv(fold / "history.csv")
    assert len(history) == 1 and np.isfinite(history["loss"]).all()
    assert history["val_location_iou"].between(0, 1).all()
    assert not (root / "runs" / name / "fold_0").exists()      # folds: "2" trains fold 2 only
    return fold


def test_smoke_groups_join_only_members_of_one_graph():
    groups = SMOKE_GROUPS
    assert sorted(n for g in groups for n in g) == NAMES
    assert [g for g in groups if len(g) > 1] == [["r34_3b_minmax", "r34_3b_scaled"]]
    for group in groups:
        first = recipe(group[0])
        for other in group[1:]:
            differ = {k for k in set(first) | set(recipe(other)) if first.get(k) != recipe(other).get(k)}
            assert differ <= DATA_ONLY | set(SMOKE), (group, differ)


@pytest.mark.parametrize("name", [g[0] for g in SMOKE_GROUPS], ids=["+".join(g) for g in SMOKE_GROUPS])
def test_member_smoke_run(chips, name):
    values = recipe(name)
    missing = not_here(values)
    if missing:
        pytest.xfail(f"settings of the model engineer not in this tree yet: {', '.join(missing)}")
    fold = smoke(chips, name, values)
    paths = rundir.fold_paths(str(fold.parent), 2)
    assert os.path.exists(paths["best"]) and os.path.exists(paths["done"])
    assert values["location_iou_empty"] == "zero"   # the winner's rule: a location with no union scores 0


def test_fold_method_is_refused_outside_segmentation(tmp_path, capsys):
    from foldnet.commands import convert

    assert convert.main(["--data_dir", str(tmp_path), "--fold_method", "round_robin"]) == 2
    assert "--fold_method apply to segmentation layouts only" in capsys.readouterr().err
