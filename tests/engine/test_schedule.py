"""Cosine learning-rate schedule with linear warm-up, against hand-computed values."""
import math

import pytest

import foldnet  # noqa: F401
from foldnet.engine.train import CosineWarmup


def test_cosine_warmup_values():
    s = CosineWarmup(peak=1.0, total_steps=110, warmup_steps=10, floor=0.0)
    assert float(s(0)) == pytest.approx(0.1)   # (0 + 1) / 10
    assert float(s(9)) == pytest.approx(1.0)   # end of warm-up
    assert float(s(10)) == pytest.approx(1.0)  # start of the cosine
    assert float(s(60)) == pytest.approx(0.5)  # half way: (1 + cos(pi/2)) / 2
    assert float(s(35)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(500)) == pytest.approx(0.0, abs=1e-7)  # stays at the floor


def test_cosine_without_warmup_and_floor():
    s = CosineWarmup(peak=0.2, total_steps=100, warmup_steps=0, floor=0.02)
    assert float(s(0)) == pytest.approx(0.2)
    assert float(s(50)) == pytest.approx(0.02 + 0.5 * 0.18)
    assert float(s(100)) == pytest.approx(0.02)
