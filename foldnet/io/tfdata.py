"""tf.data building blocks shared by every task's pipelines: interleaved TFRecord reads and
the distribution options of a dataset."""
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def read_records(files, deterministic):
    files = list(files)
    if not files:
        raise ValueError("no TFRecord files to read")
    ds = tf.data.Dataset.from_tensor_slices(files)
    return ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def with_options(ds, shard_by_data):
    opts = tf.data.Options()
    if shard_by_data:
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)
