
"""tf.data pipelines over the fold shards.

Training: parallel interleaved reads (order non-deterministic) -> parse ->
cache (encoded bytes or decoded pixels, whichever fits) -> shuffle -> repeat
-> decode + augment -> batch -> prefetch. Keras distributes the batches over
the replicas of the strategy (auto-sharding by file, or by data when there are
fewer files than workers).

Evaluation: deterministic order; every image is decoded once and expanded to
its TTA views, so all TTA variants are predicted in one pass.
"""
import tensorflow as tf

from foldnet.io import records
from foldnet.io.tfdata import AUTOTUNE, plain, read_records, with_options
from foldnet.tasks.classification import augment

# Rough in-memory size of one cached encoded example beyond its image bytes.
_EXAMPLE_OVERHEAD = 64


def decode_source(image_bytes, dim):
    """Encoded JPEG/PNG bytes -> uint8 [H, W, 3], decoded no larger than needed for ``dim``.

    A JPEG at least twice ``dim`` on its shorter side is decoded at 1/2, 1/4
    or 1/8 scale by the JPEG decoder itself (DCT scaling: several times
    cheaper than a full decode plus an antialiased resize, and itself a
    low-pass filter), never below ``dim``. Other formats decode at full size.
    """
    image = tf.cond(tf.io.is_jpeg(image_bytes),
                    lambda: _decode_jpeg_scaled(image_bytes, dim),
                    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def decode_image(image_bytes, dim):
    """Encoded JPEG/PNG bytes -> float32 [dim, dim, 3] in [0, 1].

    ``decode_source`` then a bilinear resize, antialiased only when it still
    shrinks a side more than 2x (extreme aspect ratios, large PNGs).
    """
    return resize_image(decode_source(image_bytes, dim), dim)


def _decode_jpeg_scaled(image_bytes, dim):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    shorter = tf.minimum(shape[0], shape[1])

    def at(ratio):
        return lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=ratio)

    return tf.case([(shorter >= 8 * dim, at(8)), (shorter >= 4 * dim, at(4)), (shorter >= 2 * dim, at(2))],
                   default=at(1), exclusive=False)


def resize_image(image, dim):
    """uint8 or float [H, W, 3] in 0..255 -> float32 [dim, dim, 3] in [0, 1] (``augment.resize``).

    Bilinear weights are non-negative and sum to 1, so no clipping is needed.
    """
    return augment.resize(image, dim) * (1.0 / 255.0)


def _decode_uint8(image_bytes, dim):
    return tf.cast(tf.round(decode_image(image_bytes, dim) * 255.0), tf.uint8)


def augment_image(source, dim, aug_number=0, aug_probability=0.0, aug_crop_scale=0.0, aug_rotate=0.0,
                  aug_photometric=0.0):
    """A decoded image (uint8 [H, W, 3], ``decode_source`` or the decoded cache)
    -> float32 [dim, dim, 3] in [0, 1], augmented for training.

    The geometric part (random shift/scale/rotation, then a transform of
    ``augment.TRANSFORMS``) is one matrix composed with the resize and one
    resampling from ``source`` (``augment.geometric``: only the images that
    need it are resampled, 45-degree rotations as ``augment.diagonal``);
    photometric jitter after. All zero: the plain resize of ``decode_image``.
    """
    image = augment.geometric(source, dim, aug_number, aug_probability, aug_crop_scale, aug_rotate)
    image = image * (1.0 / 255.0)
    if aug_photometric > 0:
        image = augment.random_photometric(image, aug_photometric)
    return image


def parse_record(serialized):
    ex = records.parse_example(serialized)
    return ex["id"], ex["image"], ex["label"]


def choose_cache(mode, n_examples, dim, encoded_mb, budget_mb):
    """Resolve cache=auto to decoded / encoded / none from estimated sizes in MB."""
    if mode != "auto":
        return mode
    decoded_mb = n_examples * dim * dim * 3 / 2**20
    if decoded_mb <= budget_mb:
        return "decoded"
    if encoded_mb + n_examples * _EXAMPLE_OVERHEAD / 2**20 <= budget_mb:
        return "encoded"
    return "none"


