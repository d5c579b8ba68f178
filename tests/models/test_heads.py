"""The embedding head of the classifier (models.backbones: GeMPool + CosineLogits, ``head: cosine``)."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.models import backbones


def test_gem_pool_is_the_generalised_mean():
    x = np.array([[[[1.0], [2.0]], [[3.0], [4.0]]]], np.float32)  # [1, 2, 2, 1]
    want3 = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    np.testing.assert_allclose(backbones.GeMPool(p=3.0)(x).numpy(), [[want3]], rtol=1e-5)
    np.testing.assert_allclose(backbones.GeMPool(p=1.0)(x).numpy(), [[2.5]], rtol=1e-6)  # p = 1: average


def test_cosine_logits_are_the_scaled_cosine():
    layer = backbones.CosineLogits(3, scale=10.0)
    x = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    out = layer(x).numpy()
    w = layer.kernel.numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(out, 10.0 * cos, rtol=1e-5, atol=1e-6)
    assert np.abs(out).max() <= 10.0 + 1e-5


def test_cosine_head_model_trains_and_keeps_the_feature_layer():
    tf.keras.utils.set_random_seed(0)
    model = backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="cosine", head_scale=8.0)
    pool, logits = model.get_layer("pool"), model.get_layer("logits")
    assert isinstance(pool, backbones.GeMPool) and isinstance(logits, backbones.CosineLogits)
    assert len(pool.trainable_weights) == 1 and float(pool.trainable_weights[0].numpy()) == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    y = np.arange(32) % 4
    x = rng.uniform(0, 0.2, (32, 16, 16, 3)).astype(np.float32)
    x[np.arange(32), :, :, y % 3] += 0.8  # classes differ by colour (0 and 3 share one: harder)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before * 0.8
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # the probabilities are softmax(scale * cosine) of the pooled features
    feats = tf.keras.Model(model.inputs, logits.input).predict(x, verbose=0)
    w = logits.kernel.numpy()
    z = 8.0 * (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(probs, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert float(pool.trainable_weights[0].numpy()) != pytest.approx(3.0)  # p is trained


def test_bad_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of softmax, cosine"):
        backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="arcface")
    with pytest.raises(ValueError, match="head_scale"):
        backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="cosine", head_scale=float("nan"))
