"""What a setting of run.py is: name, type, default, help, and its allowed values (a numeric
``Bound`` or a tuple of choices). The engine's config holds the settings every task shares; each
task declares its own in ``tasks/<task>/settings.py`` (a typed section: a new setting of one
task edits no shared table). Pure Python: no TensorFlow."""
import argparse
import collections
import dataclasses
import math
import numbers
from typing import Any, Callable

import yaml


def as_bool(s):
    """A bool from a bool or its text (true/false, yes/no, on/off, 1/0)."""
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def none_or_str(s):
    """A str, or None for None / '' / 'none' / 'null'."""
    if s is None:
        return None
    return None if str(s).strip().lower() in ("", "none", "null") else str(s)


def as_mapping(s):
    """A dict from a mapping or its YAML text ('{width: 48}'); None/'none' -> None."""
    if s is None or isinstance(s, dict):
        return s
    if none_or_str(s) is None:
        return None
    try:
        value = yaml.safe_load(str(s))
    except yaml.YAMLError as e:
        raise ValueError(f"not a YAML mapping: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping such as '{{width: 48}}', got {type(value).__name__}")
    return value


def str_or_mapping(s):
    """A term name or a mapping (or its YAML text); None/'none' -> None."""
    if s is None or isinstance(s, dict):
        return s
    if none_or_str(s) is None:
        return None
    return as_mapping(s) if str(s).strip().startswith("{") else str(s).strip()


def number_or_mapping(s):
    """A float, or a mapping (or its YAML text '{B02: 22500}'); None/'none' -> None."""
    if s is None or isinstance(s, dict):
        return s
    if isinstance(s, bool):
        raise ValueError("not a number")
    if isinstance(s, (int, float)):
        return float(s)
    if none_or_str(s) is None:
        return None
    if str(s).strip().startswith("{"):
        return as_mapping(s)
    return float(s)


class Bound(collections.namedtuple("Bound", "low high high_open low_open", defaults=(False,))):
    """Allowed range of a numeric setting: low <= x <= high (x < high if high_open, x > low if
    low_open); None = unbounded on that side. NaN and infinities are never inside a bound, nor a
    bool or a value that is not a number."""

    def contains(self, x):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            return False
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def text(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def nonfinite_paths(value, where=""):
    """Where in a setting's value (a number, or lists and mappings of them) a float is NaN or
    infinite: a list of paths such as ``'[2]'`` or ``'.focal'`` ('' for the value itself)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where or "value"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nonfinite_paths(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in nonfinite_paths(v, f"{where}[{i}]")]
    return []


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: a run.py flag and a key of the YAML recipes. ``type`` is int, float, str, list, dict
    or a coercing function (as_bool, none_or_str, str_or_mapping)."""

    name: str
    type: Callable[[Any], Any] | type
    default: Any
    help: str
    bound: Bound | None = None
    choices: tuple[str, ...] | None = None
