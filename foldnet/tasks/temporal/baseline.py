"""Per-pixel gradient-boosting baseline of temporal regression (The BioMassters): a member for the ensemble.

    foldnet baseline --data_dir data/biomass_demo --run_dir runs/biomass_gbm

One HistGradientBoostingRegressor per fold of the TFRecord directory
(``--tfrec_dir``, default DATA_DIR/tfrec: the folds the temporal UNets use),
fitted on at most ``--cap`` sampled pixels of the other folds with a known
target (``raster.pixelgbm``). Features per pixel: for every band, its mean,
std, min, max and median over the months where the value is present (missing
months and no-data values excluded; NaN when no month has it), the same five
statistics of the spectral indices ``--indices`` (default: NDVI when the
bands have red and near infrared; computed per month, a month counting only
when both bands are present), and the number of months with data. No spatial
context. Predictions are clipped at 0 (biomass is never negative).

Writes a run directory like a trained member (task.json,
temporal_spec.json, fold_K/oof.npz with the held-out fold's maps in target
units, fold_K/test.npz), so ``foldnet ensemble --runs RUN_DIR [UNET_RUN ...]``
scores it, weights it and writes its submission.
"""
import argparse
import os
import sys

import numpy as np

from foldnet.core.errors import ConfigError

BLOCK_CHIPS = 32


def default_indices(bands):
    from foldnet.raster import spectral

    roles = spectral.band_roles(bands)
    return ["NDVI"] if "nir" in roles and "red" in roles else []


def feature_names(bands, indices):
    from foldnet.raster.pixelgbm import STAT_NAMES

    return [f"{b}_{s}" for b in [*bands, *indices] for s in STAT_NAMES] + ["n_months"]


def pixel_features(image, valid, bands, indices):
    """float32 ``[b, H, W, 5 (len(bands) + len(indices)) + 1]`` of chips ``image`` / ``valid`` ``[b, T, H, W, C]``
    (``feature_names`` order): month statistics of every band, then of every index, then months with data."""
    from foldnet.raster import pixelgbm, spectral

    image, valid = np.asarray(image, np.float32), np.asarray(valid, bool)
    parts = [np.moveaxis(image, 1, 0)], [np.moveaxis(valid, 1, 0)]  # [T, b, H, W, C]
    if indices:
        roles = spectral.band_roles(bands)
        values = np.array(spectral.compute_indices(image, list(bands), list(indices)))
        present = np.stack([np.all(np.stack([valid[..., roles[r]] for r in spectral.INDICES[n].bands]), 0)
                            for n in indices], -1)
        parts[0].append(np.moveaxis(values, 1, 0))
        parts[1].append(np.moveaxis(present, 1, 0))
    stats = pixelgbm.nan_month_stats(np.concatenate(parts[0], -1), np.concatenate(parts[1], -1))  # [b,H,W,C',5]
    n_months = valid.any(-1).sum(1).astype(np.float32)[..., None]  # [b, H, W, 1]
    return np.concatenate([stats.reshape(*stats.shape[:3], -1), n_months], -1)


def pixel_source(manifest, spec, indices, task):
    """``pixelgbm.PixelSource`` of a temporal TFRecord directory (``pixel_features`` per block)."""
    from foldnet.io import tfdata
    from foldnet.raster import pixelgbm
    from foldnet.tasks.temporal import records as temporal_records

    def blocks(files):
        ds = tfdata.read_records(files, deterministic=True).map(
            tfdata.plain(lambda s: temporal_records.parse_example(s, spec.n_months, spec.shape, spec.n_channels,
                                                                  groups=spec.groups))).batch(BLOCK_CHIPS)
        for batch in ds.as_numpy_iterator():
            x = pixel_features(batch["image"], batch["valid"], spec.bands, indices)
            target = batch["target"]
            yield [i.decode("utf-8") for i in batch["id"]], x, target, np.isfinite(target) & (target >= 0)

    return pixelgbm.PixelSource(blocks, feature_names(spec.bands, indices), "regressor", task.encode_outputs,
                                task.encode_targets, clip=(0.0, None))


def fit_gbm(tfrec_dir, run_dir, indices=None, cap=None, seed=0):
    """Fit the per-pixel GBM member of ``tfrec_dir`` into ``run_dir`` (module doc); returns its OOF scores."""
    from foldnet.io import records
    from foldnet.raster import pixelgbm, spectral
    from foldnet.tasks.temporal.task import TASK

    manifest = records.load_manifest(tfrec_dir)
    spec = TASK.load_spec(manifest)
    indices = default_indices(spec.bands) if indices is None else list(indices)
    try:
        spectral.check_indices(indices, spec.bands)
    except ValueError as e:
        raise ConfigError(f"--indices: {e}") from e
    return pixelgbm.fit_member(TASK, manifest, spec, pixel_source(manifest, spec, indices, TASK), run_dir,
                               cap=cap, seed=seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the dataset (converted with create_tfrecords.py)")
    p.add_argument("--run_dir", required=True, help="the run directory to write (a member for foldnet ensemble)")
    p.add_argument("--tfrec_dir", help="TFRecord directory (default: DATA_DIR/tfrec)")
    p.add_argument("--method", choices=("gbm",), default="gbm", help="the baseline (only gbm)")
    p.add_argument("--indices", nargs="*", default=None,
                   help="spectral indices whose month statistics are added (default: NDVI if the bands allow)")
    p.add_argument("--cap", type=int, default=None, help="training pixels per fold (default 60000)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    a = p.parse_args(argv)
    if a.cap is not None and a.cap < 1:
        p.error(f"--cap {a.cap}: must be >= 1")
    from foldnet.raster import pixelgbm

    return pixelgbm.command(
        lambda: fit_gbm(a.tfrec_dir or os.path.join(a.data_dir, "tfrec"), a.run_dir, a.indices, a.cap, a.seed),
        lambda s: f"per-pixel GBM: OOF RMSE per chip {s['rmse']:.2f} (pooled {s['pooled_rmse']:.2f}); "
                  f"wrote {a.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
