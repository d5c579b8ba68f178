import json
import os
import re
import subprocess
import sys
import time

import pytest
import tensorflow as tf

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.engine import strategy
from tests.paths import ROOT

keras = tf.keras

# Fresh TensorFlow: split_cpu must run before TF initialises its devices.
MIRRORED_SCRIPT = r"""
import json
import foldnet
from foldnet.engine import strategy
devices = strategy.split_cpu(2)
import numpy as np, tensorflow as tf
from foldnet.models import backbones as models
import logging
lines = []
class Collect(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("foldnet").addHandler(Collect())
logging.getLogger("foldnet").setLevel(logging.INFO)
strat = strategy.get_strategy(devices=devices[:2])
with strat.scope():
    model = models.build_model("tiny_cnn", n_classes=3, dim=16)
    model.compile(tf.keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
before = [w.copy() for w in model.get_weights()]
x = np.random.RandomState(0).rand(8, 16, 16, 3).astype("float32")
y = np.arange(8) % 3
history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
changed = sum(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
try:
    strategy.split_cpu(3)
    late = "no error"
except RuntimeError as error:
    late = str(error)
print(json.dumps({"devices": devices, "kind": type(strat).__name__, "replicas": strat.num_replicas_in_sync,
                  "log": lines, "loss": history.history["loss"][0], "changed": changed,
                  "n_weights": len(before), "late": late}))
"""


def test_mirrored_strategy_on_split_cpu_trains_a_step():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(info["devices"]) == 2 and all("CPU" in d for d in info["devices"])
    assert info["kind"] == "MirroredStrategy" and info["replicas"] == 2
    assert len(info["log"]) == 1 and "MirroredStrategy" in info["log"][0] and "replicas: 2" in info["log"][0]
    assert info["loss"] == info["loss"] and info["loss"] > 0  # finite, not NaN
    assert info["changed"] == info["n_weights"]  # every variable got a gradient step
    assert "too late" in info["late"]


@pytest.mark.skipif(len(tf.config.list_physical_devices("GPU")) > 1, reason="several GPUs: mirrored")
def test_default_strategy_without_arguments(log_lines):
    lines = log_lines
    lines.clear()  # only what follows
    strat = strategy.get_strategy()
    assert strat is tf.distribute.get_strategy()
    assert not tf.distribute.has_strategy()  # the default strategy, not a scoped one
    assert strat.num_replicas_in_sync == 1
    assert len(lines) == 1
    assert re.fullmatch(r"strategy: _DefaultDistributionStrategy \((CPU|GPU)\), replicas: 1", lines[0])


def test_bogus_tpu_name_fails_quickly_and_clearly():
    start = time.time()
    with pytest.raises(strategy.TPUUnavailableError, match="no-such-tpu-xyz"):
        strategy.get_strategy(tpu="no-such-tpu-xyz", tpu_resolve_timeout=20)
    assert time.time() - start < 25


def test_hanging_tpu_resolver_is_cut_off(monkeypatch):
    def hang(tpu):
        time.sleep(3)

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", hang)
    start = time.time()
    with pytest.raises(strategy.TPUUnavailableError, match="did not resolve within 0.5 s"):
        strategy.get_strategy(tpu="my-tpu", tpu_resolve_timeout=0.5)
    assert time.time() - start < 2


def test_tf_config_worker_count():
    cluster = {"cluster": {"worker": ["h1:2222", "h2:2222"], "chief": ["h0:2222"]}, "task": {"type": "worker", "index": 0}}
    assert strategy._tf_config_workers(json.dumps(cluster)) == 3
    assert strategy._tf_config_workers(json.dumps({"cluster": {"worker": ["h1:2222"]}})) == 1
    assert strategy._tf_config_workers("") == 0
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy._tf_config_workers("{not json")


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy, expected", [
    ("mixed_float16", "mixed_float16"), ("mixed_bfloat16", "mixed_bfloat16"),
    ("none", "float32"), (None, "float32"),
])
def test_set_mixed_precision(restore_policy, policy, expected):
    keras.mixed_precision.set_global_policy("mixed_float16" if expected == "float32" else "float32")
    assert strategy.set_mixed_precision(policy) == expected
    assert keras.mixed_precision.global_policy().name == expected


def test_set_mixed_precision_rejects_unknown(restore_policy):
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        strategy.set_mixed_precision("float16")


def test_split_cpu_validates_argument():
    with pytest.raises(ValueError, match="positive int"):
        strategy.split_cpu(0)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_worker_that_never_starts_ends_the_run_within_the_cluster_wait(monkeypatch):
    """Issue 21 item 6: with TF_CONFIG naming a worker that never starts, FOLDNET_CLUSTER_WAIT=5 still ran
    after 5 minutes (TensorFlow's start-up waits without a limit, holding the interpreter)."""
    import json
    import socket
    import time

    from foldnet.core.errors import ConfigError

    ports = [_free_port(), _free_port()]
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    monkeypatch.setenv("FOLDNET_CLUSTER_WAIT", "3")
    t0 = time.time()
    with pytest.raises(ConfigError, match=rf"worker 1 \(localhost:{ports[1]}\) of TF_CONFIG did not start within 3 s"):
        strategy.get_strategy()
    assert time.time() - t0 < 15
    # while it waits, a worker listens on its own port, so the others see it started
    with socket.create_server(("localhost", ports[1])):
        strategy.wait_for_workers(json.dumps(tf_config), 3)


@pytest.mark.parametrize("env, needle", [
    ({"FOLDNET_CLUSTER_WAIT": "abc"}, "FOLDNET_CLUSTER_WAIT='abc'"),
    ({"FOLDNET_CLUSTER_WAIT": "nan"}, "FOLDNET_CLUSTER_WAIT='nan'"),
    ({"TF_CONFIG_INDEX": "5"}, "task 'worker' 5 is not in the cluster"),
])
def test_bad_cluster_environment_is_a_config_error(monkeypatch, env, needle):
    import json

    from foldnet.core.errors import ConfigError
    from foldnet.engine import workers

    index = int(env.pop("TF_CONFIG_INDEX", 0))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": index}}))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        workers.check_environment()
