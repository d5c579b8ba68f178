"""Segmentation record format: raw bands, mask and valid mask round-trip exactly."""
import numpy as np
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.tasks.segmentation import records as seg_records


def test_round_trip_train_and_test_tiles():
    rng = np.random.default_rng(0)
    image = rng.integers(-32768, 32767, size=(5, 4, 7)).astype(np.int16)
    mask = rng.integers(0, 2, size=(5, 4))
    valid = rng.integers(0, 2, size=(5, 4)).astype(bool)
    ex = seg_records.parse_example(tf.constant(seg_records.make_example("t1", image, mask, valid, "aoi3")),
                                   (5, 4, 7), "int16")
    assert ex["id"].numpy() == b"t1" and ex["group"].numpy() == b"aoi3" and int(ex["has_mask"]) == 1
    np.testing.assert_array_equal(ex["image"].numpy(), image)
    np.testing.assert_array_equal(ex["mask"].numpy(), mask)
    np.testing.assert_array_equal(ex["valid"].numpy(), valid.astype(np.uint8))
    # A big-endian array is stored little-endian; a test tile has no mask.
    ex = seg_records.parse_example(tf.constant(seg_records.make_example("t2", image.astype(">i2"), None, valid)),
                                   (5, 4, 7), "int16")
    np.testing.assert_array_equal(ex["image"].numpy(), image)
    assert int(ex["has_mask"]) == 0 and ex["mask"].numpy().sum() == 0
    assert ex["mask"].shape == (5, 4) and ex["image"].shape == (5, 4, 7)