def train_dataset(files, n_classes, dim, batch_size, aug_number=0, aug_probability=0.0,
                  cache="none", shuffle_buffer=2048, drop_remainder=False, seed=None,
                  label_smoothing_onehot=True, n_workers=1, aug_crop_scale=0.0, aug_rotate=0.0,
                  aug_photometric=0.0):
    """Endless shuffled, augmented batches of (images, one-hot labels).

    Augmentation per image (``augment_image``): random shift/scale/rotation
    (``aug_crop_scale``, ``aug_rotate``) and a flip/rotation drawn from
    ``augment.TRANSFORMS`` (``aug_number``, ``aug_probability``) as one
    resampling from the decoded image, then photometric jitter
    (``aug_photometric``). All zero: no augmentation.
    """
    ds = read_records(files, deterministic=False).map(plain(parse_record), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda _id, img, label: (img, label), num_parallel_calls=AUTOTUNE)
    if cache == "decoded":
        ds = ds.map(plain(lambda img, label: (_decode_uint8(img, dim), label)), num_parallel_calls=AUTOTUNE).cache()
        ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
        source = tf.identity
    else:
        if cache == "encoded":
            ds = ds.cache()
        ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()

        def source(img):
            return decode_source(img, dim)

    def make(img, label):
        image = augment_image(source(img), dim, aug_number, aug_probability, aug_crop_scale, aug_rotate,
                              aug_photometric)
        return image, tf.one_hot(label, n_classes)

    ds = ds.map(plain(make), num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
    return with_options(ds, shard_by_data=len(list(files)) < n_workers)


def eval_dataset(files, n_classes, dim, batch_size, drop_remainder=False, cache=True):
    """Batches of (images, one-hot labels) in file order, for validation during fit.

    Several workers (MultiWorkerMirroredStrategy) split it by batches, not by
    files: a validation fold is often a single shard.
    """
    ds = read_records(files, deterministic=True).map(plain(parse_record), num_parallel_calls=AUTOTUNE)
    ds = ds.map(plain(lambda _id, img, label: (decode_image(img, dim), tf.one_hot(tf.maximum(label, 0), n_classes))),
                num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if cache:
        ds = ds.cache()
    return with_options(ds.prefetch(AUTOTUNE), shard_by_data=True)


def tta_views(image_bytes, dim, tta_number):
    """Encoded bytes -> float32 [tta_number + 1, dim, dim, 3] in [0, 1], identity first
    (``augment.tta_views`` of the decoded source; the identity view is ``decode_image``)."""
    return augment.tta_views(decode_source(image_bytes, dim), tta_number, dim) * (1.0 / 255.0)


def tta_dataset(files, dim, batch_size, tta_number):
    """Batches of images [batch * (tta_number + 1), dim, dim, 3] in file order.

    Image i of a batch occupies rows i * T .. i * T + T - 1 (T = tta_number + 1),
    identity first, so predictions reshape to [n, T, n_classes].
    """
    n_views = tta_number + 1
    ds = read_records(files, deterministic=True).map(plain(parse_record), num_parallel_calls=AUTOTUNE)
    ds = ds.map(plain(lambda _id, img, label: tta_views(img, dim, tta_number)), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda v: tf.reshape(v, [-1, dim, dim, 3]))
    return ds.prefetch(AUTOTUNE), n_views


def read_ids_labels(files):
    """(ids as str list, labels int64 numpy) of the records, in file order. No image decoding."""
    import numpy as np

    ids, labels = [], []
    ds = read_records(files, deterministic=True).map(plain(lambda s: parse_record(s)[0::2]), num_parallel_calls=AUTOTUNE)
    for id_batch, label_batch in ds.batch(4096).as_numpy_iterator():
        ids.extend(x.decode("utf-8") for x in id_batch)
        labels.append(label_batch)
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros([0], np.int64)
    return ids, labels
