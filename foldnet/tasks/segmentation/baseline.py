"""Per-pixel baselines of segmentation: an NDVI threshold (kelp), and gradient boosting (any layout).

    python -m foldnet.tasks.segmentation.baseline --data_dir data/kelp_demo --out data/kelp_demo/baseline.tar
    foldnet baseline --method gbm --data_dir data/cloud_demo --run_dir runs/seg_gbm

``--method gbm`` (``raster.pixelgbm``): one HistGradientBoostingClassifier
per fold of the TFRecord directory (``--tfrec_dir``, default
DATA_DIR/tfrec: the folds the UNet members use), fitted on at most ``--cap``
sampled pixels of the other folds whose valid flag is set. Features per
pixel: every raw band (a missing value is NaN) and the spectral indices
``--indices`` (default: every normalised difference the bands allow, on
unmasked pixels; NaN where one of its bands is missing). Writes a run
directory like a trained member (task.json, seg_spec.json, fold_K/oof.npz
with the held-out fold's probability maps, fold_K/test.npz), so ``foldnet
ensemble --runs RUN_DIR [UNET_RUN ...]`` scores it, fits its decision
threshold on OOF, weights it and writes its submission. No spatial context.

``--method ndvi`` (the default with ``--out``; Kelp Wanted layouts):

A pixel is kelp when NDVI = (NIR - R) / (NIR + R) >= t, the pixel is not
missing, QA says clear and the DEM says sea (DEM <= 0, or no DEM); t is the
threshold with the best pooled Dice over all training tiles (searched on a
0.01 grid of NDVI). Writes a submission like foldnet's (seg_submission), so
both are scored by foldnet.tasks.segmentation.evaluate on the same test tiles. Needs a layout
with NIR and R bands (Kelp Wanted); no TensorFlow.
"""
import argparse
import os
import sys

import numpy as np

from foldnet.core.errors import ConfigError, DataError
from foldnet.io import images
from foldnet.raster import submission as seg_submission
from foldnet.raster import tiff as seg_tiles
from foldnet.tasks.segmentation import layouts as seg_layouts
from foldnet.tasks.segmentation import metrics as seg_metrics

NDVI_GRID = np.round(np.arange(-0.5, 0.951, 0.01), 2)
BLOCK_TILES = 64


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


# ---------------------------------------------------------------- gradient boosting


def default_indices(bands):
    """The normalised differences (natural range, no reflectance constants) the bands allow."""
    from foldnet.raster import spectral

    roles = spectral.band_roles(bands)
    return [n for n, i in spectral.INDICES.items()
            if i.natural and not i.reflectance and all(b in roles for b in i.bands)]


def pixel_features(image, valid, bands, indices, missing_value=None):
    """float32 ``[b, H, W, len(bands) + len(indices)]`` of raw tiles ``[b, H, W, C]``: raw bands, then
    raw indices; NaN where a band is missing (``missing_value`` or the pixel not valid) and where an
    index's band is."""
    from foldnet.raster import spectral

    image = np.asarray(image)
    miss = np.zeros(image.shape, bool) if missing_value is None else image == missing_value
    miss |= (np.asarray(valid) == 0)[..., None]
    x = np.where(miss, np.nan, image.astype(np.float32))
    if not indices:
        return x.astype(np.float32)
    values = np.array(spectral.compute_indices(image.astype(np.float32), list(bands), list(indices)))
    roles = spectral.band_roles(bands)
    for k, name in enumerate(indices):
        gone = np.any(np.stack([miss[..., roles[b]] for b in spectral.INDICES[name].bands]), 0)
        values[..., k] = np.where(gone, np.nan, values[..., k])
    return np.concatenate([x, values.astype(np.float32)], -1)


