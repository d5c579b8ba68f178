"""TFRecord example format of the temporal regression task (task "temporal_regression").

One example is one chip: T monthly images of C bands and (training chips) one
target map. Values are kept raw (no scaling) so normalisation stays a
training-time choice; shapes are static per dataset (the manifest's
``n_months``, ``shape``, ``bands``), as TPUs need.

| key          | type  | meaning                                                          |
|--------------|-------|------------------------------------------------------------------|
| ``id``       | bytes | chip id (utf-8)                                                  |
| ``image``    | bytes | raw little-endian float32 [T, H, W, C] (0 where not valid); records without storage groups |
| ``image_<G>`` | bytes | storage group G's bands [T, H, W, C_G] raw little-endian in G's dtype (0 where not valid) |
| ``valid``    | bytes | np.packbits of the bool [T, H, W, C] no-data mask: 1 = value present |
| ``months``   | bytes | raw uint8 [T]: 1 where the month has any data (file present)     |
| ``sensor_months`` | bytes | raw uint8 [T, G]: 1 where group G has usable data that month (absent in old records) |
| ``target``   | bytes | raw little-endian float32 [H, W], -1 where unknown; empty for test |
| ``has_target`` | int64 | 1 for training chips, 0 for test chips                         |

The valid mask is bit-packed (1 bit per value, 1/32 of the image) and
unpacked with core bitwise ops in ``parse_example``.

Storage groups (manifest ``groups``: ``[{"name", "bands", "dtype"}]``, in channel order) keep each
sensor's bands in their own dtype: BioMassters S1 float32 (dB, as in its files) and S2 uint16 (its
files' dtype: exact), 2 bytes instead of 4 for 11 of the 15 bands. A manifest without ``groups``
(records written before them) has the single float32 ``image`` and no ``sensor_months``: both
are still read (``sensor_months`` then repeats ``months`` for every group).

The manifest of a temporal TFRecord directory has, besides the common keys
(``format_version``, ``n_folds``, ``n_examples``, ``folds``, ``test``,
``folds_csv``, ``fingerprint``, ``flags``)::

    "task": "temporal_regression",
    "layout": "biomassters" | "temporal",
    "n_months": T, "shape": [H, W], "bands": [C names, channel order],
    "month_names": [T names] (BioMassters: September .. August),
    "band_stats": {band: {min, max, mean, std, q01, q99, missing, n_valid}}
                  (training chips, values present; None values for an all-missing band),
    "norm": {band: [lo, hi]}  default min-max constants (BioMassters: the 1st place's;
                              generic: q01 / q99),
    "target": {"name": "agbm", "units": "Mg/ha", "stats": {min, max, mean, std, q99, n_valid, above_400}},
    "submission_naming": "biomassters" | "generic",
    "groups": [{"name": "S1", "bands": [...], "dtype": "float32"}, ...]  storage groups (absent in old records),
    "tiles_csv": "chips.csv"  id, split, fold, group, n_months_present, months_<G> (per group),
                 blank_<G> (months whose file was there but blank: all zero / all cloud),
                 missing_share, target_mean

Written by foldnet.tasks.temporal.convert; read by foldnet.tasks.temporal.data.
"""

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from foldnet.core import fileio
from foldnet.core.errors import ConfigError, DataError
from foldnet.io.records import bytes_feature, int_feature

TASK = "temporal_regression"
NO_TARGET = -1.0

FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "valid": tf.io.FixedLenFeature([], tf.string),
    "months": tf.io.FixedLenFeature([], tf.string),
    "sensor_months": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "target": tf.io.FixedLenFeature([], tf.string),
    "has_target": tf.io.FixedLenFeature([], tf.int64),
}
# Storage dtypes of a group, little-endian.
STORAGE_DTYPES = {"float32": "<f4", "uint16": "<u2", "int16": "<i2"}
_TF_DTYPES = {"float32": tf.float32, "uint16": tf.uint16, "int16": tf.int16}


def check_groups(groups, n_channels):
    """``groups`` as a list of (name, n_bands, dtype); ValueError unless they cover ``n_channels``."""
    out = [(str(g[0]), int(g[1]), str(g[2])) for g in groups]
    bad = [g for g in out if g[2] not in STORAGE_DTYPES or g[1] < 1]
    if bad or sum(g[1] for g in out) != n_channels:
        raise ValueError(f"storage groups {out} must cover the {n_channels} channels with dtypes in "
                         f"{sorted(STORAGE_DTYPES)}")
    return out


