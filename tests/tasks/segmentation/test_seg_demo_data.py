"""Synthetic Kelp Wanted data: real layout and value ranges, near-duplicate places, determinism,
and an NDVI baseline that works but is clearly beaten by using the neighbourhood."""
import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.ndimage import distance_transform_edt, uniform_filter

from foldnet.raster import tiff as seg_tiles
from foldnet.tasks.segmentation import baseline as seg_baseline
from foldnet.tasks.segmentation import convert as seg_convert
from foldnet.tasks.segmentation import demo_data as seg_demo_data
from foldnet.tasks.segmentation import evaluate as seg_evaluate
from foldnet.tasks.segmentation import layouts as seg_layouts
from foldnet.tasks.segmentation import metrics as seg_metrics


@pytest.fixture(scope="module")
def kelp_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kelp") / "demo")
    seg_demo_data.build_kelp_dataset(out, n_places=40, acquisitions=4, size=48, seed=3)
    return out


def test_layout_values_and_kelp_share(kelp_demo):
    ds = seg_layouts.read_kelp(kelp_demo)  # the real layout reader accepts it
    assert len(ds.train) + len(ds.test) == 160 and len(ds.test) == 32
    assert sorted(os.listdir(os.path.join(kelp_demo, "answers"))) == sorted(f"{t}_kelp.tif" for t in ds.test["id"])
    meta = pd.read_csv(os.path.join(kelp_demo, "metadata_fTq0l2T.csv"))
    assert list(meta.columns) == ["tile_id", "type", "filename", "in_train"]
    imgs = [tifffile.imread(f[0]) for f in ds.train["files"]]
    masks = [tifffile.imread(m) for m in ds.train["mask"]]
    assert all(i.shape == (48, 48, 7) and i.dtype == np.int16 for i in imgs)
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    stack = np.stack(imgs)
    spectral = stack[:, :, :, :5]
    assert (spectral == seg_demo_data.MISSING).any()  # striped missing data somewhere
    ok = spectral[spectral != seg_demo_data.MISSING]
    assert 6000 < ok.min() and ok.max() < 30000  # Landsat C2 L2 scaled reflectance
    assert set(np.unique(stack[:, :, :, 5])) == {0, 1}  # QA: clear / cloud
    dem = stack[:, :, :, 6]
    assert (dem == 0).mean() > 0.4 and (dem > 0).any()  # mostly sea, some land
    no_kelp = np.mean([m.sum() == 0 for m in masks])
    assert 0.2 < no_kelp < 0.5
    # kelp only in the sea, and it raises NIR relative to red
    kelp_px = np.stack(masks).astype(bool)
    assert (dem[kelp_px] <= 0).all()  # sea (0) or no DEM (-32768)
    nir, red = stack[:, :, :, 1].astype(float), stack[:, :, :, 2].astype(float)
    sea = (dem == 0) & (stack[:, :, :, 5] == 0) & (stack[:, :, :, 1] != seg_demo_data.MISSING)
    assert np.median((nir - red)[kelp_px & sea]) > np.median((nir - red)[~kelp_px & sea]) + 1000


def test_deterministic_and_acquisitions_of_a_place_are_grouped(kelp_demo, tmp_path):
    again = str(tmp_path / "again")
    seg_demo_data.build_kelp_dataset(again, n_places=40, acquisitions=4, size=48, seed=3)
    for sub in ("train_satellite", "answers"):
        for name in os.listdir(os.path.join(kelp_demo, sub)):
            with open(os.path.join(kelp_demo, sub, name), "rb") as a, open(os.path.join(again, sub, name), "rb") as b:
                assert a.read() == b.read()
    m = seg_convert.create_seg_tfrecords("kelp", kelp_demo, str(tmp_path / "tfrec"), n_folds=5, workers=1,
                                         progress=False)
    tiles = pd.read_csv(tmp_path / "tfrec" / "tiles.csv", dtype={"group": str})
    places = pd.read_csv(os.path.join(kelp_demo, "places.csv"))
    tr = tiles[tiles["split"] == "train"].merge(places, left_on="id", right_on="tile_id")
    # near-duplicate groups join two places only through flat all-sea DEMs (DEM 0 everywhere: the same
    # flat thumbnail wherever it is); a place with land keeps its tiles (DEM present) together
    places_per_group = tr.groupby("group")["place"].nunique()
    mixed = tr[tr["group"].isin(places_per_group[places_per_group > 1].index)]
    assert (mixed["dem_zero_share"] == 1.0).all()
    flat = tr[tr["dem_zero_share"] == 1.0]
    if len(flat) > 1:  # they form one group (the cap of 100 is not reached here)
        assert flat["group"].nunique() == 1
    with_land = tr[(tr["water_share"] < 1) & (tr["dem_missing_share"] == 0)]
    assert (with_land.groupby("place")["fold"].nunique() == 1).all()
    assert m["n_grouped"] >= len(with_land) - 2


def _context_score(image, bands, size=3, coast=8):
    """Test-only stand-in for a model that sees the neighbourhood: NDVI averaged over the valid
    pixels of a size x size window (fills missing stripes, damps noise), kept only within ``coast``
    pixels of land (kelp grows near the coast, glint is anywhere)."""
    s = seg_baseline.ndvi_score(image, bands)
    ok = s > -2
    den = uniform_filter(ok.astype(float), size)
    smooth = np.where(den > 0.2, uniform_filter(np.where(ok, s, 0), size) / np.maximum(den, 1e-6), -2)
    land = image[:, :, 6] > 0
    near = distance_transform_edt(~land) < coast if land.any() else np.zeros(land.shape, bool)
    return np.where(near & ~land, smooth, -2)