def pixel_source(manifest, indices, task):
    """``pixelgbm.PixelSource`` of a segmentation TFRecord directory (``pixel_features`` per block)."""
    from foldnet.io import tfdata
    from foldnet.raster import pixelgbm
    from foldnet.tasks.segmentation import records as seg_records

    image = manifest["image"]
    bands, shape, dtype = list(image["bands"]), image["shape"], image["dtype"]

    def blocks(files):
        ds = tfdata.read_records(files, deterministic=True).map(
            tfdata.plain(lambda s: seg_records.parse_example(s, shape, dtype))).batch(BLOCK_TILES)
        for batch in ds.as_numpy_iterator():
            x = pixel_features(batch["image"], batch["valid"], bands, indices, image.get("missing_value"))
            yield ([i.decode("utf-8") for i in batch["id"]], x, batch["mask"],
                   (batch["valid"] > 0) & (batch["has_mask"] > 0)[:, None, None])

    return pixelgbm.PixelSource(blocks, bands + list(indices), "classifier", task.encode_outputs,
                                task.encode_targets)


def fit_gbm(tfrec_dir, run_dir, indices=None, cap=None, seed=0):
    """Fit the per-pixel GBM member of ``tfrec_dir`` into ``run_dir`` (module doc); returns its OOF scores."""
    from foldnet.io import records
    from foldnet.raster import pixelgbm, spectral
    from foldnet.tasks.segmentation.task import TASK

    manifest = records.load_manifest(tfrec_dir)
    if manifest.get("task") != "segmentation":
        raise DataError(f"{tfrec_dir}: task {manifest.get('task')!r} is not segmentation")
    spec = TASK.load_spec(manifest)
    bands = list(manifest["image"]["bands"])
    indices = default_indices(bands) if indices is None else list(indices)
    try:
        spectral.check_indices(indices, bands)
    except ValueError as e:
        raise ConfigError(f"--indices: {e}") from e
    return pixelgbm.fit_member(TASK, manifest, spec, pixel_source(manifest, indices, TASK), run_dir, cap=cap, seed=seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the dataset (ndvi: a Kelp Wanted layout)")
    p.add_argument("--method", choices=("ndvi", "gbm"), default=None,
                   help="ndvi threshold (needs --out) or per-pixel gradient boosting (needs --run_dir); "
                        "default: gbm with --run_dir, else ndvi")
    p.add_argument("--out", help="ndvi: submission directory, or a .tar file")
    p.add_argument("--workers", type=int, default=1, help="ndvi: tile reading processes")
    p.add_argument("--run_dir", help="gbm: the run directory to write (a member for foldnet ensemble)")
    p.add_argument("--tfrec_dir", help="gbm: TFRecord directory (default: DATA_DIR/tfrec)")
    p.add_argument("--indices", nargs="*", default=None,
                   help="gbm: spectral indices added to the bands (default: every normalised difference "
                        "the bands allow)")
    p.add_argument("--cap", type=int, default=None, help="gbm: training pixels per fold (default 60000)")
    p.add_argument("--seed", type=int, default=0, help="gbm: random seed")
    a = p.parse_args(argv)
    method = a.method or ("gbm" if a.run_dir else "ndvi")
    if method == "gbm":
        return main_gbm(a, p)
    if not a.out:
        p.error("--method ndvi needs --out")
    from foldnet.core.cli import run_main

    result = []

    def work():
        dataset = seg_layouts.read_kelp(a.data_dir)
        threshold, dice, _ = fit(dataset, a.workers, progress=False)
        out = predict_submission(dataset, threshold, a.out, tar=a.out.endswith(".tar"), workers=a.workers)
        result.extend([threshold, dice, out])

    rc = run_main(work)
    if rc:
        return rc
    threshold, dice, out = result
    print(f"NDVI baseline: threshold {threshold:.2f} (training Dice {dice:.4f}); wrote {out}")
    return 0


def main_gbm(a, parser):
    from foldnet.raster import pixelgbm

    if not a.run_dir:
        parser.error("--method gbm needs --run_dir")
    if a.cap is not None and a.cap < 1:
        parser.error(f"--cap {a.cap}: must be >= 1")
    return pixelgbm.command(
        lambda: fit_gbm(a.tfrec_dir or os.path.join(a.data_dir, "tfrec"), a.run_dir, a.indices, a.cap, a.seed),
        lambda s: f"per-pixel GBM: OOF Dice {s['dice']:.4f}, IoU {s['iou']:.4f} at 0.5, best Dice "
                  f"{s['dice_best']:.4f} at {s['threshold']:.2f}; wrote {a.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
