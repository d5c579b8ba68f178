import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.models import backbones as models
from tests.paths import ROOT

keras = tf.keras

REQUIRED = ["tiny_cnn", "small_cnn", "efficientnet_b0", "efficientnet_b7", "efficientnet_v1_l2",
            "efficientnet_v2_l", "efficientnet_v2_xl", "beit_l16"]
LARGE = {"efficientnet_b7": 32, "efficientnet_v1_l2": 32, "efficientnet_v2_l": 32,
         "efficientnet_v2_xl": 32, "beit_l16": 32}
# What each declared input_norm means, as (matrix, bias) on [0, 1] pixels.
NORMS = {
    "imagenet": models.mean_std_affine(models.IMAGENET_MEAN, models.IMAGENET_STD),
    "inception": models.mean_std_affine(0.5, 0.5),
}
SMALL = {"tiny_cnn": "none", "small_cnn": "none", "efficientnet_b0": "imagenet",
         "keras:MobileNetV2": "inception", "kecam:efficientnet.EfficientNetV2B0": "imagenet"}


def _images(n, dim, seed=0):
    return np.random.RandomState(seed).rand(n, dim, dim, 3).astype("float32")


def _norm_of(model):
    """The (matrix, bias) of the model's input_norm layer, or None."""
    names = [layer.name for layer in model.layers]
    if "input_norm" not in names:
        return None
    layer = model.get_layer("input_norm")
    return np.array(layer.matrix), np.array(layer.bias)


def _assert_norm(norm, expected):
    if expected == "none":
        assert norm is None
        return
    matrix, bias = NORMS[expected]
    np.testing.assert_allclose(norm[0], matrix, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(norm[1], bias, rtol=1e-4, atol=1e-6)


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")


def test_registry_lists_required_architectures():
    rows = {row["name"]: row for row in models.list_architectures()}
    for name in REQUIRED:
        assert rows[name]["description"]
        assert isinstance(rows[name]["weights"], list)
    assert rows["efficientnet_b7"]["weights"] == ["imagenet", "noisy-student"]
    assert "noisy_student" in rows["efficientnet_v1_l2"]["weights"]
    assert "imagenet21k-ft1k" in rows["beit_l16"]["weights"]
    assert "kecam:<module>.<ClassName>" in rows and "keras:<ApplicationName>" in rows


def test_register_adds_one_entry_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(models, "ARCHITECTURES", dict(models.ARCHITECTURES))

    @models.register("dense_only", "flatten + nothing", weights=("mine",))
    def _dense(input_shape, weights):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Flatten()(inputs)), None

    model = models.build_model("dense_only", n_classes=2, dim=4)
    assert model.output_shape == (None, 2)
    with pytest.raises(ValueError, match="already registered"):
        models.register("dense_only", "again", build=_dense)


@pytest.mark.parametrize("arch", list(SMALL))
def test_small_architectures_build_and_predict(arch):
    model = models.build_model(arch, n_classes=7, dim=32)
    out = model(_images(3, 32), training=False)
    assert out.dtype == tf.float32 and out.shape == (3, 7)
    np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert (out.numpy() >= 0).all()
    _assert_norm(_norm_of(model), SMALL[arch])
    if not arch.startswith(("kecam:", "keras:")):
        assert models.ARCHITECTURES[arch].input_norm == SMALL[arch]


# Large backbones are built once, in a subprocess, so their memory (up to ~3 GB
# for EfficientNet-L2) goes back to the system when it ends.
LARGE_SCRIPT = r"""
import json, resource, sys, time
import foldnet
import numpy as np, tensorflow as tf
from foldnet.models import backbones as models
for arch, dim in json.loads(sys.argv[1]).items():
    start = time.time()
    model = models.build_model(arch, n_classes=5, dim=dim, dropout=0.1)
    built = time.time() - start
    out = model(np.random.RandomState(0).rand(2, dim, dim, 3).astype("float32"), training=False)
    norm = model.get_layer("input_norm")
    print(json.dumps({"arch": arch, "build_s": round(built, 1), "call_s": round(time.time() - start - built, 1),
                      "params": model.count_params(), "shape": list(out.shape), "dtype": out.dtype.name,
                      "sums": out.numpy().sum(axis=1).tolist(), "matrix": norm.matrix, "bias": norm.bias,
                      "backbone_rank": model.layers[2].output.shape.rank,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
    del model
    tf.keras.backend.clear_session()
"""


