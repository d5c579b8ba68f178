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
    with pytest.raises(ValueError, match="head must be one of softmax, cosine, arcface"):
        backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="margin")
    with pytest.raises(ValueError, match="head_scale"):
        backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="cosine", head_scale=float("nan"))


def _arcface_by_hand(cos, y, margin, scale):
    """ArcFace cross-entropy in numpy: the true class's logit scale * cos(theta + margin)."""
    z = scale * cos.copy()
    rows = np.arange(len(y))
    theta = np.arccos(np.clip(cos[rows, y], -1, 1))
    z[rows, y] = scale * np.where(theta + margin < np.pi, np.cos(theta + margin),
                                  cos[rows, y] - margin * np.sin(margin))
    z -= z.max(1, keepdims=True)
    return -(z[rows, y] - np.log(np.exp(z).sum(1)))


def test_arcface_margin_is_in_the_loss_only():
    tf.keras.utils.set_random_seed(1)
    model = backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="arcface", head_scale=8.0)
    assert isinstance(model.get_layer("pool"), backbones.GeMPool)
    logits = model.get_layer("logits")
    assert isinstance(logits, backbones.CosineLogits)
    x = np.random.default_rng(1).uniform(0, 1, (6, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1])
    feats = tf.keras.Model(model.inputs, logits.input).predict(x, verbose=0)
    w = logits.kernel.numpy()
    cos = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    # predictions: softmax(scale * cos), no margin (the same as the cosine head's)
    probs = model(x, training=False)
    z = 8.0 * cos
    np.testing.assert_allclose(probs.numpy(), np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    onehot = np.eye(4, dtype=np.float32)[y]
    loss = backbones.ArcMarginLoss(0.3, 8.0, reduction="none")(onehot, probs).numpy()
    np.testing.assert_allclose(loss, _arcface_by_hand(cos, y, 0.3, 8.0), rtol=1e-4, atol=1e-5)
    plain = -np.log(probs.numpy()[np.arange(6), y])
    assert (loss > plain).all()  # the margin makes the true class harder
    no_margin = backbones.ArcMarginLoss(0.0, 8.0, reduction="none")(onehot, probs).numpy()
    np.testing.assert_allclose(no_margin, plain, rtol=1e-4, atol=1e-5)
    # past theta = pi - margin the target logit keeps falling (cos - margin * sin(margin))
    far = np.array([[-0.999, 0.5]], np.float32)
    got = backbones.ArcMarginLoss(0.3, 1.0, reduction="none")(np.eye(2, dtype=np.float32)[[0]],
                                                               tf.keras.activations.softmax(tf.constant(far)))
    np.testing.assert_allclose(got.numpy(), _arcface_by_hand(far, np.array([0]), 0.3, 1.0), rtol=1e-5)
    with pytest.raises(ValueError, match="logits"):
        backbones.ArcMarginLoss()(onehot, tf.constant(probs.numpy()))  # not a softmax output


def test_arcface_head_trains_a_few_steps():
    from foldnet.tasks.classification.task import compile_classifier

    tf.keras.utils.set_random_seed(0)
    model = backbones.build_model("tiny_cnn", n_classes=4, dim=16, head="arcface", head_scale=8.0)
    compile_classifier(model, 4, tf.keras.optimizers.Adam(0.01), arcface_margin=0.3, head_scale=8.0)
    assert isinstance(model.loss, backbones.ArcMarginLoss) and model.loss.margin == 0.3
    rng = np.random.default_rng(0)
    y = np.arange(32) % 4
    x = rng.uniform(0, 0.2, (32, 16, 16, 3)).astype(np.float32)
    x[np.arange(32), :, :, y % 3] += 0.8
    onehot = np.eye(4, dtype=np.float32)[y]
    before = model.evaluate(x, onehot, verbose=0)[0]
    hist = model.fit(x, onehot, epochs=6, batch_size=8, verbose=0).history["loss"]
    assert np.isfinite(hist).all() and model.evaluate(x, onehot, verbose=0)[0] < before
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(1), 1.0, rtol=1e-5)
