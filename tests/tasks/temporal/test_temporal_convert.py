"""Temporal layouts -> TFRecords: record round trip, BioMassters and generic layouts, manifest, bad input."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tifffile

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.core.errors import DataError
from foldnet.io import records
from foldnet.tasks.temporal import convert as temporal_convert
from foldnet.tasks.temporal import layouts as temporal_layouts
from foldnet.tasks.temporal import records as temporal_records
from foldnet.tasks.temporal.data import read_chips
from foldnet.tasks.temporal.demo_data import build_biomass_dataset
from foldnet.tasks.temporal.records import TemporalSpec


def parse(serialized, t, shape, c, with_image=True):
    return {k: v.numpy() for k, v in temporal_records.parse_example(tf.constant(serialized), t, shape, c,
                                                                    with_image).items()}


def test_record_round_trip_equals_input():
    rng = np.random.default_rng(0)
    t, h, w, c = 3, 5, 7, 3  # 315 values: the packed mask does not end on a byte boundary
    image = rng.normal(size=(t, h, w, c)).astype(np.float32) * 100
    valid = rng.random((t, h, w, c)) > 0.3
    valid[1] = False  # a month without data
    months = valid.reshape(t, -1).any(1)
    target = rng.uniform(0, 500, (h, w)).astype(np.float32)
    target[0, 0], target[1, 1] = np.nan, -5.0  # unknown values -> -1
    ex = parse(temporal_records.make_example("c1", image, valid, months, target), t, (h, w), c)
    assert ex["id"] == b"c1" and ex["has_target"] == 1
    np.testing.assert_array_equal(ex["valid"], valid)
    np.testing.assert_array_equal(ex["image"], np.where(valid, image, 0))
    np.testing.assert_array_equal(ex["months"], [1, 0, 1])
    want = target.copy()
    want[0, 0] = want[1, 1] = -1
    np.testing.assert_array_equal(ex["target"], want)
    test = parse(temporal_records.make_example("c2", image, valid, months, None), t, (h, w), c, with_image=False)
    assert test["has_target"] == 0 and (test["target"] == -1).all() and "image" not in test


def small_demo(root, n_train=12, n_test=3, size=8):
    return build_biomass_dataset(str(root), n_train=n_train, n_test=n_test, size=size, seed=1)


def convert_demo(data_dir, out_dir, **kw):
    return temporal_convert.create_temporal_tfrecords("biomassters", str(data_dir), str(out_dir), n_folds=3,
                                                      workers=1, progress=False, **kw)


def test_demo_converts_with_real_layout_and_records_equal_files(tmp_path):
    data_dir = small_demo(tmp_path / "bio")
    assert temporal_layouts.detect_layout(data_dir) == "biomassters"
    m = convert_demo(data_dir, tmp_path / "tfrec")
    assert m["task"] == "temporal_regression" and m["n_months"] == 12 and m["shape"] == [8, 8]
    assert m["bands"][:4] == ["VV_asc", "VH_asc", "VV_desc", "VH_desc"] and m["bands"][-1] == "CLP"
    assert len(m["bands"]) == 15 and m["month_names"][0] == "September"
    assert m["norm"]["VH_asc"] == [-62.0, 28.0] and m["norm"]["B02"] == [0.0, 19616.0] and m["norm"]["CLP"] == [0, 255]
    assert m["n_examples"] == 12 and m["test"]["n_examples"] == 3 and m["submission_naming"] == "biomassters"
    assert m["target"]["name"] == "agbm" and m["target"]["units"] == "Mg/ha"
    chips = pd.read_csv(os.path.join(tmp_path / "tfrec", m["tiles_csv"]), dtype={"id": str})
    assert sorted(chips["split"].value_counts().items()) == [("test", 3), ("train", 12)]
    folds = pd.read_csv(os.path.join(tmp_path / "tfrec", "folds.csv"), dtype={"id": str})
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    spec = TemporalSpec.from_manifest(records.load_manifest(str(tmp_path / "tfrec")))
    parsed = read_chips(records.fold_files(records.load_manifest(str(tmp_path / "tfrec")), [0, 1, 2]), spec)
    assert len(parsed) == 12
    ex = parsed[0]
    feat = os.path.join(data_dir, "train_features")
    all_s1 = []
    for month in range(12):
        s1 = tifffile.imread(os.path.join(feat, f"{ex['id']}_S1_{month:02d}.tif"))
        ok = s1 != -9999
        np.testing.assert_array_equal(ex["valid"][month, :, :, :4], ok)
        np.testing.assert_array_equal(ex["image"][month, :, :, :4], np.where(ok, s1, 0))
        all_s1.append(s1)
        s2_path = os.path.join(feat, f"{ex['id']}_S2_{month:02d}.tif")
        if os.path.exists(s2_path):
            np.testing.assert_array_equal(ex["image"][month, :, :, 4:], tifffile.imread(s2_path).astype(np.float32))
            assert ex["valid"][month, :, :, 4:].all()
        else:
            assert not ex["valid"][month, :, :, 4:].any() and not ex["image"][month, :, :, 4:].any()
    np.testing.assert_array_equal(ex["target"], tifffile.imread(os.path.join(data_dir, "train_agbm",
                                                                                  f"{ex['id']}_agbm.tif")))
    # band statistics over every training value present, exactly (min/max)
    stats = m["band_stats"]["VV_asc"]
    vv = np.concatenate([a[..., 0].ravel() for a in all_s1])
    assert stats["min"] <= vv[vv != -9999].min() and stats["max"] >= vv[vv != -9999].max()
    assert stats["min"] > -9999 and 0 < stats["missing"] < 1
    # a second run with the same inputs keeps the output
    again = convert_demo(data_dir, tmp_path / "tfrec")
    assert again["fingerprint"] == m["fingerprint"]


def test_every_bad_chip_named_in_one_error_before_anything_is_written(tmp_path):
    data_dir = small_demo(tmp_path / "bio")
    os.remove(os.path.join(data_dir, "features_metadata.csv"))  # list the folders
    os.remove(os.path.join(data_dir, "train_agbm_metadata.csv"))
    feat = os.path.join(data_dir, "train_features")
    ids = sorted({n.split("_")[0] for n in os.listdir(feat)})
    no_label, bad_shape, empty = ids[0], ids[1], ids[2]
    os.remove(os.path.join(data_dir, "train_agbm", f"{no_label}_agbm.tif"))
    tifffile.imwrite(os.path.join(feat, f"{bad_shape}_S1_03.tif"), np.zeros((9, 9, 4), np.float32),
                     photometric="minisblack")
    for month in range(12):
        tifffile.imwrite(os.path.join(feat, f"{empty}_S1_{month:02d}.tif"), np.full((8, 8, 4), -9999, np.float32),
                         photometric="minisblack")
        s2 = os.path.join(feat, f"{empty}_S2_{month:02d}.tif")
        if os.path.exists(s2):
            os.remove(s2)
    out = tmp_path / "tfrec"
    with pytest.raises(DataError) as e:
        convert_demo(data_dir, out)
    text = str(e.value)
    assert f"train chip {no_label}: target not found" in text
    assert f"{bad_shape}_S1_03.tif: shape [9, 9]" in text
    assert f"train chip {empty}: no month has any data" in text
    assert len(e.value.problems) == 3
    assert not out.exists()


def test_bad_names_and_missing_listed_files(tmp_path):
    data_dir = small_demo(tmp_path / "bio")
    meta = pd.read_csv(os.path.join(data_dir, "features_metadata.csv"), dtype=str)
    gone = meta["filename"].iloc[5]
    os.remove(os.path.join(data_dir, "train_features", gone))
    with pytest.raises(DataError) as e:
        convert_demo(data_dir, tmp_path / "tfrec")
    assert f"file(s) not found: train_features/{gone}" in str(e.value)
    meta.loc[0, "filename"] = "weird_name.tif"
    meta.to_csv(os.path.join(data_dir, "features_metadata.csv"), index=False)
    with pytest.raises(DataError, match="weird_name.tif: not a feature file name"):
        temporal_layouts.read_biomassters(data_dir)


def write_generic(root, n=8, t=4, h=6, w=6, c=2, missing=-1.0):
    rng = np.random.default_rng(3)
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(n):
        stack = rng.uniform(0, 10, (t, h, w, c)).astype(np.float32)
        stack[i % t] = missing  # one month without data
        np.save(os.path.join(root, f"x{i}.npy"), stack)
        tifffile.imwrite(os.path.join(root, f"y{i}.tif"), rng.uniform(0, 50, (h, w)).astype(np.float32))
        rows.append((f"chip{i}", f"x{i}.npy", f"y{i}.tif"))
    pd.DataFrame(rows, columns=["id", "image", "target"]).to_csv(os.path.join(root, "train.csv"), index=False)
    pd.DataFrame([("t0", "x0.npy")], columns=["id", "image"]).to_csv(os.path.join(root, "test.csv"), index=False)
    return root


def test_generic_layout_through_create_tfrecords(tmp_path):
    root = write_generic(str(tmp_path / "gen"))
    out = str(tmp_path / "tfrec")
    rc = convert.main(["--layout", "temporal", "--data_dir", root, "--train_csv", "train.csv", "--test_csv",
                       "test.csv", "--out_dir", out, "--bands", "red,nir", "--missing_value", "-1", "--n_folds", "2",
                       "--workers", "1", "--no_progress"])
    assert rc == 0
    m = records.load_manifest(out)
    assert m["layout"] == "temporal" and m["n_months"] == 4 and m["shape"] == [6, 6] and m["bands"] == ["red", "nir"]
    assert m["submission_naming"] == "generic"
    # default normalisation: q01 / q99 of the values present
    assert m["norm"]["red"] == [m["band_stats"]["red"]["q01"], m["band_stats"]["red"]["q99"]]
    assert 0 < m["norm"]["red"][0] < m["norm"]["red"][1] < 10
    spec = TemporalSpec.from_manifest(m)
    chips = {c["id"]: c for c in read_chips(records.fold_files(m, [0, 1]), spec)}
    np.testing.assert_array_equal(chips["chip1"]["months"], [1, 0, 1, 1])
    np.testing.assert_array_equal(chips["chip1"]["image"], np.where(np.load(os.path.join(root, "x1.npy")) == -1, 0,
                                                                    np.load(os.path.join(root, "x1.npy"))))
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["band_stats"]["nir"]["missing"] == pytest.approx(0.25)


def test_spec_round_trip_and_norm_override(tmp_path):
    spec = TemporalSpec(2, (4, 4), ["a", "b"], {"a": [0.0, 10.0], "b": [-5.0, 5.0]}, {"name": "agbm", "units": "Mg/ha"},
                        "biomassters")
    spec.save(str(tmp_path / "spec.json"))
    assert TemporalSpec.load(str(tmp_path / "spec.json")) == spec
    lo, hi = spec.norm_arrays({"b": [0, 1]})
    np.testing.assert_array_equal(lo, [0, 0]) and np.testing.assert_array_equal(hi, [10, 1])
    from foldnet.core.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown band"):
        spec.norm_arrays({"c": [0, 1]})


def test_demo_is_realistic_and_deterministic(tmp_path):
    a = small_demo(tmp_path / "a", n_train=20, n_test=4)
    b = small_demo(tmp_path / "b", n_train=20, n_test=4)
    meta = pd.read_csv(os.path.join(a, "features_metadata.csv"), dtype=str)
    assert set(meta.columns) >= {"filename", "chip_id", "satellite", "split", "month", "corresponding_agbm"}
    s2 = meta[(meta["satellite"] == "S2") & (meta["split"] == "train")]
    assert 0 < 240 - len(s2) < 120  # some S2 months absent
    name = s2["filename"].iloc[0]
    x = tifffile.imread(os.path.join(a, "train_features", name))
    assert x.dtype == np.uint16 and x.shape == (8, 8, 11)
    np.testing.assert_array_equal(x, tifffile.imread(os.path.join(b, "train_features", name)))
    clp = [tifffile.imread(os.path.join(a, "train_features", n))[..., 10].mean() for n in s2["filename"]]
    assert max(clp) > 100 and min(clp) < 20  # cloudy and clear months
    s1 = tifffile.imread(os.path.join(a, "train_features", meta[meta["satellite"] == "S1"]["filename"].iloc[0]))
    assert s1.dtype == np.float32 and s1.shape == (8, 8, 4)
    answers = sorted(os.listdir(os.path.join(a, "answers")))
    assert len(answers) == 4 and all(n.endswith("_agbm.tif") for n in answers)
    targets = np.stack([tifffile.imread(os.path.join(a, "train_agbm", n))
                        for n in os.listdir(os.path.join(a, "train_agbm"))])
    assert targets.dtype == np.float32 and targets.min() >= 0 and (targets > 400).any()


def test_sub_chips_of_one_chip_stay_in_one_fold(tmp_path, capsys):
    root = write_generic(str(tmp_path / "gen"), n=12)
    train = pd.read_csv(os.path.join(root, "train.csv"))
    train["id"] = [f"scene{i // 3}_r{i % 3}_c0" for i in range(12)]  # 4 scenes of 3 neighbouring sub-chips
    train.to_csv(os.path.join(root, "train.csv"), index=False)
    out = str(tmp_path / "tfrec")
    argv = ["--layout", "temporal", "--data_dir", root, "--train_csv", "train.csv", "--test_csv", "test.csv",
            "--bands", "red,nir", "--missing_value", "-1", "--workers", "1", "--no_progress"]
    assert convert.main(argv + ["--out_dir", out, "--n_folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "folds keep groups together: 4 groups from chip ids naming their scene" in printed
    assert "warning" not in printed
    chips = pd.read_csv(os.path.join(out, "chips.csv"), dtype={"group": str})
    train_rows = chips[chips["split"] == "train"]
    assert sorted(train_rows["group"].unique()) == [f"scene{k}" for k in range(4)]
    assert train_rows.groupby("group")["fold"].nunique().max() == 1  # a scene's sub-chips share a fold
    # 4 scenes in 4 folds: every validation fold is one scene, and the converter says so
    assert convert.main(argv + ["--out_dir", str(tmp_path / "tfrec4"), "--n_folds", "4"]) == 0
    assert "warning: only 4 groups for 4 folds: each fold is one group (leave-one-group-out" in capsys.readouterr().out


def test_groups_keep_each_sensor_in_its_dtype_and_old_records_stay_readable():
    rng = np.random.default_rng(1)
    t, h, w = 2, 3, 5
    s1 = rng.normal(-15, 5, (t, h, w, 2)).astype(np.float32)
    s2 = rng.integers(0, 20000, (t, h, w, 3)).astype(np.float32)
    image = np.concatenate([s1, s2], -1)
    valid = rng.random(image.shape) > 0.2
    months = valid.reshape(t, -1).any(1)
    groups = [("S1", 2, "float32"), ("S2", 3, "uint16")]
    sensor_months = np.array([[1, 0], [1, 1]], np.uint8)
    new = temporal_records.make_example("c", image, valid, months, None, groups=groups, sensor_months=sensor_months)
    old = temporal_records.make_example("c", image, valid, months, None)
    ex = {k: v.numpy() for k, v in temporal_records.parse_example(tf.constant(new), t, (h, w), 5,
                                                                  groups=groups).items()}
    np.testing.assert_array_equal(ex["image"], np.where(valid, image, 0))  # exact: uint16 holds the integers
    np.testing.assert_array_equal(ex["sensor_months"], sensor_months)
    # S2 in 2 bytes instead of 4: the example shrinks by 2 bytes per S2 value
    assert len(old) - len(new) == pytest.approx(t * h * w * 3 * 2, abs=40)  # less two keys' framing
    # records written before the groups: one float32 image, sensor_months = months for the one group
    ex_old = parse(old, t, (h, w), 5)
    np.testing.assert_array_equal(ex_old["image"], ex["image"])
    np.testing.assert_array_equal(ex_old["sensor_months"], months[:, None].astype(np.float32))
    with pytest.raises(ValueError, match="group S2: values are not integers"):
        temporal_records.make_example("c", image + 0.5, valid | True, months, None, groups=groups)


def test_demo_tiffs_are_one_page_per_file_as_the_competitions(tmp_path):
    data_dir = small_demo(tmp_path / "bio", n_train=10, n_test=1, size=16)
    feat = os.path.join(data_dir, "train_features")
    names = sorted(os.listdir(feat))
    s1 = next(n for n in names if "_S1_" in n)
    s2 = next(n for n in names if "_S2_" in n)
    for name, bands, dtype in ((s1, 4, np.float32), (s2, 11, np.uint16)):
        with tifffile.TiffFile(os.path.join(feat, name)) as tif:
            assert len(tif.pages) == 1
            page = tif.pages[0]
            assert page.shape == (16, 16, bands) and page.samplesperpixel == bands and page.dtype == dtype
    with tifffile.TiffFile(os.path.join(data_dir, "train_agbm", s1.split("_")[0] + "_agbm.tif")) as tif:
        assert len(tif.pages) == 1 and tif.pages[0].shape == (16, 16)


def test_blank_s2_months_count_as_missing_per_sensor(tmp_path, capsys):
    data_dir = small_demo(tmp_path / "bio", n_train=10, n_test=1)
    feat = os.path.join(data_dir, "train_features")
    meta = pd.read_csv(os.path.join(data_dir, "features_metadata.csv"), dtype=str)
    s2 = meta[(meta["satellite"] == "S2") & (meta["split"] == "train")]
    chip = s2["chip_id"].value_counts().index[0]
    files = sorted(s2[s2["chip_id"] == chip]["filename"])
    zero, cloud, kept = files[0], files[1], files[2]
    tifffile.imwrite(os.path.join(feat, zero), np.zeros((8, 8, 11), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    clouded = tifffile.imread(os.path.join(feat, cloud))
    clouded[..., 10] = 255  # cloud probability 255 everywhere, reflectances kept
    clouded[0, 0, 10] = 254
    tifffile.imwrite(os.path.join(feat, cloud), clouded, photometric="minisblack", planarconfig="contig")
    m = convert_demo(data_dir, tmp_path / "tfrec")
    out = capsys.readouterr().out
    chips = pd.read_csv(tmp_path / "tfrec" / m["tiles_csv"], dtype={"id": str}).set_index("id")
    n_files = len(files)
    assert chips.loc[chip, "months_S2"] == n_files - 2 and chips.loc[chip, "blank_S2"] == 2
    assert chips.loc[chip, "months_S1"] == 12 and chips.loc[chip, "n_months_present"] == 12
    assert f"S1 {chips['months_S1'].mean():.1f}, S2 {chips['months_S2'].mean():.1f}" in out
    assert "2 blank S2 month(s) (all zero or cloud >= 254 everywhere) counted as missing" in out
    assert m["groups"] == [{"name": "S1", "bands": m["bands"][:4], "dtype": "float32"},
                           {"name": "S2", "bands": m["bands"][4:], "dtype": "uint16"}]
    spec = TemporalSpec.from_manifest(records.load_manifest(str(tmp_path / "tfrec")))
    ex = next(c for c in read_chips(records.fold_files(m, [0, 1, 2]), spec) if c["id"] == chip)
    for name, present in ((zero, 0), (cloud, 0), (kept, 1)):
        month = int(name[-6:-4])
        assert ex["sensor_months"][month].tolist() == [1, present]
        assert ex["valid"][month, :, :, 4:].all() == bool(present) and ex["valid"][month, :, :, :4].any()
        if present:
            np.testing.assert_array_equal(ex["image"][month, :, :, 4:], tifffile.imread(os.path.join(feat, name)))
        else:
            assert not ex["image"][month, :, :, 4:].any()


def test_generic_layout_blames_the_odd_chip_not_those_like_most(tmp_path, capsys):
    """Issue 21 item 9: the first chip set the months and bands, so one bad first chip blamed every good one."""
    root = write_generic(str(tmp_path / "gen"))
    np.save(os.path.join(root, "x0.npy"), np.ones((3, 6, 6, 2), np.float32))  # the first chip: 3 months, not 4
    assert temporal_layouts.read_temporal_generic(os.path.join(root, "train.csv")).n_months == 4
    rc = convert.main(["--layout", "temporal", "--data_dir", root, "--train_csv", "train.csv", "--out_dir",
                       str(tmp_path / "tfrec"), "--n_folds", "2", "--workers", "1", "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "x0.npy: 3 months, expected 4" in err
    assert not any(f"x{i}.npy" in err for i in range(1, 8))
