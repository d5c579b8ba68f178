"""NaN is never a result: a diverged training loss stops the run (exit 2 via ConfigError), and
NaN outputs are refused before a task encodes them (a NaN probability cast to uint8 reads as 0)."""
import math
import os

import numpy as np
import pytest

import foldnet  # noqa: F401
from foldnet.core.cli import run_main
from foldnet.core.errors import ConfigError, DataError
from foldnet.engine import predict, train


def test_a_nan_loss_stops_training_before_the_epoch_is_kept(tmp_path):
    cb = train.FoldCallback(str(tmp_path), None, None, "val_dice", "max", "plateau", 4, 0.5, 1e-8, 8, 1e-4)
    # val_dice of NaN maps is a finite 0.0 (NaN >= 0.5 is False): only the loss shows the divergence
    with pytest.raises(ConfigError, match=r"training diverged at epoch 3: loss = nan"):
        cb.on_epoch_end(2, {"loss": math.nan, "val_loss": 0.3, "val_dice": 0.0})
    assert os.listdir(tmp_path) == []  # no best checkpoint, no history, no state
    assert issubclass(train.TrainingDiverged, ConfigError)

    def go():
        cb.on_epoch_end(0, {"loss": 0.2, "val_loss": math.inf, "val_dice": 0.0})

    assert run_main(go) == 2


class _MapTask:
    """The two hooks predict_split needs, with segmentation's uint8 encoding."""

    row_value_key = None

    def __init__(self, outputs):
        self.outputs = outputs

    def read_ids_targets(self, files):
        return np.array(["a", "b", "c"]), np.zeros((3, 2, 2), np.uint8)

    def predict_files(self, model, files, cfg, verbose):
        return self.outputs

    def encode_outputs(self, outputs):
        return np.rint(np.clip(outputs, 0, 1) * 255).astype(np.uint8)

    def encode_targets(self, targets):
        return targets

    def tta_names(self, n):
        return ["identity"]


def test_nan_outputs_are_refused_before_encoding(tmp_path):
    outputs = np.full((1, 3, 2, 2), 0.9, np.float32)
    outputs[0, 1, 0, 1] = np.nan
    out = str(tmp_path / "oof.npz")
    with pytest.raises(DataError) as e:
        predict.predict_split(None, [], out, {"tta_number": 0}, "s", "w", 3, task=_MapTask(outputs))
    assert "1 of 3 rows" in str(e.value) and "b" in str(e.value)
    assert not os.path.exists(out)
    outputs[0, 1, 0, 1] = 0.2
    predict.predict_split(None, [], out, {"tta_number": 0}, "s", "w", 3, task=_MapTask(outputs))
    with np.load(out) as z:
        assert z["outputs"].dtype == np.uint8 and z["outputs"][0, 1, 0, 1] == 51


def test_huge_member_weights_do_not_overflow_to_nan():
    """Issue 21 item 7: WEIGHTS=1e308,1e308 summed to inf (a traceback)."""
    from foldnet.ensemble.averaging import normalise_weights

    np.testing.assert_allclose(normalise_weights([1e308, 1e308], 2), [0.5, 0.5])
    np.testing.assert_allclose(normalise_weights([1e308, 0.0, 3e307], 3), [1 / 1.3, 0.0, 0.3 / 1.3])
