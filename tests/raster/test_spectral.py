"""Spectral indices, masking, missing fill, normalisation and padding against hand-computed values."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.raster import spectral

KELP_BANDS = ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"]


def kelp_manifest(norm_stats=None):
    stats = norm_stats or [{"band": b, "min": 0.0, "max": 200.0, "q01": 0.0, "q99": 100.0, "mean": 50.0, "std": 25.0,
                            "missing_share": 0.0} for b in KELP_BANDS]
    return {"image": {"shape": [2, 2, 7], "dtype": "int16", "missing_value": -32768, "bands": KELP_BANDS},
            "band_stats": stats}


def test_band_roles_of_both_competitions():
    assert spectral.band_roles(KELP_BANDS) == {"swir": 0, "nir": 1, "red": 2, "green": 3, "blue": 4, "qa": 5, "dem": 6}
    assert spectral.band_roles(["B02", "B03", "B04", "B08"]) == {"blue": 0, "green": 1, "red": 2, "nir": 3}
    with pytest.raises(ValueError, match="NDMI needs band.*swir"):
        spectral.check_indices(["NDVI", "NDMI"], ["B02", "B03", "B04", "B08"])
    with pytest.raises(ValueError, match="unknown index 'XYZ'"):
        spectral.check_indices(["XYZ"], KELP_BANDS)
    assert len(spectral.INDICES) >= 10


def test_index_values_by_hand():
    # one pixel: SWIR 0.2, NIR 0.5, R 0.1, G 0.3, B 0.05 (already reflectance)
    pixel = np.array([[[0.2, 0.5, 0.1, 0.3, 0.05, 0, -5]]], np.float32)
    names = ["NDVI", "NDWI", "GNDVI", "MNDWI", "NDMI", "NDTI", "BNDVI", "EVI", "EVI2", "SAVI", "MSAVI", "CIG", "SR",
             "VARI", "FAI"]
    got = spectral.compute_indices(pixel, KELP_BANDS, names).numpy()[0, 0]
    want = {
        "NDVI": 0.4 / 0.6, "NDWI": -0.2 / 0.8, "GNDVI": 0.2 / 0.8, "MNDWI": 0.1 / 0.5, "NDMI": 0.3 / 0.7,
        "NDTI": -0.2 / 0.4, "BNDVI": 0.45 / 0.55,
        "EVI": 2.5 * 0.4 / (0.5 + 0.6 - 0.375 + 1.0),  # 1.0 / 1.725
        "EVI2": 2.5 * 0.4 / (0.5 + 0.24 + 1.0), "SAVI": 1.5 * 0.4 / 1.1,
        "MSAVI": (2.0 - np.sqrt(4.0 - 3.2)) / 2.0, "CIG": 0.5 / 0.3 - 1.0, "SR": 5.0,
        "VARI": 0.2 / 0.35, "FAI": 0.5 - (0.1 + 0.1 * 175.0 / 990.0),
    }
    np.testing.assert_allclose(got, [want[n] for n in names], rtol=1e-5)
    # reflectance scaling matters for EVI but not for NDVI; a zero denominator gives 0, not NaN
    dn = np.array([[[0, 0, 0, 0, 0, 0, 0]]], np.float32)
    assert spectral.compute_indices(dn, KELP_BANDS, ["NDVI", "SR"]).numpy().tolist() == [[[0.0, 0.0]]]
    scaled = spectral.compute_indices(pixel * 1e4, KELP_BANDS, ["NDVI", "EVI"], reflectance_scale=1e-4).numpy()
    np.testing.assert_allclose(scaled[0, 0], [want["NDVI"], want["EVI"]], rtol=1e-5)


def test_features_normalise_fill_and_mask():
    m = kelp_manifest()
    # 4 pixels: clear water / cloudy water (QA 1) / land (DEM 10) / SWIR missing (-32768)
    image = np.array([
        [[20, 60, 20, 40, 10, 0, -3], [20, 60, 20, 40, 10, 1, -3]],
        [[20, 60, 20, 40, 10, 0, 10], [-32768, 60, 20, 40, 150, 0, 0]],
    ], np.int16)
    f = spectral.Features(m, bands=["SWIR", "NIR", "B"], indices=["NDVI", "MNDWI"])
    assert f.names == ["SWIR", "NIR", "B", "NDVI", "MNDWI"] and f.n_channels == 5
    out = f(tf.constant(image)).numpy()
    ndvi = (40 / 80 + 1) / 2  # (60-20)/(60+20) = 0.5 -> min-max over [-1, 1] -> 0.75
    mndwi = (20 / 60 + 1) / 2  # (40-20)/(40+20)
    np.testing.assert_allclose(out[0, 0], [0.2, 0.6, 0.1, ndvi, mndwi], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.2, 0.6, 0.1, 0.0, 0.0], rtol=1e-6)  # cloud: indices masked
    np.testing.assert_allclose(out[1, 0], [0.2, 0.6, 0.1, 0.0, 0.0], rtol=1e-6)  # land: indices masked
    # missing SWIR -> channel min (0); MNDWI uses SWIR -> 0; NDVI does not; blue 150 clipped to 1
    np.testing.assert_allclose(out[1, 1], [0.0, 0.6, 1.0, ndvi, 0.0], rtol=1e-6)
    # no land/cloud masking: indices kept where QA/DEM say cloud/land
    out = spectral.Features(m, indices=["NDVI"], mask_indices=False)(image).numpy()
    np.testing.assert_allclose(out[0, 1, -1], ndvi, rtol=1e-6)
    # an invalid pixel (valid = 0) is missing in every band
    valid = np.array([[1, 0], [1, 1]], np.uint8)
    out = spectral.Features(m, indices=["NDVI"], mask_indices=False)(image, valid).numpy()
    assert out[0, 1].tolist() == [0.0] * 8


def test_zscore_fill_is_channel_min_and_fitted_index_range():
    m = kelp_manifest()
    image = np.full((2, 2, 7), 75, np.int16)
    image[0, 0, 0] = -32768
    image[..., 5] = 0
    image[..., 6] = -1
    f = spectral.Features(m, bands=["SWIR"], indices=["SR"], norm="zscore", index_ranges={"SR": (0.5, 1.5)})
    out = f(image).numpy()
    assert out[0, 0, 0] == pytest.approx((0.0 - 50.0) / 25.0)  # (min - mean) / std
    assert out[1, 1, 0] == pytest.approx(1.0)  # (75 - 50) / 25
    assert out[1, 1, 1] == pytest.approx(0.5)  # SR = 1 over the fitted range [0.5, 1.5]
    with pytest.raises(ValueError, match="unknown normalisation"):
        spectral.Features(m, norm="robust")
    with pytest.raises(ValueError, match="not in the dataset's bands"):
        spectral.Features(m, bands=["SWIR", "TIR"])


def test_features_run_in_tf_data_graph():
    m = kelp_manifest()
    f = spectral.Features(m, indices=["NDVI", "NDWI"])
    image = np.random.default_rng(0).integers(0, 100, (3, 2, 2, 7)).astype(np.int16)
    ds = tf.data.Dataset.from_tensor_slices(image).map(f)
    got = np.stack(list(ds.as_numpy_iterator()))
    np.testing.assert_allclose(got, f(image).numpy(), rtol=1e-6)
    assert got.shape == (3, 2, 2, 9) and got.min() >= 0.0 and got.max() <= 1.0


def test_pad_to_multiple_and_crop_back():
    assert spectral.padding_for(350) == (1, 1)
    assert spectral.padding_for(512) == (0, 0)
    assert spectral.padding_for(100) == (14, 14)
    assert spectral.padding_for(33) == (15, 16)
    x = tf.random.uniform([350, 350, 3])
    padded = spectral.pad_to_multiple(x)
    assert padded.shape == (352, 352, 3)
    np.testing.assert_array_equal(padded[1:-1, 1:-1].numpy(), x.numpy())
    np.testing.assert_array_equal(padded[0, 1:-1].numpy(), x[1].numpy())  # reflect
    np.testing.assert_array_equal(spectral.crop_padding(padded, 350, 350).numpy(), x.numpy())
    mask = tf.ones([2, 33, 40, 1], tf.uint8)
    pm = spectral.pad_to_multiple(mask, mode="CONSTANT", constant=0)
    assert pm.shape == (2, 64, 64, 1) and int(tf.reduce_sum(tf.cast(pm, tf.int32))) == 2 * 33 * 40
    np.testing.assert_array_equal(spectral.crop_padding(pm, 33, 40).numpy(), mask.numpy())


def test_indices_only_features():
    m = kelp_manifest()
    image = np.full((2, 2, 7), 50, np.int16)
    image[..., 1] = 70
    image[..., 5:] = 0
    out = spectral.Features(m, bands=[], indices=["NDVI"])(image).numpy()
    assert out.shape == (2, 2, 1)
    np.testing.assert_allclose(out[..., 0], (20 / 120 + 1) / 2, rtol=1e-6)


def test_kelp_winner_indices_by_hand():
    """The 17 indices of the Kelp Wanted 2nd-place solution on raw DN, worked by hand from its
    kelp/core/indices.py formulas (e = 1e-10 is below the tolerance here)."""
    # SWIR 100, NIR 400, R 100, G 200, B 50, QA 0, DEM 7
    pixel = np.array([[[100, 400, 100, 200, 50, 0, 7]]], np.float32)
    want = {
        "DEMWM": 7.0,  # max(7, 0)
        "NDVI": 300 / 500,  # (400 - 100) / (400 + 100)
        "ATSAVI": 1.22 * 277.97 / 588.162472,  # 1.22 (400 - 122 - 0.03) / (488 + 100 - 0.0366 + 0.08 * 2.4884)
        "AVI": 700.0,  # 2 * 400 - 100
        "CI": 0.5,  # (100 - 50) / 100
        "ClGreen": 1.0,  # 400 / 200 - 1
        "GBNDVI": 150 / 650,  # (400 - 250) / (400 + 250)
        "GVMI": 300.08 / 500.12,  # (400.1 - 100.02) / (400.1 + 100.02)
        "IPVI": 80.0,  # (400 / 500 / 2) * ((100 - 200) / 100 + 200 + 1) = 0.4 * 200
        "KIVU": -0.25,  # (50 - 100) / 200
        "MCARI": 1040.0,  # (300 - 0.2 * 200) * (400 / 100)
        "MVI": 4.0,  # 400 / 100
        "NormNIR": 400 / 700,  # 400 / (400 + 100 + 200)
        "PNDVI": 50 / 750,  # (400 - 350) / (400 + 350)
        "SABI": 1.2,  # 300 / (200 + 50)
        "WDRVI": -60 / 140,  # (40 - 100) / (40 + 100)
        "mCRIG": 6.0,  # (1/50 - 1/200) * 400
    }
    names = list(spectral.KELP_WINNER_INDICES)
    assert sorted(names) == sorted(want)
    got = spectral.compute_indices(pixel, KELP_BANDS, names).numpy()[0, 0]
    np.testing.assert_allclose(got, [want[n] for n in names], rtol=1e-5)
    # DEMWM is 0 on water; CIG is ClGreen (one definition)
    water = pixel.copy()
    water[..., 6] = -5
    assert spectral.compute_indices(water, KELP_BANDS, ["DEMWM"]).numpy()[0, 0, 0] == 0.0
    assert spectral.INDICES["CIG"] is spectral.INDICES["ClGreen"]
    # no guard on mCRIG: B = 0 gives inf, B = G = 0 gives inf - inf = NaN; ClGreen's e makes G = 0 huge
    dark = np.array([[[100, 400, 100, 200, 0, 0, 0], [100, 400, 100, 0, 0, 0, 0]]], np.float32)
    mcrig, clgreen = np.moveaxis(spectral.compute_indices(dark, KELP_BANDS, ["mCRIG", "ClGreen"]).numpy()[0], -1, 0)
    assert mcrig[0] == np.inf and np.isnan(mcrig[1])
    assert clgreen[1] == pytest.approx(400 / 1e-10, rel=1e-5)


def test_winner_index_scaling_with_stats_masking_and_nonfinite_fill():
    """index_stats: masked / missing / NaN / -inf -> min, +inf -> max, then min-max over q01..q99
    (+1e-10); DEMWM is never masked and its stats are 0..1; a missing DEM masks the other indices."""
    m = kelp_manifest()
    stats = {"NDVI": {"min": -0.5, "max": 0.9, "q01": -0.2, "q99": 0.8},
             "mCRIG": {"min": -3.0, "max": 50.0, "q01": 0.0, "q99": 10.0},
             "DEMWM": {"min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0}}
    # pixels: clear water / land (DEM 7) / DEM missing / B = 0 (mCRIG inf) / B = G = 0 (mCRIG NaN) / cloud
    image = np.array([[
        [100, 400, 100, 200, 50, 0, 0], [100, 400, 100, 200, 50, 0, 7], [100, 400, 100, 200, 50, 0, -32768],
        [100, 400, 100, 200, 0, 0, 0], [100, 400, 100, 0, 0, 0, 0], [100, 400, 100, 200, 50, 1, 0],
    ]], np.int16)
    f = spectral.Features(m, bands=[], indices=["DEMWM", "NDVI", "mCRIG"], index_stats=stats)
    out = f(tf.constant(image)).numpy()[0]
    ndvi = (0.6 + 0.2) / (1.0 + 1e-10)  # NDVI 0.6 over q01 -0.2 .. q99 0.8
    min_ndvi = 0.0  # min -0.5 clipped to q01 -> 0
    np.testing.assert_allclose(out[:, 0], [0, 1, 0, 0, 0, 0], atol=1e-6)  # DEMWM: clip(max(DEM, 0), 0, 1); missing -> 0
    np.testing.assert_allclose(out[:, 1], [ndvi, min_ndvi, min_ndvi, ndvi, ndvi, min_ndvi],
                               atol=1e-6)
    np.testing.assert_allclose(out[:, 2], [0.6, 0, 0, 1.0, 0.0, 0], atol=1e-6)  # 6/10; inf -> max 50 -> 1; NaN -> 0
    # without stats: the same pixels take 0 when masked and the fitted/nominal range otherwise; never NaN
    plain = spectral.Features(m, bands=[], indices=["DEMWM", "NDVI", "mCRIG", "ClGreen"])(tf.constant(image)).numpy()
    assert np.isfinite(plain).all()
    assert plain[0, 3, 2] == 1.0 and plain[0, 4, 2] == 0.0  # +inf -> top of the range, NaN -> bottom
    with pytest.raises(ValueError, match="index_stats of 'NDVI' has no finite 'q99'"):
        spectral.Features(m, indices=["NDVI"], index_stats={"NDVI": {"min": 0, "max": 1, "q01": 0}})
