"""UNet arch_options: stage-output encoder taps, SCSE decoder attention, decoder without BN, 1x1 head,
stem adaptation (adapted / cyclic / fresh), input_norm none, the silenced channel-count warning."""
import warnings

import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.models import backbones as models
from foldnet.models import temporal_unet, unet, unet_options

keras = tf.keras


def extractor_of(model):
    return [layer for layer in model.layers if layer.name.endswith("_features")][0]


def tap_shapes(model):
    return [tuple(t.shape[1:]) for t in extractor_of(model).outputs]


def test_stage_taps_of_efficientnet_b0_are_the_block_outputs():
    # timm efficientnet_b0 features_only: 16, 24, 40, 112, 320 channels at strides 2..32
    backbone, _ = models.get_architecture("efficientnet_b0").build((64, 64, 4), None)

    def shapes(taps):
        return {s: tuple(backbone.get_layer(n).output.shape[1:]) for s, n in taps.items()}

    stages = unet.stage_layers(backbone, 64)
    assert stages == {2: "block1a_project_bn", 4: "block2b_add", 8: "block3b_add", 16: "block5c_add",
                      32: "block7a_project_bn"}
    assert shapes(stages) == {2: (32, 32, 16), 4: (16, 16, 24), 8: (8, 8, 40), 16: (4, 4, 112), 32: (2, 2, 320)}
    # the default stays today's taps (expand activations and the 1280-channel head), so old runs load
    assert shapes(unet.skip_layers(backbone, 64)) == {2: (32, 32, 96), 4: (16, 16, 144), 8: (8, 8, 240),
                                                      16: (4, 4, 672), 32: (2, 2, 1280)}


def test_stage_taps_of_kecam_efficientnet_v2_b0():
    # timm tf_efficientnetv2_b0 features_only: 16, 32, 48, 112, 192
    model = unet.build_unet("kecam:efficientnet.EfficientNetV2B0", 3, 64, weights="none",
                            options={"encoder_taps": "stages"})
    assert tap_shapes(model) == [(2, 2, 192), (4, 4, 112), (8, 8, 48), (16, 16, 32), (32, 32, 16)]
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 1)


def test_temporal_unet_pools_the_stage_taps():
    model = temporal_unet.build_temporal_unet("efficientnet_b0", 2, (64, 64), 4,
                                              options={"encoder_taps": "stages", "head_kernel": 1})
    depths = [layer.input[0].shape[-1] for layer in model.layers if isinstance(layer, temporal_unet.MonthAttention)]
    assert depths == [320, 112, 40, 24, 16]
    assert model.get_layer("regression").kernel.shape == (1, 1, 16, 1)


def test_stage_taps_refused_for_an_unknown_layout():
    with pytest.raises(ValueError, match="no recognised stage output"):
        unet.build_unet("keras:MobileNetV2", 3, 64, options={"encoder_taps": "stages"})


def test_scse_matches_the_formula():
    tf.keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 32))
    model = keras.Model(inputs, unet.scse(inputs, "att"))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 32)).astype("float32")
    w1, b1 = model.get_layer("att_cse_reduce").get_weights()   # 32 -> 2 (reduction 16)
    w2, b2 = model.get_layer("att_cse_expand").get_weights()   # 2 -> 32
    ws, bs = model.get_layer("att_sse").get_weights()          # 32 -> 1
    assert w1.shape == (1, 1, 32, 2) and w2.shape == (1, 1, 2, 32) and ws.shape == (1, 1, 32, 1)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    gap = x.mean(axis=(1, 2))                                           # [2, 32]
    cse = sigmoid(np.maximum(gap @ w1[0, 0] + b1, 0) @ w2[0, 0] + b2)  # [2, 32]
    sse = sigmoid(x @ ws[0, 0] + bs)                                   # [2, 4, 4, 1]
    expected = x * cse[:, None, None, :] + x * sse
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_scse_decoder_and_no_bn_decoder_and_1x1_head():
    model = unet.build_unet("tiny", 3, 32, decoder_filters=(16, 8, 8),
                            options={"decoder_attention": "scse", "decoder_norm": "none", "head_kernel": 1})
    names = [layer.name for layer in model.layers]
    # SCSE on each concatenation with a skip (strides 4, 2) and after every block (3 stages)
    assert [n for n in names if n.endswith("_attention1_add")] == ["decoder0_attention1_add", "decoder1_attention1_add"]
    assert len([n for n in names if n.endswith("_attention2_add")]) == 3
    decoder = [layer for layer in model.layers if layer.name.startswith("decoder")]
    assert not [layer for layer in decoder if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in decoder if layer.name.endswith(("_1_conv", "_2_conv"))]
    assert len(convs) == 6 and all(layer.use_bias for layer in convs)
    assert model.get_layer("logits").kernel.shape == (1, 1, 8, 1)
    default = unet.build_unet("tiny", 3, 32, decoder_filters=(16, 8, 8))
    assert default.get_layer("logits").kernel.shape == (3, 3, 8, 1)
    assert isinstance(default.get_layer("decoder0_1_bn"), keras.layers.BatchNormalization)
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 32, 32, 1)


