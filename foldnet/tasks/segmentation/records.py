"""TFRecord example format of the segmentation task (Contract 1, task "segmentation").

One example is one tile. The bands are kept raw (no scaling, no fill of
missing values) so normalisation and spectral indices stay a training-time
choice; shapes are static per dataset (the manifest's ``image.shape``), as
TPUs need.

| key        | type  | meaning                                                         |
|------------|-------|-----------------------------------------------------------------|
| ``id``     | bytes | tile id (utf-8)                                                 |
| ``image``  | bytes | raw little-endian array [H, W, C] of ``manifest.image.dtype``   |
| ``mask``   | bytes | raw uint8 [H, W], 0/1; empty for test tiles                     |
| ``valid``  | bytes | raw uint8 [H, W], 1 where no band of the pixel is missing        |
| ``group``  | bytes | group / AOI / location (utf-8), empty if none                    |
| ``has_mask`` | int64 | 1 for training tiles, 0 for test tiles                        |

The manifest of a segmentation TFRecord directory has, besides the keys of
the classification manifest (``n_folds``, ``folds``, ``test``, ...)::

    "task": "segmentation",
    "layout": "kelp" | "cloud" | "seg",
    "image": {"shape": [H, W, C], "dtype": "int16", "missing_value": -32768,
              "bands": ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"],
              "valid_bands": ["SWIR", "NIR", "R", "G", "B"],  (a missing value in one of
                         these makes the pixel invalid in ``valid``; a missing DEM does not)
              "qa_band": "QA" | null, "dem_band": "DEM" | null},
    "band_stats": [{"band": "SWIR", "n_valid", "missing_share", "min", "max", "mean",
                    "std", "q01", "q99"}, ...]   (training tiles, pixels where that
                    band is not missing; None values for a band that is all missing)
    "quantiles": "exact" (integer bands <= 16 bit) or "sampled (...)"
    "positive_share": share of positive mask pixels over all training pixels,
    "submission_naming": "{id}_kelp.tif" (file name of one test tile's mask),
    "tiles_csv": "tiles.csv"   one row per tile: id, split (train/test), fold
                               (-1 for test), group, positive_share (empty for
                               test), missing_share, and layout extras
                               (kelp: cloud_share = QA != 0, water_share =
                               DEM <= 0, dem_missing_share)
    "folds_csv": "folds.csv"   id, fold, group of the training tiles

``group`` (records, tiles.csv, folds.csv) is the layout's group (AOI /
location column) or, when grouping by near-duplicates only, the cluster
("aoi17"); empty when tiles are not grouped. Written by foldnet.tasks.segmentation.convert.
"""

import numpy as np
import tensorflow as tf

from foldnet.io.records import bytes_feature, int_feature

TASK = "segmentation"

FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
    "valid": tf.io.FixedLenFeature([], tf.string),
    "group": tf.io.FixedLenFeature([], tf.string),
    "has_mask": tf.io.FixedLenFeature([], tf.int64),
}


def make_example(tile_id, image, mask, valid, group=""):
    """Serialized example of one tile.

    image: [H, W, C] array of the dataset's dtype; mask: [H, W] 0/1 or None
    (test tile); valid: [H, W] bool/0-1.
    """
    image = np.ascontiguousarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    feature = {
        "id": bytes_feature(str(tile_id).encode("utf-8")),
        "image": bytes_feature(image.astype(image.dtype.newbyteorder("<"), copy=False).tobytes()),
        "mask": bytes_feature(b"" if mask is None else np.asarray(mask, np.uint8).tobytes()),
        "valid": bytes_feature(np.asarray(valid, np.uint8).tobytes()),
        "group": bytes_feature(str(group or "").encode("utf-8")),
        "has_mask": int_feature(0 if mask is None else 1),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized, shape, dtype):
    """Parse one example of a dataset whose tiles are ``shape`` [H, W, C] of ``dtype``.

    Returns a dict: id (string), image [H, W, C] of ``dtype``, mask uint8
    [H, W] (zeros for test tiles), valid uint8 [H, W], group (string),
    has_mask (int64). Static shapes throughout.
    """
    height, width, channels = (int(s) for s in shape)
    ex = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.reshape(tf.io.decode_raw(ex["image"], tf.dtypes.as_dtype(dtype), little_endian=True),
                       [height, width, channels])
    mask = tf.cond(tf.strings.length(ex["mask"]) > 0,
                   lambda: tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), [height, width]),
                   lambda: tf.zeros([height, width], tf.uint8))
    valid = tf.reshape(tf.io.decode_raw(ex["valid"], tf.uint8), [height, width])
    return {"id": ex["id"], "image": image, "mask": mask, "valid": valid,
            "group": ex["group"], "has_mask": ex["has_mask"]}
