"""ResNet-18 / 34 built from layers: block counts, UNet taps, training, local ImageNet weights."""
import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401
from foldnet.core.errors import WeightsError
from foldnet.models import backbones as models
from foldnet.models import unet

keras = tf.keras


@pytest.mark.parametrize("arch, blocks, params", [("resnet18", 8, 11_176_512), ("resnet34", 16, 21_284_672)])
def test_resnet_builds_with_torchvision_block_counts(arch, blocks, params):
    backbone, affine = models.get_architecture(arch).build((64, 64, 3), None)
    assert backbone.output_shape == (None, 2, 2, 512)
    assert len([layer for layer in backbone.layers if layer.name.endswith("_out")]) == blocks
    # torchvision's resnet18 / resnet34 without the fc layer: 11,176,512 / 21,284,672 parameters
    trainable = sum(int(np.prod(v.shape)) for v in backbone.trainable_variables)
    assert trainable == params
    np.testing.assert_allclose(affine[1], -np.array(models.IMAGENET_MEAN) / models.IMAGENET_STD)


@pytest.mark.parametrize("taps", ["expand", "stages"])
def test_resnet_unet_taps(taps):
    model = unet.build_unet("resnet34", 3, 64, options={"encoder_taps": taps})
    extractor = [layer for layer in model.layers if layer.name.endswith("_features")][0]
    assert [tuple(t.shape[1:]) for t in extractor.outputs] == [
        (2, 2, 512), (4, 4, 256), (8, 8, 128), (16, 16, 64), (32, 32, 64)]
    assert [t.name.split("/")[0] for t in extractor.outputs][1:] == [
        "layer3_block5_out", "layer2_block3_out", "layer1_block2_out", "stem_relu"]


def test_unet_over_resnet18_trains_two_steps():
    tf.keras.utils.set_random_seed(0)
    model = unet.build_unet("resnet18", 4, 32, decoder_filters=(32, 16, 16, 8, 8))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 4)).astype("float32")
    y = (x[..., :1] > 0.5).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.optimizer.iterations.numpy() == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_resnet_imagenet_weights_from_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="not available offline") as error:
        models.get_architecture("resnet18").build((32, 32, 3), "imagenet")
    assert "--weights none" in error.value.format()
    tf.keras.utils.set_random_seed(1)
    source, _ = models.get_architecture("resnet18").build((32, 32, 3), None)
    source.save_weights(models.local_weights_path("resnet18", "imagenet"))
    tf.keras.utils.set_random_seed(2)
    loaded, _ = models.get_architecture("resnet18").build((64, 64, 3), "imagenet")
    for name in ("stem_conv", "layer4_block1_2_bn"):
        for a, b in zip(source.get_layer(name).get_weights(), loaded.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_weights_from_a_torch_state_dict(tmp_path):
    """PyTorch-named arrays (conv [out, in, kh, kw]) -> the Keras layers, through an .npz file."""
    tf.keras.utils.set_random_seed(4)
    source, _ = models.get_architecture("resnet18").build((32, 32, 3), None)
    state = {}
    names = [("stem", "conv1", "bn1")] + [
        (f"layer{s}_block{b}_{i}", f"layer{s}.{b}.conv{i}", f"layer{s}.{b}.bn{i}")
        for s in range(1, 5) for b in range(2) for i in (1, 2)] + [
        (f"layer{s}_block0_downsample", f"layer{s}.0.downsample.0", f"layer{s}.0.downsample.1") for s in (2, 3, 4)]
    rng = np.random.default_rng(0)
    for ours, conv, bn in names:
        state[f"{conv}.weight"] = np.transpose(source.get_layer(f"{ours}_conv").get_weights()[0], (3, 2, 0, 1))
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{bn}.{key}"] = rng.uniform(0.5, 1.5, source.get_layer(f"{ours}_bn").get_weights()[0].shape)
    state["fc.weight"] = np.zeros((1000, 512))
    np.savez(tmp_path / "r18.npz", **state)
    path = models.resnet_weights_from_torch("resnet18", str(tmp_path / "r18.npz"), tmp_path / "resnet18_imagenet.h5")
    tf.keras.utils.set_random_seed(5)
    loaded, _ = models.get_architecture("resnet18").build((32, 32, 3), None)
    loaded.load_weights(str(path))
    np.testing.assert_array_equal(loaded.get_layer("layer3_block1_2_conv").get_weights()[0],
                                  source.get_layer("layer3_block1_2_conv").get_weights()[0])
    np.testing.assert_allclose(loaded.get_layer("layer2_block0_downsample_bn").get_weights()[2],
                               state["layer2.0.downsample.1.running_mean"], rtol=1e-6)
    del state["layer4.1.bn2.bias"]
    with pytest.raises(ValueError, match="lacks 1 keys: layer4.1.bn2.bias"):
        models.resnet_weights_from_torch("resnet18", state, tmp_path / "x.h5")
