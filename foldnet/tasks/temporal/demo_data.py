"""A synthetic BioMassters dataset in the real layout (``python -m foldnet.tasks.classification.demo_data --kind biomass``).

No download: every chip is synthesised, deterministically from the seed.

* Layout as distributed (see foldnet.tasks.temporal.layouts): per chip and month
  MM = 00..11 (September .. August) ``train_features/{chip}_S1_{MM}.tif``
  (4 float32 bands VV/VH ascending, VV/VH descending, in dB, -9999 = no data)
  and ``{chip}_S2_{MM}.tif`` (11 uint16 bands B02 .. B12 as reflectance x
  10000, then the cloud probability CLP 0..255; absent for a missing month),
  ``train_agbm/{chip}_agbm.tif`` (float32, Mg/ha), ``test_features/``,
  ``features_metadata.csv`` (filename, chip_id, satellite, split, month,
  corresponding_agbm) and ``train_agbm_metadata.csv`` (chip_id, filename);
  plus ``answers/{chip}_agbm.tif`` (the hidden test targets).
* A boreal forest: per pixel a canopy height index ``h`` (smooth random
  field, 0 .. ~1.15, felled patches) and an evergreen (conifer) share ``e``;
  the target is ``agbm = 380 h (0.15 + 0.85 e)`` plus a little noise (in this
  world conifer stands carry most of the biomass), a few pixels above the
  competition's cap of 400.
* Seasons: broadleaves carry leaves from May to September (leaf factor ``L``
  per month), so the green cover is ``h (e + (1 - e) L)``: summer months see
  ``h``, winter months ``h e``. S2 mixes soil and canopy spectra by that cover
  (snow brightens the whole chip in winter); S1 backscatter rises with the
  cover under strong per-month speckle (2 looks, about 3.3 dB), so one month
  is noisy and the average of many is not.
* What makes one month insufficient: a summer month alone sees ``h`` but not
  ``e``, a winter month alone ``h e`` but not ``h``; 30% of S2 months are
  cloudy (bright bands, high CLP), S2 is absent in about 20% of the months
  (60% of December and January: polar night); an S1 orbit or a strip is
  sometimes missing (-9999). The mean of the months is one mixture of summer
  and winter cover whose proportions change with the missing and cloudy
  months, so it cannot separate ``h`` from ``e`` either: the target needs the
  seasonal contrast, i.e. several months seen apart. A per-pixel check at the
  defaults (gradient boosting on one pixel's values, 60k training pixels,
  fold 4 held out): RMSE 62 from July alone, 28.5 from the mean of the
  months, 21 from all 12 months (before the imperfections below).
* Imperfections of real data: every S2 month has its own gain and a haze (additive,
  strongest in blue, a smooth field over the chip); the 20 m bands (B05, B06, B07, B8A,
  B11, B12) are blurred like a 20 m pixel resampled to 10 m; each S1 orbit of a chip has
  its own calibration offset (dB). The training targets (``train_agbm/``) are the true map
  shifted by up to one pixel (misregistration of the lidar map) with 10% multiplicative
  noise; the hidden test targets (``answers/``) are the true maps.
"""
import hashlib
import os

import numpy as np
import pandas as pd

from foldnet.tasks.temporal.layouts import BIOMASSTERS_MONTHS
from foldnet.tasks.temporal.settings import TARGET_CAP

N_MONTHS = 12
# Leaf factor of deciduous trees and snow cover per month MM = 00 (September) .. 11 (August).
LEAF = np.array([0.8, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.6, 1.0, 1.0, 1.0])
SNOW = np.array([0.0, 0.1, 0.4, 0.9, 1.0, 1.0, 0.8, 0.3, 0.0, 0.0, 0.0, 0.0])
S2_MISSING = np.array([0.1, 0.15, 0.3, 0.6, 0.6, 0.3, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1])
# Surface reflectance, bands B02 B03 B04 B05 B06 B07 B08 B8A B11 B12.
SOIL = np.array([0.05, 0.08, 0.10, 0.13, 0.16, 0.18, 0.20, 0.21, 0.28, 0.22])
SNOWY = np.array([0.80, 0.78, 0.75, 0.72, 0.70, 0.68, 0.65, 0.63, 0.10, 0.08])
CANOPY = np.array([0.02, 0.05, 0.03, 0.09, 0.25, 0.32, 0.36, 0.37, 0.16, 0.07])
CLOUD = np.array([0.55, 0.55, 0.56, 0.57, 0.58, 0.58, 0.58, 0.58, 0.45, 0.35])
CAP = TARGET_CAP
HAZE = np.array([1.0, 0.85, 0.7, 0.6, 0.5, 0.45, 0.4, 0.38, 0.15, 0.1])  # per band B02 .. B12
BANDS_20M = (3, 4, 5, 7, 8, 9)  # B05, B06, B07, B8A, B11, B12 in the 10 reflectance bands
TARGET_NOISE = 0.1  # multiplicative noise of the training targets