def test_ndvi_baseline_is_imperfect_and_context_helps(kelp_demo, tmp_path):
    ds = seg_layouts.read_kelp(kelp_demo)
    threshold, train_dice, rows = seg_baseline.fit(ds)
    assert -0.5 <= threshold <= 0.95 and len(rows) == len(seg_baseline.NDVI_GRID)
    sub = str(tmp_path / "baseline.tar")
    seg_baseline.predict_submission(ds, threshold, sub, tar=True)
    base = seg_evaluate.score_submission(sub, os.path.join(kelp_demo, "answers"))
    assert 0.3 < base["dice"] < 0.8, base
    # the same tiles with a neighbourhood: fitted on train, scored on test
    def tiles(table, masks):
        for r in table.itertuples():
            image, mask, _ = seg_tiles.load_tile(seg_tiles.TileSpec(r.id, tuple(r.files), r.mask if masks else None,
                                                                    ds.bands))
            yield r.id, _context_score(image, ds.bands), mask
    curve = seg_metrics.ThresholdCurve(seg_baseline.NDVI_GRID)
    for _, s, m in tiles(ds.train, True):
        curve.add(s, m)
    t = seg_metrics.best_threshold(curve.table())["threshold"]
    preds, truths = [], []
    for tid, s, _ in tiles(ds.test, False):
        preds.append(s >= t)
        truths.append(tifffile.imread(os.path.join(kelp_demo, "answers", f"{tid}_kelp.tif")))
    assert seg_metrics.pooled_dice(preds, truths) > base["dice"] + 0.1


def test_command_lines_build_baseline_and_score(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)

    d = str(tmp_path / "k")
    proc = run("foldnet.commands.demo_data", "--kind", "kelp", "--out_dir", d, "--image_size", "32", "--n_places", "10",
               "--acquisitions", "2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(os.path.join(d, "train_satellite"))) + len(os.listdir(os.path.join(d, "answers"))) == 20
    assert tifffile.imread(os.path.join(d, "answers", os.listdir(os.path.join(d, "answers"))[0])).shape == (32, 32)
    proc = run("foldnet.tasks.segmentation.baseline", "--data_dir", d, "--out", str(tmp_path / "b.tar"))
    assert proc.returncode == 0 and "NDVI baseline: threshold" in proc.stdout, proc.stderr
    proc = run("foldnet.tasks.segmentation.evaluate", "--submission", str(tmp_path / "b.tar"), "--answers", os.path.join(d, "answers"),
               "--locations", os.path.join(d, "places.csv"), "--label", "baseline")
    assert proc.returncode == 0, proc.stderr
    assert "baseline: test set (4 tiles): Dice" in proc.stdout and "location-weighted IoU" in proc.stdout
    # the same submission path again is ours to replace; a folder of other files is not
    os.makedirs(tmp_path / "mine")
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    proc = run("foldnet.tasks.segmentation.baseline", "--data_dir", d, "--out", str(tmp_path / "mine"))
    assert proc.returncode == 2 and "refusing to replace" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_tiles_are_one_band_interleaved_page_as_gdal_writes_them(kelp_demo):
    """A Landsat tile as GDAL writes it: one page of H x W x 7, planarconfig contig (not H pages of
    W x 7); the mask one page of H x W. The reader gets [H, W, 7] back."""
    ds = seg_layouts.read_kelp(kelp_demo)
    image_file, mask_file = ds.train["files"].iloc[0][0], ds.train["mask"].iloc[0]
    with tifffile.TiffFile(image_file) as tif:
        assert len(tif.pages) == 1
        page = tif.pages[0]
        assert page.shape == (48, 48, 7)
        assert page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        assert page.samplesperpixel == 7
    with tifffile.TiffFile(mask_file) as tif:
        assert len(tif.pages) == 1 and tif.pages[0].shape == (48, 48)
    image = seg_tiles.read_bands((image_file,), 7)
    assert image.shape == (48, 48, 7) and image.dtype == np.int16
    # the reader still reads the band-first (planar) layout and the old page stack
    planar = os.path.join(os.path.dirname(kelp_demo), "planar.tif")
    tifffile.imwrite(planar, np.moveaxis(image, -1, 0), photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(seg_tiles.read_bands((planar,), 7), image)
    stacked = os.path.join(os.path.dirname(kelp_demo), "stacked.tif")
    tifffile.imwrite(stacked, image)
    np.testing.assert_array_equal(seg_tiles.read_bands((stacked,), 7), image)


def test_cloud_chip_bands_are_single_pages(tmp_path):
    out = str(tmp_path / "cloud")
    seg_demo_data.build_cloud_dataset(out, n_locations=4, chips_per_location=1, size=32, seed=1)
    chip = sorted(os.listdir(os.path.join(out, "train_features")))[0]
    for band in seg_demo_data.CLOUD_CHIP_BANDS:
        with tifffile.TiffFile(os.path.join(out, "train_features", chip, f"{band}.tif")) as tif:
            assert len(tif.pages) == 1 and tif.pages[0].shape == (32, 32)
