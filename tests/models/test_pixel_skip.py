"""arch_options.pixel_skip: a per-pixel 1x1-conv path joined before the head, in both UNets."""
import numpy as np

import foldnet  # noqa: F401
from foldnet.models import temporal_unet, unet, unet_options


def test_pixel_skip_adds_the_expected_parameters_to_the_unet():
    c, n, last = 5, 8, 16
    base = unet.build_unet("tiny", c, 32, decoder_filters=(64, 32, last))
    skip = unet.build_unet("tiny", c, 32, decoder_filters=(64, 32, last), options={"pixel_skip": n})
    # two 1x1 convs with bias (c -> n -> n), and the 3x3 head sees n more channels
    assert skip.count_params() - base.count_params() == (c * n + n) + (n * n + n) + 3 * 3 * n
    assert skip.get_layer("logits").kernel.shape == (3, 3, last + n, 1)
    x = np.random.default_rng(0).random((2, 32, 32, c)).astype("float32")
    out = skip(x).numpy()
    assert out.shape == (2, 32, 32, 1) and np.isfinite(out).all()


def test_pixel_skip_in_the_temporal_unet_is_pooled_over_months():
    c, n, t = 4, 6, 3
    kw = {"decoder_filters": (32, 16, 8)}
    base = temporal_unet.build_temporal_unet("tiny", t, (32, 32), c, **kw)
    skip = temporal_unet.build_temporal_unet("tiny", t, (32, 32), c, options={"pixel_skip": n}, **kw)
    # 1x1 convs, the pixel path's own month attention (Dense n->n, LayerNorm, Dense n->1), wider head
    attention = (n * n + n) + 2 * n + (n + 1)
    assert skip.count_params() - base.count_params() == (c * n + n) + (n * n + n) + attention + 3 * 3 * n
    rng = np.random.default_rng(0)
    out = skip({"image": rng.random((2, t, 32, 32, c)).astype("float32"),
                "months": np.array([[1, 0, 1], [1, 1, 1]], "float32")}).numpy()
    assert out.shape == (2, 32, 32, 1) and np.isfinite(out).all()


def test_pixel_skip_is_off_by_default_and_checked():
    assert unet_options.DEFAULTS["pixel_skip"] == 0
    assert "pixel_skip_concat" not in [layer.name for layer in unet.build_unet("tiny", 3, 32).layers]
    assert unet_options.problems({"pixel_skip": 16}) == []
    assert unet_options.problems({"pixel_skip": -1}) == [
        "arch_options.pixel_skip=-1: 0 (off) or a number of filters from 1 to 4096"]
    assert unet_options.problems({"pixel_skip": True}) != []
    assert unet.options_problems("tiny", {"pixel_skip": 16}) == []