def chip_id(i, seed):
    """A BioMassters-like chip id: 8 hex digits."""
    return hashlib.sha1(f"foldnet-biomass-{seed}-{i}".encode()).hexdigest()[:8]


def _field(rng, size, sigma):
    """Smooth random field, zero mean, unit std."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=(size, size)), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def make_forest(rng, size):
    """(h canopy height index, e evergreen share, agbm float32) of one chip."""
    stand = rng.uniform(0.1, 0.9)  # chip-level stand maturity
    h = np.clip(stand + 0.3 * _field(rng, size, size / 6) + 0.08 * _field(rng, size, 1.0), 0.0, 1.15)
    clearcut = _field(rng, size, size / 5) < rng.uniform(-2.5, -0.5)  # felled patches
    h = np.where(clearcut, h * 0.1, h)
    e = 1.0 / (1.0 + np.exp(-(rng.normal(0.3, 1.0) + 1.6 * _field(rng, size, size / 8))))
    agbm = 380.0 * h * (0.15 + 0.85 * e) + rng.normal(0, 4.0, (size, size))
    return h, e, np.maximum(agbm, 0.0).astype(np.float32)


def make_s2(rng, h, e, month):
    """uint16 [H, W, 11] (reflectance x 10000, CLP 0..255) of one month."""
    size = h.shape[0]
    cover = green_cover(h, e, month)[..., None]
    snow = 0.5 * SNOW[month]  # snow on the ground and on the branches, seen through the whole chip
    refl = (SOIL * (1 - cover) + CANOPY * cover) * (1 - snow) + SNOWY * snow
    refl = refl * rng.uniform(0.85, 1.15)  # illumination and calibration of this month
    haze = rng.uniform(0.0, 0.04) * np.clip(1 + 0.5 * _field(rng, size, size / 4), 0, None)
    refl = refl + haze[..., None] * HAZE
    refl[..., BANDS_20M] = _blur(refl[..., BANDS_20M], 1.0)  # 20 m bands resampled to the 10 m grid
    refl = refl + rng.normal(0, 0.01, refl.shape)  # noise
    clp = np.clip(rng.normal(8, 5, (size, size)), 0, 40)
    if rng.random() < 0.3:  # a cloudy month: bright bands, high cloud probability
        opacity = np.clip(_field(rng, size, size / 5) + rng.uniform(-0.5, 1.5), 0, 1)[..., None]
        refl = refl * (1 - opacity) + CLOUD * opacity
        clp = np.clip(opacity[..., 0] * 255 + rng.normal(0, 10, (size, size)), 0, 255)
    out = np.empty((size, size, 11), np.uint16)
    out[..., :10] = np.clip(np.rint(refl * 10000), 0, 65535)
    out[..., 10] = np.rint(clp)
    return out


def green_cover(h, e, month):
    """Share of the pixel covered by green canopy in ``month``: conifers all year, broadleaves in leaf."""
    return np.clip(h * (e + (1 - e) * LEAF[month]), 0, 1)


def _blur(x, sigma):
    """Gaussian blur of ``x`` [H, W, C] over H and W."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, (sigma, sigma, 0), mode="reflect")


def observed_target(rng, agbm):
    """The training target as measured: ``agbm`` shifted by up to one pixel (misregistration) with
    TARGET_NOISE multiplicative noise."""
    dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
    shifted = np.roll(agbm, (dy, dx), axis=(0, 1))
    return np.maximum(shifted * (1 + rng.normal(0, TARGET_NOISE, agbm.shape)), 0.0).astype(np.float32)