def _group_bytes(name, values, dtype):
    if dtype != "float32":
        info = np.iinfo(np.dtype(STORAGE_DTYPES[dtype]))
        if not (np.all(values == np.rint(values)) and values.min(initial=0) >= info.min
                and values.max(initial=0) <= info.max):
            raise ValueError(f"group {name}: values are not integers in {info.min}..{info.max}; "
                             f"they cannot be stored as {dtype}")
    return values.astype(STORAGE_DTYPES[dtype]).tobytes()


def make_example(chip_id, image, valid, months, target=None, groups=None, sensor_months=None):
    """Serialized example of one chip.

    image: [T, H, W, C] (any real dtype; values where ``valid`` is False
    stored as 0); valid: bool [T, H, W, C]; months: [T] 0/1; target: [H, W]
    (non-finite or negative = unknown, stored as -1) or None. groups: None
    (one float32 ``image``) or ``[(name, n_bands, dtype)]`` in channel order
    (``image_<name>`` each; an integer dtype takes only integer values in
    its range: ValueError otherwise); sensor_months: [T, len(groups)] 0/1 or None.
    """
    image = np.asarray(image)
    valid = np.asarray(valid, bool)
    if image.ndim != 4 or valid.shape != image.shape:
        raise ValueError(f"image must be [T, H, W, C] with a valid mask of the same shape, got {image.shape} "
                         f"and {valid.shape}")
    months = np.asarray(months, np.uint8).reshape(-1)
    if months.shape[0] != image.shape[0]:
        raise ValueError(f"months has {months.shape[0]} entries for {image.shape[0]} months")
    values = np.where(valid, image.astype(np.float32), np.float32(0))
    images = {}
    if groups is None:
        images["image"] = values.astype("<f4").tobytes()
    else:
        start = 0
        for name, n, dtype in check_groups(groups, image.shape[-1]):
            images[f"image_{name}"] = _group_bytes(name, values[..., start:start + n], dtype)
            start += n
    sensors = b""
    if sensor_months is not None:
        sm = np.asarray(sensor_months, np.uint8)
        if sm.shape != (image.shape[0], len(groups or [None])):
            raise ValueError(f"sensor_months of shape {sm.shape}, expected {(image.shape[0], len(groups or [None]))}")
        sensors = sm.tobytes()
    if target is None:
        target_bytes = b""
    else:
        t = np.asarray(target, np.float32)
        if t.shape != image.shape[1:3]:
            raise ValueError(f"target shape {t.shape} != image shape {image.shape[1:3]}")
        target_bytes = np.where(np.isfinite(t) & (t >= 0), t, np.float32(NO_TARGET)).astype("<f4").tobytes()
    feature = {
        "id": bytes_feature(str(chip_id).encode("utf-8")),
        **{k: bytes_feature(v) for k, v in images.items()},
        "valid": bytes_feature(np.packbits(valid.reshape(-1)).tobytes()),
        "months": bytes_feature(months.tobytes()),
        "sensor_months": bytes_feature(sensors),
        "target": bytes_feature(target_bytes),
        "has_target": int_feature(0 if target is None else 1),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def unpack_bits(packed, n):
    """bool [n] from the bytes of ``np.packbits`` (big bit order; a string or its uint8 values), core TF ops."""
    bytes_ = tf.io.decode_raw(packed, tf.uint8) if packed.dtype == tf.string else packed
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bytes_[:, tf.newaxis], shifts), 1)
    return tf.cast(tf.reshape(bits, [-1])[:n], tf.bool)


