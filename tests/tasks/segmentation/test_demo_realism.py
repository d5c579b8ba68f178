"""The harder stand-ins of issue 20: sensors with their own gain/offset, haze, mixed edge pixels,
noisy training labels; the hidden answers stay the true masks."""
import os

import numpy as np
import pandas as pd
import tifffile

from foldnet.tasks.segmentation import demo_data as seg_demo_data


def test_noisy_labels_touch_only_the_edges_and_the_allowed_area():
    rng = np.random.default_rng(0)
    true = np.zeros((32, 32), np.uint8)
    true[8:20, 6:24] = 1
    allowed = np.ones((32, 32), bool)
    allowed[:, 22:] = False
    noisy = seg_demo_data.noisy_labels(rng, true, allowed=allowed)
    assert noisy.dtype == np.uint8 and set(np.unique(noisy)) <= {0, 1}
    assert not noisy[~allowed].any()
    assert (noisy != true).any()
    # the changes are within two pixels of the true edge (flips, one-pixel grow/shrink)
    from scipy.ndimage import distance_transform_edt
    dist = np.minimum(distance_transform_edt(true), distance_transform_edt(1 - true))
    assert dist[noisy != true].max() <= 2
    assert seg_demo_data.noisy_labels(rng, np.zeros((8, 8), np.uint8)).sum() == 0


def test_kelp_sensors_and_blur(tmp_path):
    out = str(tmp_path / "kelp")
    seg_demo_data.build_kelp_dataset(out, n_places=6, acquisitions=4, size=32, seed=1)
    places = pd.read_csv(os.path.join(out, "places.csv"))
    assert list(places.columns) == ["tile_id", "place", "split", "sensor"]
    assert set(places["sensor"]) <= set(seg_demo_data.SENSORS) and places["sensor"].nunique() >= 2
    # the PSF mixes pixels: a step in reflectance becomes a ramp over about a pixel
    step = np.zeros((9, 9, 5))
    step[:, 5:] = 1.0
    blurred = seg_demo_data._blur_bands(step)
    assert 0.05 < blurred[4, 4, 0] < 0.5 < blurred[4, 5, 0] < 0.95


def test_cloud_labels_noisy_in_training_only(tmp_path):
    rng = np.random.default_rng(2)
    surface = seg_demo_data.make_location_surface(rng, 32)
    a = seg_demo_data.make_cloud_chip(np.random.default_rng(5), surface, 32, sensor=0)[0].astype(float)
    b = seg_demo_data.make_cloud_chip(np.random.default_rng(5), surface, 32, sensor=1)[0].astype(float)
    assert abs(np.median(a[0] - b[0])) > 50  # another sensor: another blue gain / offset (DN)
    out = str(tmp_path / "cloud")
    seg_demo_data.build_cloud_dataset(out, n_locations=4, chips_per_location=2, size=32, seed=1)
    answers = [tifffile.imread(os.path.join(out, "answers", f)) for f in os.listdir(os.path.join(out, "answers"))]
    assert all(a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1} for a in answers)
