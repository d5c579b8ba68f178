"""The statistics-free normalisations (fixed, band_max, image_minmax) and the symmetric output
against values worked by hand (the 3rd-place On Cloud N solution's Dataset.py:59-67, utils.py:128-132)."""
import numpy as np
import pytest

import foldnet  # noqa: F401
from foldnet.raster import spectral
from foldnet.tasks.segmentation import settings as seg_settings

CLOUD_BANDS = ["B02", "B03", "B04", "B08"]
WINNER_BAND_MAX = {"B02": 22500, "B03": 21000, "B04": 19500, "B08": 17000}


def cloud_manifest(missing_value=None):
    # no band_stats at all: these normalisations must not need them
    return {"image": {"shape": [1, 3, 4], "dtype": "uint16", "missing_value": missing_value, "bands": CLOUD_BANDS},
            "band_stats": []}


# three pixels x four bands, raw uint16
RAW = np.array([[[0, 2100, 39000, 8500],
                 [11250, 10500, 19500, 17000],
                 [22500, 42000, 9750, 34000]]], np.uint16)


def features(**kw):
    return spectral.Features(cloud_manifest(kw.pop("missing_value", None)), jit_compile=False, **kw)


def test_fixed_divides_by_one_number_and_clips_at_one_only():
    out = features(norm="fixed", norm_max=20000)(RAW).numpy()
    want = [[[0.0, 0.105, 1.0, 0.425],          # 39000 / 20000 = 1.95 -> 1
             [0.5625, 0.525, 0.975, 0.85],
             [1.0, 1.0, 0.4875, 1.0]]]
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_band_max_divides_each_band_by_its_own_maximum():
    out = features(norm="band_max", norm_max=WINNER_BAND_MAX)(RAW).numpy()
    want = [[[0.0, 0.1, 1.0, 0.5],              # 2100 / 21000, 8500 / 17000
             [0.5, 0.5, 1.0, 1.0],
             [1.0, 1.0, 0.5, 1.0]]]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # band order follows seg_bands (3 bands as members 3-5)
    three = features(norm="band_max", norm_max=WINNER_BAND_MAX, bands=["B04", "B02"])(RAW).numpy()
    np.testing.assert_allclose(three[0, :, 0], [1.0, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(three[0, :, 1], [0.0, 0.5, 1.0], rtol=1e-6)


def test_image_minmax_is_per_tile_per_band_and_constant_bands_give_zero():
    out = features(norm="image_minmax")(RAW).numpy()
    # B02: min 0 max 22500; B03: 2100..42000 (span 39900); B04: 9750..39000 (29250); B08: 8500..34000 (25500)
    want = [[[0.0, 0.0, 1.0, 0.0],
             [0.5, 8400 / 39900, 9750 / 29250, 8500 / 25500],
             [1.0, 1.0, 0.0, 1.0]]]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # a batch: every tile its own range
    batch = np.stack([RAW, RAW // 2])
    np.testing.assert_allclose(features(norm="image_minmax")(batch).numpy()[1], want, rtol=2e-4)
    flat = np.full([1, 3, 4], 7, np.uint16)
    assert features(norm="image_minmax")(flat).numpy().tolist() == np.zeros([1, 3, 4]).tolist()


def test_symmetric_output_is_two_u_minus_one_including_missing_pixels():
    u = features(norm="band_max", norm_max=WINNER_BAND_MAX)(RAW).numpy()
    y = features(norm="band_max", norm_max=WINNER_BAND_MAX, norm_output="symmetric")(RAW).numpy()
    np.testing.assert_allclose(y, 2.0 * u - 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0, 1], [0.0, 0.0, 1.0, 1.0], atol=1e-6)  # u 0.5 -> 0, u 1 -> 1
    # a missing value (0 in the cloud layout) takes u = 0, i.e. -1: the value the winner's 0 gets
    y = features(norm="fixed", norm_max=30000, norm_output="symmetric", missing_value=0)(RAW).numpy()
    assert y[0, 0, 0] == -1.0
    assert features(norm="fixed", norm_max=1, norm_output="symmetric").value_range == (-1.0, 1.0)
    assert features(norm="fixed", norm_max=1).value_range == (0.0, 1.0)


def test_bad_norm_max_is_named():
    with pytest.raises(ValueError, match="norm: fixed needs norm_max"):
        features(norm="fixed")
    with pytest.raises(ValueError, match="no value for band 'B08'"):
        features(norm="band_max", norm_max={"B02": 1, "B03": 1, "B04": 1})
    with pytest.raises(ValueError, match="norm_max.B02 must be a positive finite number"):
        features(norm="band_max", norm_max={"B02": float("nan"), "B03": 1, "B04": 1, "B08": 1})
    problems = spectral.norm_max_problems("fixed", float("inf"), CLOUD_BANDS)
    assert problems and "positive finite" in problems[0]
    assert spectral.norm_max_problems("zscore", 3.0, CLOUD_BANDS) == [
        "norm_max is used by norm fixed or band_max only, not zscore"]


def test_settings_tuples_match_the_spectral_ones():
    assert seg_settings.NORMS == spectral.NORMS
    assert seg_settings.NORM_OUTPUTS == spectral.NORM_OUTPUTS


def test_settings_coerce_and_the_task_names_every_problem():
    from foldnet.core.errors import ConfigError
    from foldnet.engine import config
    from foldnet.tasks.segmentation.task import SegmentationTask, SegSpec

    assert config.make_config(norm="fixed", norm_max="20000")["norm_max"] == 20000.0
    assert config.make_config(norm="band_max", norm_max="{B02: 22500}")["norm_max"] == {"B02": 22500}
    with pytest.raises(ConfigError, match="bad value for norm_max"):
        config.make_config(norm_max=True)
    with pytest.raises(ConfigError, match="norm_output='half'"):
        config.make_config(norm_output="half")
    spec = SegSpec([8, 8, 4], CLOUD_BANDS, "cloud", "{id}.tif")
    task = SegmentationTask()
    problems = task.check_config(config.make_config(arch="tiny", norm="band_max", norm_max={"B02": 1},
                                                    seg_bands=["B02", "B08"]), spec)
    assert "norm_max has no value for band 'B08'" in problems
    problems = task.check_config(config.make_config(arch="tiny", norm="zscore", norm_output="symmetric"), spec)
    assert any("symmetric" in p for p in problems)
    assert task.check_config(config.make_config(arch="tiny", norm="fixed", norm_max=30000, norm_output="symmetric"),
                             spec) == []