@pytest.fixture(scope="module")
def large_builds():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", LARGE_SCRIPT, json.dumps(LARGE)], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, env=env)
    results = {}
    for line in out.stdout.splitlines():
        if line.startswith('{"arch"'):
            row = json.loads(line)
            results[row["arch"]] = row
    return results, out


@pytest.mark.parametrize("arch", list(LARGE))
def test_large_architectures_build_at_small_input(large_builds, arch):
    results, out = large_builds
    assert arch in results, f"{arch} did not build:\n{out.stderr[-3000:]}"
    row = results[arch]
    print(f"{arch}: build {row['build_s']} s, call {row['call_s']} s, {row['params'] / 1e6:.1f}M params, "
          f"peak RSS {row['maxrss_mb']} MB")
    assert row["shape"] == [2, 5] and row["dtype"] == "float32"
    np.testing.assert_allclose(row["sums"], 1.0, rtol=1e-5)
    _assert_norm((np.array(row["matrix"]), np.array(row["bias"])), models.ARCHITECTURES[arch].input_norm)
    if arch == "beit_l16":
        assert row["backbone_rank"] == 2  # kecam BEiT with num_classes=0 returns pooled features
    else:
        assert row["backbone_rank"] == 4


def test_output_float32_under_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.build_model("efficientnet_b0", n_classes=4, dim=32)
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("input_norm").compute_dtype == "float16"
    out = model(_images(2, 32), training=False)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-3)


def test_h5_round_trip_identical_predictions(tmp_path):
    path = str(tmp_path / "fold.weights.h5")
    first = models.build_model("tiny_cnn", n_classes=5, dim=16, name="first")
    first.save_weights(path)
    second = models.build_model("tiny_cnn", n_classes=5, dim=16, weights=path, name="second")
    fresh = models.build_model("tiny_cnn", n_classes=5, dim=16)
    x = _images(4, 16)
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))
    assert not np.allclose(first.predict(x, verbose=0), fresh.predict(x, verbose=0))


def _backbone_kernel(model):
    return model.layers[1].get_layer("conv1").kernel.numpy()


def test_h5_with_other_head_loads_backbone_by_name(tmp_path):
    path = str(tmp_path / "other_head.h5")
    source = models.build_model("tiny_cnn", n_classes=9, dim=16)
    source.save_weights(path)
    target = models.build_model("tiny_cnn", n_classes=3, dim=16, weights=path)
    np.testing.assert_array_equal(_backbone_kernel(target), _backbone_kernel(source))
    assert target.output_shape == (None, 3)


def test_h5_backbone_only_file(tmp_path):
    path = str(tmp_path / "backbone.h5")
    source = models.build_model("tiny_cnn", n_classes=2, dim=16)
    source.layers[1].save_weights(path)
    target = models.build_model("tiny_cnn", n_classes=2, dim=16, weights=path)
    np.testing.assert_array_equal(_backbone_kernel(target), _backbone_kernel(source))


def test_h5_that_fits_nothing_names_the_file(tmp_path):
    path = str(tmp_path / "unrelated.h5")
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(2, name="somewhere_else")(inputs)).save_weights(path)
    with pytest.raises(ValueError, match="unrelated.h5"):
        models.build_model("tiny_cnn", n_classes=2, dim=16, weights=path)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        models.build_model("tiny_cnn", n_classes=2, dim=16, weights=str(tmp_path / "missing.h5"))


def test_unknown_architecture_lists_registered_names():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'.*efficientnet_b7.*small_cnn"):
        models.build_model("resnet9000", n_classes=2, dim=32)
    with pytest.raises(ValueError, match="no model 'NotAModel'"):
        models.build_model("keras:NotAModel", n_classes=2, dim=32)
    with pytest.raises(ValueError, match="no model 'NotAModel'"):
        models.build_model("kecam:efficientnet.NotAModel", n_classes=2, dim=32)
    with pytest.raises(ValueError, match="no module"):
        models.build_model("kecam:nosuchmodule.Model", n_classes=2, dim=32)


def test_weights_not_offered_lists_allowed_ones():
    with pytest.raises(ValueError, match="'imagenet21k'.*none, imagenet, noisy-student"):
        models.build_model("efficientnet_b7", n_classes=2, dim=32, weights="imagenet21k")
    with pytest.raises(ValueError, match="does not offer weights 'imagenet'"):
        models.build_model("tiny_cnn", n_classes=2, dim=32, weights="imagenet")


