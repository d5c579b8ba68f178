"""foldnet: K-fold ensembles of image models from TFRecords, on TPU, GPUs or CPU.

Importing the package selects Keras 2 (tf-keras) for TensorFlow: the backbones
we use (keras-cv-attention-models, efficientnet) do not build under Keras 3.
The variable must be set before TensorFlow is first imported, so every entry
point (scripts, tests, notebook) imports ``foldnet`` before ``tensorflow``.
"""
import os
import sys

__version__ = "0.1.0"

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "foldnet must be imported before tensorflow (it selects Keras 2 with "
        "TF_USE_LEGACY_KERAS=1), or set TF_USE_LEGACY_KERAS=1 in the environment."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
