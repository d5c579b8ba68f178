"""Segmentation layouts -> TFRecords: Kelp / On Cloud N / generic layouts, statistics, folds, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tifffile

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.core.errors import DataError
from foldnet.io import records
from foldnet.tasks.segmentation import convert as seg_convert
from foldnet.tasks.segmentation import layouts as seg_layouts
from foldnet.tasks.segmentation import records as seg_records
from tests.paths import ROOT as ROOT_DIR

MISSING = -32768


def kelp_tile(rng, place, size=8):
    """7-band int16 tile: the DEM (band 6) is fixed per place, so acquisitions of one place are
    near-duplicates; spectral bands vary."""
    img = rng.integers(7000, 12000, size=(size, size, 7)).astype(np.int16)
    prng = np.random.default_rng(1000 + place)
    img[:, :, 6] = (prng.normal(0, 30, (size, size)) + np.linspace(-40, 40, size)[None, :] * (place % 3 - 1)).astype(
        np.int16)
    img[:, :, 5] = rng.random((size, size)) < 0.1  # QA: 1 = cloud
    return img


def write_kelp(root, n_places=6, per_place=3, n_test=2, size=8, seed=0, metadata=True):
    rng = np.random.default_rng(seed)
    for d in ("train_satellite", "train_kelp", "test_satellite"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    rows, truth = [], {}
    k = 0
    for place in range(n_places):
        for _ in range(per_place):
            tid = f"T{k:04d}"
            k += 1
            img = kelp_tile(rng, place, size)
            mask = (rng.random((size, size)) < 0.2).astype(np.uint8) if place % 2 == 0 else np.zeros((size, size),
                                                                                                    np.uint8)
            tifffile.imwrite(os.path.join(root, "train_satellite", f"{tid}_satellite.tif"), img)
            tifffile.imwrite(os.path.join(root, "train_kelp", f"{tid}_kelp.tif"), mask)
            rows += [(tid, "satellite", f"{tid}_satellite.tif", True), (tid, "kelp", f"{tid}_kelp.tif", True)]
            truth[tid] = (img, mask)
    for t in range(n_test):
        tid = f"X{t:04d}"
        img = kelp_tile(rng, t, size)
        tifffile.imwrite(os.path.join(root, "test_satellite", f"{tid}_satellite.tif"), img)
        rows.append((tid, "satellite", f"{tid}_satellite.tif", False))
        truth[tid] = (img, None)
    if metadata:
        pd.DataFrame(rows, columns=["tile_id", "type", "filename", "in_train"]).to_csv(
            os.path.join(root, seg_layouts.KELP_METADATA), index=False)
    return truth


def read_records(files, shape, dtype):
    ds = tf.data.TFRecordDataset(files).map(lambda s: seg_records.parse_example(s, shape, dtype))
    return {ex["id"].numpy().decode(): ex for ex in ds}


def test_kelp_layout_round_trip_stats_and_folds(tmp_path):
    truth = write_kelp(str(tmp_path / "kelp"))
    # one tile gets missing pixels: 3 pixels in SWIR, and a whole DEM (not a validity band)
    tid = "T0004"
    img, mask = truth[tid]
    img[0, :3, 0] = MISSING
    img[:, :, 6] = MISSING
    tifffile.imwrite(str(tmp_path / "kelp" / "train_satellite" / f"{tid}_satellite.tif"), img)
    out = str(tmp_path / "tfrec")
    m = seg_convert.create_seg_tfrecords("kelp", str(tmp_path / "kelp"), out, n_folds=3, workers=1,
                                         progress=False)
    assert m["task"] == "segmentation" and m["layout"] == "kelp"
    assert m["image"] == {"shape": [8, 8, 7], "dtype": "int16", "missing_value": MISSING,
                          "bands": ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"],
                          "valid_bands": ["SWIR", "NIR", "R", "G", "B"], "qa_band": "QA", "dem_band": "DEM"}
    assert m["n_examples"] == 18 and m["test"]["n_examples"] == 2 and m["submission_naming"] == "{id}_kelp.tif"
    loaded = records.load_manifest(out)
    assert loaded["tiles_csv"] == "tiles.csv"
    # every tile round-trips exactly: bands, mask, valid, group
    got = read_records(records.fold_files(loaded, [0, 1, 2]) + records.test_files(loaded), (8, 8, 7), "int16")
    assert sorted(got) == sorted(truth)
    for t, (img, mask) in truth.items():
        np.testing.assert_array_equal(got[t]["image"].numpy(), img)
        if mask is not None:
            np.testing.assert_array_equal(got[t]["mask"].numpy(), mask)
    assert got[tid]["valid"].numpy().sum() == 64 - 3
    # band statistics equal numpy over the training tiles (missing values excluded)
    train = np.stack([img for t, (img, mask) in truth.items() if mask is not None])
    for b, row in enumerate(m["band_stats"]):
        v = train[:, :, :, b].ravel()
        v = v[v != MISSING].astype(np.float64)
        assert row["min"] == v.min() and row["max"] == v.max()
        assert row["mean"] == pytest.approx(v.mean()) and row["std"] == pytest.approx(v.std())
        assert row["q01"] == np.quantile(v, 0.01, method="inverted_cdf")
        assert row["q99"] == np.quantile(v, 0.99, method="inverted_cdf")
    assert m["band_stats"][0]["missing_share"] == pytest.approx(3 / (18 * 64))
    assert m["band_stats"][6]["missing_share"] == pytest.approx(64 / (18 * 64))
    assert m["quantiles"] == "exact"
    # tiles.csv: properties per tile
    tiles = pd.read_csv(os.path.join(out, "tiles.csv"), dtype={"group": str})
    row = tiles.set_index("id").loc[tid]
    assert row["missing_share"] == pytest.approx(3 / 64) and row["dem_missing_share"] == 1.0
    assert row["water_share"] == 0.0
    r0 = tiles.set_index("id").loc["T0000"]
    img0, mask0 = truth["T0000"]
    assert r0["positive_share"] == pytest.approx(mask0.mean())
    assert r0["cloud_share"] == pytest.approx((img0[:, :, 5] != 0).mean())
    assert r0["water_share"] == pytest.approx((img0[:, :, 6] <= 0).mean())
    assert list(tiles.columns[:4]) == ["id", "split", "fold", "group"]
    assert (tiles[tiles["split"] == "test"]["fold"] == -1).all()
    # near-duplicate grouping on the DEM: the 3 acquisitions of each place share a group and a fold
    # (tile T0004 has no DEM: its own group)
    tr = tiles[tiles["split"] == "train"].copy()
    tr["place"] = [int(t[1:]) // 3 for t in tr["id"]]
    for place, rows in tr[tr["id"] != tid].groupby("place"):
        assert rows["group"].nunique() == 1 and rows["fold"].nunique() == 1, rows
    assert m["n_grouped"] == 17
    assert got["T0000"]["group"].numpy().decode() == r0["group"]
    folds = pd.read_csv(os.path.join(out, "folds.csv"))
    assert list(folds.columns) == ["id", "fold", "group"] and len(folds) == 18
    # a rerun with the same inputs keeps the output; a changed tile rewrites it
    mtime = os.path.getmtime(os.path.join(out, "manifest.json"))
    seg_convert.create_seg_tfrecords("kelp", str(tmp_path / "kelp"), out, n_folds=3, workers=1, progress=False)
    assert os.path.getmtime(os.path.join(out, "manifest.json")) == mtime


def test_kelp_without_metadata_lists_directories(tmp_path):
    write_kelp(str(tmp_path), metadata=False, n_places=2, per_place=2, n_test=1)
    ds = seg_layouts.read_layout("kelp", str(tmp_path))
    assert list(ds.train["id"]) == ["T0000", "T0001", "T0002", "T0003"] and list(ds.test["id"]) == ["X0000"]
    assert ds.csv_files == []


def write_cloud(root, n_locations=4, per_location=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_locations * per_location), ("test", 2)):
        for c in range(n):
            chip = f"{split[:2]}{c:03d}"
            os.makedirs(os.path.join(root, f"{split}_features", chip))
            for b in ("B02", "B03", "B04", "B08"):
                tifffile.imwrite(os.path.join(root, f"{split}_features", chip, f"{b}.tif"),
                                 rng.integers(1, 5000, (size, size)).astype(np.uint16))
            if split == "train":
                os.makedirs(os.path.join(root, "train_labels"), exist_ok=True)
                tifffile.imwrite(os.path.join(root, "train_labels", f"{chip}.tif"),
                                 (rng.random((size, size)) < 0.5).astype(np.uint8))
                rows.append((chip, f"loc{c % n_locations}", "2020-04-29T08:20:47Z"))
    pd.DataFrame(rows, columns=["chip_id", "location", "datetime"]).to_csv(
        os.path.join(root, "train_metadata.csv"), index=False)


def test_cloud_layout_via_command_line_groups_by_location(tmp_path):
    write_cloud(str(tmp_path / "cloud"))
    out = tmp_path / "tfrec"
    # layout recognised from the folders
    proc = subprocess.run([sys.executable, "create_tfrecords.py", "--data_dir", str(tmp_path / "cloud"),
                           "--out_dir", str(out), "--n_folds", "2", "--workers", "2", "--no_progress"],
                          capture_output=True, text=True, cwd=ROOT_DIR)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["layout"] == "cloud" and m["image"]["shape"] == [8, 8, 4] and m["image"]["dtype"] == "uint16"
    assert m["image"]["missing_value"] == 0 and m["test"]["n_examples"] == 2
    tiles = pd.read_csv(out / "tiles.csv")
    tr = tiles[tiles["split"] == "train"]
    assert tr.groupby("group")["fold"].nunique().max() == 1  # a location never spans folds
    assert set(tr["group"]) == {"loc0", "loc1", "loc2", "loc3"}
    assert "cloud_share" not in tiles.columns


def test_generic_layout_band_pattern_and_multiband(tmp_path):
    root = tmp_path / "gen"
    write_cloud(str(root))
    tr = pd.read_csv(root / "train_metadata.csv")
    pd.DataFrame({"id": tr["chip_id"], "img": [f"train_features/{c}/{{band}}.tif" for c in tr["chip_id"]],
                  "label": [f"train_labels/{c}.tif" for c in tr["chip_id"]], "site": tr["location"]}).to_csv(
        root / "train.csv", index=False)
    m = seg_convert.create_seg_tfrecords("seg", None, str(tmp_path / "a"), train_csv=str(root / "train.csv"),
                                         image_col="img", mask_col="label", group_col="site",
                                         bands=["B02", "B03", "B04", "B08"], n_folds=2, workers=1, progress=False)
    assert m["image"]["bands"] == ["B02", "B03", "B04", "B08"] and m["image"]["missing_value"] is None
    # a multi-band file, band-interleaved [C, H, W], band names from the file
    os.makedirs(root / "multi")
    for c in tr["chip_id"]:
        planes = [tifffile.imread(root / "train_features" / c / f"{b}.tif") for b in ("B02", "B03", "B04", "B08")]
        tifffile.imwrite(root / "multi" / f"{c}.tif", np.stack(planes), photometric="minisblack", planarconfig="separate")
    pd.DataFrame({"id": tr["chip_id"], "image": [f"multi/{c}.tif" for c in tr["chip_id"]],
                  "mask": [f"train_labels/{c}.tif" for c in tr["chip_id"]]}).to_csv(root / "multi.csv", index=False)
    m2 = seg_convert.create_seg_tfrecords("seg", None, str(tmp_path / "b"), train_csv=str(root / "multi.csv"),
                                          n_folds=2, workers=1, progress=False)
    assert m2["image"]["bands"] == ["b0", "b1", "b2", "b3"] and m2["image"]["shape"] == [8, 8, 4]
    for a, b in zip(m["band_stats"], m2["band_stats"]):
        assert {k: v for k, v in a.items() if k != "band"} == {k: v for k, v in b.items() if k != "band"}


def test_every_bad_tile_named_before_anything_is_written(tmp_path):
    root = tmp_path / "kelp"
    write_kelp(str(root), n_places=4, per_place=2)
    sat, kelp = root / "train_satellite", root / "train_kelp"
    tifffile.imwrite(kelp / "T0000_kelp.tif", np.zeros((7, 8), np.uint8))  # mask shape != image shape
    tifffile.imwrite(sat / "T0001_satellite.tif", np.zeros((8, 8, 3), np.int16), photometric="minisblack")  # 3 bands
    tifffile.imwrite(kelp / "T0002_kelp.tif", np.full((8, 8), 255, np.uint8))  # non-binary
    os.remove(kelp / "T0003_kelp.tif")  # missing mask
    tifffile.imwrite(sat / "T0004_satellite.tif", np.full((8, 8, 7), MISSING, np.int16))  # all missing
    (sat / "T0005_satellite.tif").write_bytes(b"II*\x00garbage")  # unreadable
    tifffile.imwrite(sat / "T0006_satellite.tif", np.zeros((9, 9, 7), np.int16))  # odd shape
    tifffile.imwrite(kelp / "T0006_kelp.tif", np.zeros((9, 9), np.uint8))
    out = tmp_path / "tfrec"
    # missing files are found first, from the listing
    with pytest.raises(DataError) as e:
        seg_convert.create_seg_tfrecords("kelp", str(root), str(out), n_folds=2, workers=1, progress=False)
    assert "train tile T0003: mask not found: train_kelp/T0003_kelp.tif" in e.value.format()
    tifffile.imwrite(kelp / "T0003_kelp.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as e:
        seg_convert.create_seg_tfrecords("kelp", str(root), str(out), n_folds=2, workers=2, progress=False)
    text = e.value.format()
    for needle in ["T0000 (train_satellite/T0000_satellite.tif): mask shape (7, 8) != image shape (8, 8)",
                   "T0001 (train_satellite/T0001_satellite.tif): 3 bands, expected 7",
                   "T0002 (train_satellite/T0002_satellite.tif): mask is not binary: values [255]",
                   "T0004 (train_satellite/T0004_satellite.tif): all pixels missing",
                   "T0005 (train_satellite/T0005_satellite.tif): cannot read TIFF",
                   "1 tile(s) are [9, 9, 7] int16, most are [8, 8, 7] int16: 1: 'T0006'"]:
        assert needle in text, text
    assert len(e.value.problems) == 6
    assert os.listdir(tmp_path) == ["kelp"]  # nothing written, no temporary left


def test_command_line_bad_tiles_exit_2_and_flag_checks(tmp_path, capsys):
    root = tmp_path / "kelp"
    write_kelp(str(root), n_places=2, per_place=2, n_test=0)
    tifffile.imwrite(root / "train_kelp" / "T0001_kelp.tif", np.full((8, 8), 3, np.uint8))
    assert convert.main(["--data_dir", str(root), "--n_folds", "2", "--workers", "1", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "T0001" in err and "mask is not binary: values [3]" in err and "Traceback" not in err
    assert not (root / "tfrec").exists()
    # segmentation flags without a segmentation layout, classification flags with one
    assert convert.main(["--data_dir", str(tmp_path), "--bands", "a,b"]) == 2
    assert "--bands apply to segmentation layouts only" in capsys.readouterr().err
    assert convert.main(["--data_dir", str(root), "--layout", "kelp", "--max_side", "64"]) == 2
    assert "--max_side do not apply to the kelp layout" in capsys.readouterr().err


def test_strata_combine_positive_cloud_and_water_bins():
    props = [{"positive_share": p, "cloud_share": c, "water_share": w}
             for p, c, w in [(0, 0, 0.9), (0.1, 0.5, 0.9), (0, 0, 0.1), (0.2, 0.9, 0.1), (0, 0, 0.5), (0, 0.2, 0.5)]]
    strata = seg_convert.tile_strata(props, bins=2)
    # cloud shares 0,0.5,0,0.9,0,0.2: median 0.1 -> bins 0,1,0,1,0,1; water median 0.5 -> 1,1,0,0,1,1
    assert list(strata) == ["0-c0-w1", "1-c1-w1", "0-c0-w0", "1-c1-w0", "0-c0-w1", "0-c1-w1"]
    assert list(seg_convert.tile_strata(props, bins=1)) == ["0", "1", "0", "1", "0", "0"]


def test_kelp_index_stats_over_every_training_tile_and_winner_tile_shares(tmp_path):
    """The manifest's index_stats: per index, the mean over ALL training tiles of each tile's linear
    1% / 99% quantiles of the pixels kept (QA 0, DEM present and <= 0, bands valid), min / max over
    them; DEMWM fixed to 0..1; test tiles ignored. tiles.csv has the winner's DEM shares."""
    truth = write_kelp(str(tmp_path / "kelp"))
    tid = "T0001"
    img, _ = truth[tid]
    img[0, :, 6] = MISSING  # a DEM row missing: those pixels are not clear water
    img[1, :4, 6] = 0
    tifffile.imwrite(str(tmp_path / "kelp" / "train_satellite" / f"{tid}_satellite.tif"), img)
    m = seg_convert.create_seg_tfrecords("kelp", str(tmp_path / "kelp"), str(tmp_path / "tfrec"), n_folds=3,
                                         workers=1, progress=False)
    stats = m["index_stats"]
    assert stats["mask_indices"] is True and "NDVI" in stats["stats"] and "CIG" not in stats["stats"]
    assert stats["stats"]["DEMWM"] == {"min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0, "n_tiles": 18}
    q01, q99, lows, highs = [], [], [], []
    for t, (im, mask) in truth.items():
        if mask is None:
            continue
        x = im.astype(np.float64)
        keep = (x[:, :, 5] == 0) & (x[:, :, 6] <= 0) & (im[:, :, 6] != MISSING)
        sabi = ((x[:, :, 1] - x[:, :, 2]) / (x[:, :, 3] + x[:, :, 4]))[keep]  # (NIR - R) / (G + B)
        if sabi.size:
            q01.append(np.quantile(sabi, 0.01))
            q99.append(np.quantile(sabi, 0.99))
            lows.append(sabi.min())
            highs.append(sabi.max())
    got = stats["stats"]["SABI"]
    assert got["n_tiles"] == len(q01) == 18
    assert got["q01"] == pytest.approx(np.mean(q01), rel=1e-5) and got["q99"] == pytest.approx(np.mean(q99), rel=1e-5)
    assert got["min"] == pytest.approx(min(lows), rel=1e-5) and got["max"] == pytest.approx(max(highs), rel=1e-5)
    tiles = pd.read_csv(str(tmp_path / "tfrec" / "tiles.csv")).set_index("id")
    dem = img[:, :, 6]
    assert tiles.loc[tid, "dem_nonpositive_share"] == pytest.approx(((dem <= 0) | (dem == MISSING)).mean())
    assert tiles.loc[tid, "dem_negative_share"] == pytest.approx((dem < 0).mean())  # -32768 < 0 included
    assert tiles.loc[tid, "dem_zero_share"] == pytest.approx((dem == 0).mean())
    assert tiles.loc[tid, "dem_negative_share"] > tiles.loc[tid, "dem_missing_share"] == 8 / 64
