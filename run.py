#!/usr/bin/env python
"""Train / predict / score one ensemble member: python run.py --config models/NAME.yaml [--flag value ...]"""
import sys

import foldnet  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from foldnet.engine.runner import main

if __name__ == "__main__":
    sys.exit(main())
