"""Temporal UNet: masked attention pooling over months, single-month chips, T' = 1, dtypes, backbones."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.models import temporal_unet

FILTERS = (32, 16, 8)


def tiny(n_months=4, **kw):
    tf.keras.utils.set_random_seed(0)
    return temporal_unet.build_temporal_unet("tiny", n_months, (32, 32), 5, decoder_filters=FILTERS, **kw)


def batch(n_months=4):
    rng = np.random.default_rng(0)
    image = rng.random((3, n_months, 32, 32, 5)).astype("float32")
    months = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], "float32")[:, :n_months]
    return image, months


def test_contract_inputs_and_output():
    model = tiny()
    assert set(model.input) == {"image", "months"}
    assert model.input["image"].shape.as_list() == [None, 4, 32, 32, 5]
    assert model.input["months"].shape.as_list() == [None, 4]
    assert model.output.shape.as_list() == [None, 32, 32, 1] and model.output.dtype == tf.float32
    # one attention pooling per encoder scale (tiny: strides 8, 4, 2)
    assert [layer.name for layer in model.layers if isinstance(layer, temporal_unet.MonthAttention)] == \
        ["month_attention0", "month_attention1", "month_attention2"]


@pytest.mark.parametrize("training", [False, True])
def test_masked_months_do_not_change_the_output(training):
    model = tiny()
    image, months = batch()
    before = model({"image": image, "months": months}, training=training).numpy()
    changed = image.copy()
    changed[0, 1] = 7.0               # chip 0: month 1 masked
    changed[1, [0, 1, 3]] = -3.0      # chip 1: only month 2 present
    after = model({"image": changed, "months": months}, training=training).numpy()
    np.testing.assert_array_equal(after[:2], before[:2])
    # a present month does change the output (the test can fail)
    changed[2, 0] += 1.0
    assert np.abs(model({"image": changed, "months": months}, training=training).numpy()[2] - before[2]).max() > 1e-4


def test_attention_weights_exactly_zero_on_masked_months_and_one_month_passes_through():
    layer = temporal_unet.MonthAttention(3)
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2 * 3, 4, 4, 6)).astype("float32")  # [B * T, h, w, d]
    months = np.array([[1, 0, 1], [0, 1, 0]], "float32")
    out = layer([tf.constant(feats), tf.constant(months)]).numpy()
    # chip 1: the only present month comes out unchanged
    np.testing.assert_allclose(out[1], feats[3 + 1], rtol=1e-6)
    # chip 0: a convex combination of months 0 and 2 only
    f0, f2 = feats[0], feats[2]
    w = (out[0] - f2) / (f0 - f2)
    assert np.all((w > -1e-4) & (w < 1 + 1e-4))
    feats2 = feats.copy()
    feats2[1] = 1e3
    np.testing.assert_array_equal(layer([tf.constant(feats2), tf.constant(months)]).numpy(), out)
    # no present month: zeros, not NaN
    assert not layer([tf.constant(feats), tf.zeros((2, 3))]).numpy().any()


def test_single_month_model_and_nonnegativity():
    image, months = batch()
    model = tiny(1, nonneg="relu")
    out = model({"image": image[:, :1], "months": np.ones((3, 1), "float32")}).numpy()
    assert out.shape == (3, 32, 32, 1) and out.min() >= 0.0
    soft = tiny(nonneg="softplus", output_scale=50.0)
    assert soft({"image": image, "months": months}).numpy().min() > 0.0
    free = tiny(nonneg="none", output_scale=50.0)
    assert free({"image": image, "months": months}).numpy().min() < 0.0
    with pytest.raises(ValueError, match="nonneg"):
        tiny(nonneg="abs")
    with pytest.raises(ValueError, match="n_months"):
        tiny(0)


def test_float32_output_under_mixed_precision():
    try:
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = tiny()
        image, months = batch()
        out = model({"image": image, "months": months})
        assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
        assert any(layer.compute_dtype == "bfloat16" for layer in model.layers)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_registered_backbone_with_15_bands():
    tf.keras.utils.set_random_seed(0)
    model = temporal_unet.build_temporal_unet("efficientnet_b0", 2, (32, 32), 15)
    assert len([layer for layer in model.layers if isinstance(layer, temporal_unet.MonthAttention)]) == 5
    out = model({"image": np.zeros((1, 2, 32, 32, 15), "float32"), "months": np.array([[1, 0]], "float32")})
    assert out.shape == (1, 32, 32, 1)


def test_weights_file_round_trip(tmp_path):
    model = tiny()
    model.set_weights([w + 0.01 * np.arange(w.size, dtype=w.dtype).reshape(w.shape) % 0.3 for w in model.get_weights()])
    path = str(tmp_path / "w.h5")
    model.save_weights(path)
    image, months = batch()
    model2 = temporal_unet.build_temporal_unet("tiny", 4, (32, 32), 5, decoder_filters=FILTERS, weights=path)
    np.testing.assert_allclose(model2({"image": image, "months": months}).numpy(),
                               model({"image": image, "months": months}).numpy(), rtol=1e-5, atol=1e-6)
