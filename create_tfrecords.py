"""Convert a dataset into sharded TFRecords + folds + label map + manifest.

    python create_tfrecords.py --data_dir DIR [--out_dir DIR/tfrec] [--n_folds 5] ...

See ``python create_tfrecords.py --help`` and data/README.md.
"""
import sys

import foldnet  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)

if __name__ == "__main__":  # spawned image workers re-import this file: keep their imports light
    from foldnet.commands.convert import main

    sys.exit(main())
