"""Every setting of run.py (the shared table and every task's) is validated as a class: each int and
float setting has a bound, no bound holds NaN or an infinity, and a sweep of every entry with NaN,
inf, negative, zero, huge and wrongly typed values ends with exit 2 and a message, never a
traceback."""
import contextlib
import io
import math
import traceback

import pytest

import foldnet  # noqa: F401
from foldnet.core.errors import ConfigError
from foldnet.core.settings import Bound
from foldnet.engine import config, runner

NUMERIC = [name for name, typ, _, _ in config.FLAGS if typ in (int, float)]
BAD_NUMBERS = ["nan", "inf", "-inf", "1e30", "1" + "0" * 30, "abc", "[1, 2]", "{a: .nan}"]
SWEEP = ["nan", "inf", "-inf", "-1", "0", "1e30", "1" + "0" * 30, "abc", "[1, 2]", "{a: .nan}", "[[x]]"]


def test_every_numeric_setting_has_a_bound_and_no_bound_holds_nan_or_inf():
    assert set(NUMERIC) <= set(config.BOUNDS), sorted(set(NUMERIC) - set(config.BOUNDS))
    for name, bound in config.BOUNDS.items():
        for x in (math.nan, math.inf, -math.inf, 1e30, 10**30, True, "1", None):
            assert not bound.contains(x), (name, x)
    assert Bound(0.0, 1.0, True, True).contains(0.5)
    assert not Bound(0.0, 1.0, True, True).contains(0.0) and not Bound(0.0, 1.0, True, True).contains(1.0)


@pytest.mark.parametrize("name, value", [
    ("lr", math.nan), ("dropout", math.nan), ("label_smoothing", math.nan), ("weight_decay", math.nan),
    ("aug_probability", math.nan), ("target_cap", math.nan), ("month_dropout", math.nan), ("lr", math.inf),
    ("lr_factor", 5.0), ("lr_factor", 0.0), ("lr_patience", -1), ("early_stop_patience", -3), ("min_lr", -1.0),
    ("min_delta", -5.0), ("lr", 0.0), ("seed", -1), ("dim", 10**30), ("verbose", 7),
    ("loss", {"dice": math.nan}), ("loss", {"jaccard": 1.0, "focal": {"weight": math.inf}}),
    ("arch_options", {"decoder_filters": [64, math.nan]}), ("sampler", {"has_positive": math.inf}),
    ("band_norm", {"VV": [-25, math.nan]}), ("indices", [["NDVI"]]), ("seg_bands", [{"a": 1}]),
])
def test_the_issue_values_are_refused(name, value):
    """Issue 21 item 3: these passed validation before (NaN passes ``nan < low``; no bound on
    lr_factor, lr_patience, early_stop_patience, min_lr, min_delta; nested lists in list settings)."""
    with pytest.raises(ConfigError) as e:
        config.make_config(**{name: value})
    assert name in str(e.value)


def test_nan_in_a_yaml_recipe_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("lr: .nan\nloss: {dice: .inf}\n")
    with pytest.raises(ConfigError) as e:
        config.parse_config(["--config", str(path)])
    assert "lr must be in (0, 10], got nan" in str(e.value) and "loss: NaN or infinite" in str(e.value)


def test_sweep_every_setting_exits_2_without_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--data_dir", str(tmp_path / "no_data"), "--tfrec_dir", str(tmp_path / "no_tfrec"),
            "--run_dir", str(tmp_path / "r"), "--job", "train", "--arch", "tiny_cnn", "--quiet", "true"]
    failures, named = [], []
    for name in config.FLAG_NAMES:
        for value in SWEEP:
            argv = base + [f"--{name}={value}"]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = runner.main(argv)
                except SystemExit as e:  # argparse's usage errors
                    rc = e.code
                except BaseException:
                    rc = "raised"
                    err.write(traceback.format_exc())
            text = err.getvalue()
            if rc != 2 or "Traceback" in text or not text.strip():
                failures.append(f"--{name}={value}: rc {rc}\n{text[-800:]}")
            if name in NUMERIC and value in BAD_NUMBERS:
                named.append((name, value, name in text and "no_tfrec" not in text))
    assert not failures, "\n".join(failures[:20])
    not_named = [(n, v) for n, v, ok in named if not ok]
    # a bad number is refused as such, naming its setting, before the missing records are noticed
    assert not not_named, not_named
    assert len(named) == len(NUMERIC) * len(BAD_NUMBERS) and len(NUMERIC) >= 25