def make_s1(rng, h, e, month, offset=(0.0, 0.0)):
    """float32 [H, W, 4] backscatter in dB (VV/VH asc, VV/VH desc), -9999 where no data; ``offset``: the
    calibration offset (dB) of the ascending and descending orbit."""
    size = h.shape[0]
    cover = green_cover(h, e, month)  # volume scattering of the foliage
    wet = 1.5 * SNOW[month]
    vv = -13.0 + 5.0 * cover - wet
    vh = -21.0 + 7.5 * cover - wet
    out = np.stack([vv + offset[0], vh + offset[0], vv + 0.5 + offset[1], vh + 0.4 + offset[1]], -1)
    speckle = 10 * np.log10(rng.gamma(2.0, 0.5, out.shape))  # 2-look speckle in dB (std ~3.3 dB)
    out = (out + speckle + rng.normal(0, 0.8)).astype(np.float32)
    if rng.random() < 0.1:  # one orbit missing this month
        orbit = int(rng.integers(2))
        out[..., 2 * orbit:2 * orbit + 2] = -9999.0
    elif rng.random() < 0.1:  # a strip without data
        cols = slice(int(rng.integers(0, size // 2)), None)
        out[:, cols, :] = -9999.0
    return out


def write_tiff(path, array):
    """A TIFF as the competition's: a [H, W, C] array is one page of C samples per pixel (contiguous), a
    [H, W] array one single-sample page (tifffile would otherwise write [H, W, C] as H pages of [W, C])."""
    import tifffile

    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)


def build_biomass_dataset(out_dir, n_train=240, n_test=40, size=32, seed=0):
    """Write the synthetic BioMassters dataset into ``out_dir`` (replaced atomically, and only if this
    tool built it: demo_data.dataset_dir); return its path."""
    from foldnet.core.errors import ConfigError
    from foldnet.io.demo import dataset_dir

    if n_train < 10 or n_test < 1 or size < 8:
        raise ConfigError("need --n_train >= 10, --n_test >= 1 and --image_size >= 8")
    rng = np.random.default_rng(seed)
    features, agbm_rows = [], []
    with dataset_dir(out_dir, "biomass", ("train_features", "test_features", "train_agbm", "answers")) as tmp:
        for i in range(n_train + n_test):
            chip = chip_id(i, seed)
            split = "train" if i < n_train else "test"
            h, e, agbm = make_forest(rng, size)
            target_name = f"{chip}_agbm.tif"
            s1_offset = rng.normal(0, 1.0, 2)
            for month in range(N_MONTHS):
                for sensor, array in (("S1", make_s1(rng, h, e, month, s1_offset)),
                                      ("S2", None if rng.random() < S2_MISSING[month] else make_s2(rng, h, e, month))):
                    if array is None:
                        continue
                    name = f"{chip}_{sensor}_{month:02d}.tif"
                    write_tiff(os.path.join(tmp, f"{split}_features", name), array)
                    features.append((name, chip, sensor, split, BIOMASSTERS_MONTHS[month],
                                     target_name if split == "train" else ""))
            write_tiff(os.path.join(tmp, "train_agbm" if split == "train" else "answers", target_name),
                       observed_target(rng, agbm) if split == "train" else agbm)
            if split == "train":
                agbm_rows.append((chip, target_name))
        pd.DataFrame(features, columns=["filename", "chip_id", "satellite", "split", "month", "corresponding_agbm"]
                     ).to_csv(os.path.join(tmp, "features_metadata.csv"), index=False)
        pd.DataFrame(agbm_rows, columns=["chip_id", "filename"]).to_csv(
            os.path.join(tmp, "train_agbm_metadata.csv"), index=False)
    return out_dir


def biomass_from_args(out_dir, a):
    """``foldnet demo-data --kind biomass``: --n_train and --n_test chips of --image_size (32)."""
    return build_biomass_dataset(out_dir, n_train=a.n_train, n_test=a.n_test, size=a.image_size or 32, seed=a.seed)
