"""UNet over registered backbones: skips by stride, any channel count, stem adaptation, float32 output."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.engine import strategy
from foldnet.models import backbones as models
from foldnet.models import unet

keras = tf.keras


def test_tiny_unet_shapes_and_mixed_precision_output():
    model = unet.build_unet("tiny", n_channels=5, dim=(16, 24))
    assert model.output_shape == (None, 16, 24, 1)
    x = np.random.default_rng(0).random((2, 16, 24, 5)).astype("float32")
    y = model(x).numpy()
    assert y.dtype == np.float32 and y.min() > 0 and y.max() < 1
    try:
        strategy.set_mixed_precision("mixed_bfloat16")
        mixed = unet.build_unet("tiny", n_channels=5, dim=16)
        assert mixed.get_layer("decoder0_1_conv").compute_dtype == "bfloat16"
        assert mixed(x[:, :, :16]).dtype == tf.float32
    finally:
        strategy.set_mixed_precision("none")
    with pytest.raises(ValueError, match="multiples of the encoder.s stride"):
        unet.build_unet("tiny", 3, 20)
    with pytest.raises(ValueError, match="no pretrained weights"):
        unet.build_unet("tiny", 3, 16, weights="imagenet")


def test_efficientnet_b0_skips_by_stride_and_seven_channels():
    model = unet.build_unet("efficientnet_b0", n_channels=7, dim=64, weights="none")
    assert model.output_shape == (None, 64, 64, 1)
    extractor = model.get_layer("efficientnet-b0_features")
    names = [t.name.split("/")[0] for t in extractor.outputs]
    assert names == ["top_activation", "block6a_expand_activation", "block4a_expand_activation",
                     "block3a_expand_activation", "block2a_expand_activation"]
    assert [t.shape[1] for t in extractor.outputs] == [2, 4, 8, 16, 32]
    # ImageNet normalisation spread over 7 channels: mean of the 3 means / stds
    norm = model.get_layer("input_norm")
    std = np.mean(1.0 / np.array(models.IMAGENET_STD))
    np.testing.assert_allclose(np.diag(norm.matrix), [std] * 7, rtol=1e-4)
    assert model(np.zeros((1, 64, 64, 7), "float32")).shape == (1, 64, 64, 1)


def test_kecam_efficientnet_v2_backbone():
    model = unet.build_unet("kecam:efficientnet.EfficientNetV2B0", n_channels=4, dim=64, weights="none",
                            decoder_filters=(32, 32, 16, 16, 8))
    assert model.output_shape == (None, 64, 64, 1)
    extractor = [layer for layer in model.layers if layer.name.endswith("_features")][0]
    assert [t.shape[1] for t in extractor.outputs] == [2, 4, 8, 16, 32]


def test_stem_adaptation_keeps_the_pretrained_response():
    spec = models.get_architecture("efficientnet_b0")
    tf.keras.utils.set_random_seed(3)
    source, _ = spec.build((32, 32, 3), None)  # stands in for a pretrained 3-channel backbone
    target, _ = spec.build((32, 32, 5), None)
    adapted = unet.transfer_weights(source, target)
    assert adapted == ["stem_conv"]
    k3 = source.get_layer("stem_conv").get_weights()[0]
    k5 = target.get_layer("stem_conv").get_weights()[0]
    assert k5.shape == (3, 3, 5, 32)
    np.testing.assert_allclose(k5[:, :, 2], k3.mean(axis=2) * 3 / 5, rtol=1e-6)
    np.testing.assert_allclose(k5.sum(axis=2), k3.sum(axis=2), rtol=1e-5, atol=1e-6)
    for name in ("block1a_dwconv", "top_conv", "stem_bn"):
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # a grey pixel (same value in every channel) gives the 3-channel network's features
    grey = np.random.default_rng(0).random((1, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(target(np.repeat(grey, 5, -1)).numpy(), source(np.repeat(grey, 3, -1)).numpy(),
                               rtol=1e-3, atol=1e-4)
    assert unet.adapt_stem_kernel(np.ones((1, 1, 3, 2)), 1).tolist() == [[[[3.0, 3.0]]]]


def test_unet_weights_file_round_trip(tmp_path):
    model = unet.build_unet("tiny", n_channels=2, dim=16)
    x = np.random.default_rng(1).random((1, 16, 16, 2)).astype("float32")
    path = str(tmp_path / "unet.h5")
    model.save_weights(path)
    again = unet.build_unet("tiny", n_channels=2, dim=16, weights=path)
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_efficientnet_needs_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of the encoder.s stride"):
        unet.build_unet("efficientnet_b0", n_channels=3, dim=48)