def test_kecam_weights_it_does_not_have_are_an_error():
    # kecam itself only prints a message and goes on with random weights.
    with pytest.raises(ValueError, match="'no_such_set' were not loaded"):
        models.build_model("kecam:efficientnet.EfficientNetV2B0", n_classes=2, dim=32, weights="no_such_set")


def test_bad_options_and_arguments():
    with pytest.raises(ValueError, match="does not take option"):
        models.build_model("tiny_cnn", n_classes=2, dim=16, options={"width": 8})
    with pytest.raises(ValueError, match="width must be a positive int"):
        models.build_model("small_cnn", n_classes=2, dim=16, options={"width": 0})
    with pytest.raises(ValueError, match="n_classes"):
        models.build_model("tiny_cnn", n_classes=0, dim=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build_model("beit_l16", n_classes=2, dim=40)


@pytest.mark.parametrize("dim, sizes", [(32, [16, 8, 4]), (64, [16, 8, 4]), (100, [13, 7, 4]), (128, [16, 8, 4])])
def test_small_cnn_adapts_downsampling_to_input_size(dim, sizes):
    model = models.build_model("small_cnn", n_classes=3, dim=dim)
    backbone = model.layers[1]
    stage_sizes = [backbone.get_layer(f"stage{i}_block0_out").output.shape[1] for i in range(3)]
    assert stage_sizes == sizes
    assert backbone.output.shape[-1] == 128


def _pattern_task(n_per_class, size, seed):
    """4 classes: red horizontal stripes, green vertical stripes, blue checkerboard, grey noise."""
    rng = np.random.RandomState(seed)
    rows, cols = np.indices((size, size))
    patterns = [
        ((rows // 2) % 2, (1.0, 0.2, 0.2)),
        ((cols // 2) % 2, (0.2, 1.0, 0.2)),
        (((rows // 4) + (cols // 4)) % 2, (0.2, 0.2, 1.0)),
        (rng.rand(size, size) > 0.5, (0.6, 0.6, 0.6)),
    ]
    x, y = [], []
    for label, (mask, colour) in enumerate(patterns):
        for _ in range(n_per_class):
            shift = rng.randint(0, 4, size=2)
            image = np.roll(mask, shift, axis=(0, 1))[..., None] * np.array(colour)
            x.append(np.clip(image + rng.normal(0, 0.25, (size, size, 3)), 0, 1))
            y.append(label)
    return np.array(x, np.float32), np.array(y)


def test_small_cnn_learns_a_small_task():
    keras.utils.set_random_seed(0)
    x, y = _pattern_task(40, 32, seed=0)
    x_val, y_val = _pattern_task(25, 32, seed=1)
    model = models.build_model("small_cnn", n_classes=4, dim=32, dropout=0.2)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=32, epochs=4, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    assert accuracy > 0.9


def test_small_cnn_recipe_on_upscaled_digits():
    """The demo recipe: sklearn digits at 32x32 RGB, ~1150 training images, >= 0.95 top-1."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    digits = load_digits()
    images = np.repeat(digits.images[..., None] / 16.0, 3, axis=-1).astype("float32")
    images = tf.image.resize(images, [32, 32]).numpy()
    order = np.random.RandomState(0).permutation(len(images))
    train, val = order[:1150], order[1150:]
    model = models.build_model("small_cnn", n_classes=10, dim=32, dropout=0.2)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(images[train], digits.target[train], batch_size=32, epochs=5, verbose=0)
    _, accuracy = model.evaluate(images[val], digits.target[val], verbose=0)
    print(f"digits val accuracy {accuracy:.3f}")
    assert accuracy >= 0.95


def test_affine_of_keras_preprocessing_modes():
    # caffe mode (ResNet50): RGB -> BGR, then minus the BGR ImageNet mean, on [0, 255].
    matrix, bias = models.affine_of(keras.applications.resnet50.preprocess_input)
    np.testing.assert_allclose(matrix, 255.0 * np.eye(3)[::-1], atol=1e-3)
    np.testing.assert_allclose(bias, [-103.939, -116.779, -123.68], atol=1e-3)
    x = _images(1, 4)
    layer = models.PixelAffine(matrix, bias)
    np.testing.assert_allclose(layer(x).numpy(), keras.applications.resnet50.preprocess_input(255.0 * x),
                               rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="not a per-pixel affine"):
        models.affine_of(lambda pixels: pixels ** 2)