def test_cyclic_stem_is_timms_adapt_input_conv():
    k = np.arange(2 * 3 * 4, dtype="float64").reshape(1, 2, 3, 4)  # kh, kw, 3 inputs, 4 outputs
    out = unet.cyclic_stem_kernel(k, 5)
    assert out.shape == (1, 2, 5, 4)
    for i, rgb in enumerate([0, 1, 2, 0, 1]):
        np.testing.assert_allclose(out[:, :, i], k[:, :, rgb] * 3 / 5)
    np.testing.assert_allclose(unet.cyclic_stem_kernel(k, 1)[:, :, 0], k.sum(axis=2))


@pytest.mark.parametrize("stem", ["cyclic", "fresh"])
def test_stem_choice_in_transfer_weights(stem):
    spec = models.get_architecture("efficientnet_b0")
    tf.keras.utils.set_random_seed(3)
    source, _ = spec.build((32, 32, 3), None)  # stands in for a pretrained 3-channel backbone
    target, _ = spec.build((32, 32, 4), None)
    initial = target.get_layer("stem_conv").get_weights()[0]
    assert unet.transfer_weights(source, target, stem) == ["stem_conv"]
    k3 = source.get_layer("stem_conv").get_weights()[0]
    k4 = target.get_layer("stem_conv").get_weights()[0]
    if stem == "cyclic":
        np.testing.assert_allclose(k4, k3[:, :, [0, 1, 2, 0]] * 0.75, rtol=1e-6)
    else:
        np.testing.assert_array_equal(k4, initial)
    np.testing.assert_array_equal(source.get_layer("top_conv").get_weights()[0],
                                  target.get_layer("top_conv").get_weights()[0])


def test_options_are_checked():
    assert unet_options.problems({"encoder_taps": "stage", "head_kernel": 5, "stem": "random",
                                  "decoder_filters": [8, -1], "width": 3}) == [
        "arch_options.encoder_taps='stage': choose one of expand, stages",
        "arch_options.head_kernel=5: choose one of 3, 1",
        "arch_options.stem='random': choose one of adapted, cyclic, fresh",
        "arch_options.decoder_filters=[8, -1]: a list of positive integer widths, deep to shallow"]
    assert unet_options.split({"stem": "fresh", "width": 3}) == (
        {**unet_options.DEFAULTS, "stem": "fresh"}, {"width": 3})


def test_input_norm_none_feeds_pixels_straight_into_the_backbone():
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    for normalize in (True, False):
        model = unet.build_unet("resnet18", 3, 32, normalize=normalize)
        extractor = extractor_of(model)
        outer = extractor.get_input_at(len(extractor.inbound_nodes) - 1)  # what the UNet feeds it
        seen = keras.Model(model.input, outer)(x).numpy()
        if normalize:
            assert not np.allclose(seen, x)  # ImageNet mean / std applied
        else:
            np.testing.assert_array_equal(seen, x)
            assert "input_norm" not in [layer.name for layer in model.layers]


def test_no_channel_count_warning_for_multiband_backbones():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unet.build_unet("keras:MobileNetV2", 4, 32)
        models.build_model("keras:MobileNetV2", 2, 32, n_channels=4)
    assert not [w for w in caught if models.CHANNELS_WARNING in str(w.message)]
    # without foldnet's filter the application does warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras.applications.MobileNetV2(input_shape=(32, 32, 4), weights=None, include_top=False)
    assert [w for w in caught if models.CHANNELS_WARNING in str(w.message)]
