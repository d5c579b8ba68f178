"""A simple per-pixel baseline for kelp: an NDVI threshold over clear sea, fitted on the training tiles.

    python -m foldnet.tasks.segmentation.baseline --data_dir data/kelp_demo --out data/kelp_demo/baseline.tar

A pixel is kelp when NDVI = (NIR - R) / (NIR + R) >= t, the pixel is not
missing, QA says clear and the DEM says sea (DEM <= 0, or no DEM); t is the
threshold with the best pooled Dice over all training tiles (searched on a
0.01 grid of NDVI). Writes a submission like foldnet's (seg_submission), so
both are scored by foldnet.tasks.segmentation.evaluate on the same test tiles. Needs a layout
with NIR and R bands (Kelp Wanted); no TensorFlow.
"""
import argparse
import sys

import numpy as np

from foldnet.core.errors import ConfigError, DataError
from foldnet.io import images
from foldnet.raster import submission as seg_submission
from foldnet.raster import tiff as seg_tiles
from foldnet.tasks.segmentation import layouts as seg_layouts
from foldnet.tasks.segmentation import metrics as seg_metrics

NDVI_GRID = np.round(np.arange(-0.5, 0.951, 0.01), 2)


def ndvi_score(image, bands):
    """NDVI where the baseline may call kelp (clear sea, no missing band), else -2 (never kelp)."""
    names = list(bands.names)
    if "NIR" not in names or "R" not in names:
        raise ConfigError(f"the NDVI baseline needs NIR and R bands, the layout has {names}")
    nir = image[:, :, names.index("NIR")].astype(np.float64)
    red = image[:, :, names.index("R")].astype(np.float64)
    missing = seg_tiles.missing_of(image, bands)
    ok = seg_tiles.valid_of(missing, bands)
    if bands.qa >= 0:
        ok &= image[:, :, bands.qa] == 0
    if bands.dem >= 0:
        ok &= (image[:, :, bands.dem] <= 0) | missing[:, :, bands.dem]
    # Kelp bands hold scaled reflectance: DN = (reflectance + 0.2) / 2.75e-5
    nir, red = nir * 2.75e-5 - 0.2, red * 2.75e-5 - 0.2
    den = nir + red
    ndvi = np.divide(nir - red, den, out=np.zeros_like(den), where=np.abs(den) > 1e-6)
    return np.where(ok, ndvi, -2.0)


def _scores(specs, workers, progress, desc):
    for ok, value in images.map_images(seg_tiles.load_task, specs, workers, desc=desc, progress=progress):
        if not ok:
            raise DataError(f"cannot read a tile: {value}")
        image, mask, _ = value
        yield ndvi_score(image, specs[0].bands), mask


def fit(dataset, workers=1, progress=False):
    """(best NDVI threshold, its training Dice, Dice-vs-threshold rows)."""
    specs = [seg_tiles.TileSpec(r.id, tuple(r.files), r.mask, dataset.bands) for r in dataset.train.itertuples()]
    curve = seg_metrics.ThresholdCurve(NDVI_GRID)
    for score, mask in _scores(specs, workers, progress, "fitting NDVI threshold"):
        curve.add(score, mask)
    rows = curve.table()
    best = seg_metrics.best_threshold(rows, "dice")
    return best["threshold"], best["dice"], rows


def predict_submission(dataset, threshold, out, tar=False, workers=1, progress=False):
    """Write the baseline's masks of every test tile as a submission; returns its path."""
    specs = [seg_tiles.TileSpec(r.id, tuple(r.files), None, dataset.bands) for r in dataset.test.itertuples()]
    if not specs:
        raise DataError("no test tiles to predict")
    with seg_submission.SubmissionWriter(out, [s.id for s in specs], naming=dataset.naming, tar=tar) as w:
        for spec, (score, _) in zip(specs, _scores(specs, workers, progress, "predicting")):
            w.add(spec.id, (score >= threshold).astype(np.uint8))
    return w.out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="a Kelp Wanted layout")
    p.add_argument("--out", required=True, help="submission directory, or a .tar file")
    p.add_argument("--workers", type=int, default=1, help="tile reading processes")
    a = p.parse_args(argv)
    try:
        dataset = seg_layouts.read_kelp(a.data_dir)
        threshold, dice, _ = fit(dataset, a.workers, progress=False)
        out = predict_submission(dataset, threshold, a.out, tar=a.out.endswith(".tar"), workers=a.workers)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"NDVI baseline: threshold {threshold:.2f} (training Dice {dice:.4f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