def parse_example(serialized, n_months, shape, n_channels, with_image=True, packed=False, groups=None):
    """Parse one example of a dataset of ``n_months`` x ``shape`` [H, W] x ``n_channels``.

    Returns a dict: id (string), image float32 [T, H, W, C], valid bool
    [T, H, W, C], months float32 [T], sensor_months float32 [T, G] (G storage
    groups, 1 without groups; old records: ``months`` repeated), target
    float32 [H, W] (-1 for test chips and unknown pixels), has_target int64.
    Static shapes throughout. ``groups``: the manifest's storage groups
    (``TemporalSpec.groups``), None for a single float32 image.
    ``with_image=False`` leaves out image and valid (ids and targets only); ``packed=True`` returns
    valid as the packed uint8 bytes (``unpack_bits`` later, e.g. inside an XLA-compiled function).
    """
    t, (h, w), c = int(n_months), (int(s) for s in shape), int(n_channels)
    groups = None if groups is None else check_groups(groups, c)
    features = dict(FEATURES)
    for name, _, _ in groups or []:
        features[f"image_{name}"] = tf.io.FixedLenFeature([], tf.string)
    ex = tf.io.parse_single_example(serialized, features)
    months = tf.cast(tf.reshape(tf.io.decode_raw(ex["months"], tf.uint8), [t]), tf.float32)
    n_groups = len(groups or [None])
    out = {"id": ex["id"], "has_target": ex["has_target"], "months": months,
           "sensor_months": tf.cond(
               tf.strings.length(ex["sensor_months"]) > 0,
               lambda: tf.cast(tf.reshape(tf.io.decode_raw(ex["sensor_months"], tf.uint8), [t, n_groups]),
                               tf.float32),
               lambda: tf.tile(months[:, tf.newaxis], [1, n_groups]))}
    out["target"] = tf.cond(tf.strings.length(ex["target"]) > 0,
                            lambda: tf.reshape(tf.io.decode_raw(ex["target"], tf.float32, little_endian=True), [h, w]),
                            lambda: tf.fill([h, w], tf.constant(NO_TARGET, tf.float32)))
    if with_image and groups is None:
        out["image"] = tf.reshape(tf.io.decode_raw(ex["image"], tf.float32, little_endian=True), [t, h, w, c])
    elif with_image:
        out["image"] = tf.concat([tf.cast(tf.reshape(tf.io.decode_raw(ex[f"image_{name}"], _TF_DTYPES[dtype],
                                                                      little_endian=True), [t, h, w, n]), tf.float32)
                                  for name, n, dtype in groups], axis=-1)
    if with_image:
        out["valid"] = (tf.io.decode_raw(ex["valid"], tf.uint8) if packed
                        else tf.reshape(unpack_bits(ex["valid"], t * h * w * c), [t, h, w, c]))
    return out


@dataclass
class TemporalSpec:
    """What a temporal dataset's inputs and outputs are (the task spec): months, chip shape, bands,
    default normalisation, target name/units and submission naming. Built from a manifest."""

    n_months: int
    shape: tuple  # (H, W)
    bands: list
    norm: dict  # {band: [lo, hi]}
    target: dict = field(default_factory=lambda: {"name": "target", "units": ""})
    naming: str = "generic"
    month_names: list = field(default_factory=list)
    # storage groups [(name, n_bands, dtype)] or None (one float32 image): how the records hold the bands,
    # not what they mean, so outside to_dict / the fingerprint (a run dir reads either format)
    groups: list = None

    @classmethod
    def from_manifest(cls, manifest):
        if manifest.get("task") != TASK:
            raise DataError(f"{manifest.get('dir')}: task {manifest.get('task')!r} is not {TASK!r} "
                            "(convert a temporal layout with create_tfrecords.py)")
        return cls(int(manifest["n_months"]), tuple(int(s) for s in manifest["shape"]), list(manifest["bands"]),
                   {b: [float(v) for v in manifest["norm"][b]] for b in manifest["bands"]},
                   dict(manifest.get("target") or {}), manifest.get("submission_naming", "generic"),
                   list(manifest.get("month_names") or []),
                   [(g["name"], len(g["bands"]), g["dtype"]) for g in manifest["groups"]]
                   if manifest.get("groups") else None)

    @property
    def n_channels(self):
        return len(self.bands)

    @property
    def group_names(self):
        """Names of the storage groups (sensors) whose month presence the records hold."""
        return [g[0] for g in self.groups] if self.groups else []

    def to_dict(self):
        target = {k: v for k, v in self.target.items() if k in ("name", "units")}
        return {"task": TASK, "n_months": self.n_months, "shape": list(self.shape), "bands": list(self.bands),
                "norm": {b: list(self.norm[b]) for b in self.bands}, "target": target,
                "submission_naming": self.naming, "month_names": list(self.month_names)}

    def fingerprint(self):
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path):
        fileio.atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        return cls.from_manifest(fileio.read_json(path))

    def __eq__(self, other):
        return isinstance(other, TemporalSpec) and self.to_dict() == other.to_dict()

    def norm_arrays(self, norm=None):
        """(lo, hi) float32 [C] from ``norm`` ({band: [lo, hi]}, overriding some bands) or the spec's."""
        merged = dict(self.norm)
        unknown = sorted(set(norm or {}) - set(self.bands))
        if unknown:
            raise ConfigError(f"normalisation constants for unknown band(s) {unknown}; bands: {self.bands}")
        merged.update({b: [float(v) for v in lohi] for b, lohi in (norm or {}).items()})
        bad = [b for b in self.bands if len(merged[b]) != 2 or not merged[b][1] > merged[b][0]]
        if bad:
            raise ConfigError("normalisation constants need lo < hi: " + ", ".join(f"{b}: {merged[b]}" for b in bad))
        return (np.array([merged[b][0] for b in self.bands], np.float32),
                np.array([merged[b][1] for b in self.bands], np.float32))
