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
