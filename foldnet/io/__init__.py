"""Layer 1, datasets on disk: the TFRecord manifest and shard writer, tf.data record reads, folds and
splits, image reading, CSV tables, conversion and demo-folder helpers, run directories. Imports core
only."""
