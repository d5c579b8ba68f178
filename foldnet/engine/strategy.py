"""Distribution strategy and mixed precision.

``get_strategy`` picks, in this order:

1. ``TPUStrategy`` when ``tpu`` is given: a TPU name, a ``grpc://host:port``
   address, or ``"local"`` on a TPU VM. A TPU that does not resolve or
   initialise raises ``TPUUnavailableError``; there is no silent fallback.
2. ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers.
3. ``MirroredStrategy`` over an explicit ``devices`` list (e.g. the logical
   CPUs made by ``split_cpu`` in tests), or over all GPUs when several are
   visible.
4. The default strategy (one replica: the GPU if there is one, else the CPU).

Only TensorFlow is used (no cloud-tpu-client).
"""
import json
import logging
import os
import socket
import threading
import time

import tensorflow as tf

from foldnet.core.errors import ConfigError
from foldnet.engine import workers

log = logging.getLogger(__name__)

keras = tf.keras

MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16", "float32")


class TPUUnavailableError(RuntimeError):
    """The requested TPU could not be resolved, reached or initialised."""


def _resolve_tpu(tpu, timeout):
    """TPUClusterResolver(tpu) in a worker thread, bounded by ``timeout`` seconds.

    Resolving a TPU *name* queries the GCE metadata server / Cloud TPU API; off
    Google Cloud that can hang on an unreachable host, hence the time limit.
    """
    result = {}

    def work():
        try:
            result["resolver"] = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        except Exception as error:  # reported to the caller below
            result["error"] = error

    thread = threading.Thread(target=work, name="tpu-resolver", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TPUUnavailableError(
            f"TPU {tpu!r} did not resolve within {timeout:g} s (TPUClusterResolver is "
            "probably waiting for the GCE metadata server / Cloud TPU API). Check the "
            "TPU name and zone, pass a grpc://host:port address, or 'local' on a TPU VM."
        )
    if "error" in result:
        error = result["error"]
        raise TPUUnavailableError(
            f"TPU {tpu!r} could not be resolved: {type(error).__name__}: {error}. "
            "Pass a TPU name reachable from this machine, a grpc://host:port address, "
            "or 'local' on a TPU VM; omit --tpu to run on GPU/CPU."
        ) from error
    return result["resolver"]


def _tpu_strategy(tpu, timeout):
    resolver = _resolve_tpu(tpu, timeout)
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, ValueError, RuntimeError) as error:
        raise TPUUnavailableError(
            f"TPU {tpu!r} (master {resolver.master()!r}) could not be initialised: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def _tf_config_workers(tf_config):
    if not tf_config:
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _unreachable(peers, deadline):
    """The peers that accept no TCP connection before ``deadline`` (time.time()), retried every 0.5 s."""
    waiting = list(peers)
    while waiting:
        still = []
        for peer in waiting:
            try:
                socket.create_connection(peer[1:], timeout=1.0).close()
            except OSError:
                still.append(peer)
        waiting = still
        if not waiting or time.time() >= deadline:
            break
        time.sleep(0.5)
    return [p[0] for p in waiting]


def wait_for_workers(tf_config, wait):
    """Wait at most ``wait`` seconds for every other task of ``tf_config`` to be started; ConfigError
    naming those that are not.

    TensorFlow's own start-up waits for the others without a limit and holds the interpreter while
    it does, so the check comes first: each worker listens on its own TF_CONFIG port (until
    TensorFlow takes it over) and connects to every other one's.
    """
    own, peers = workers.cluster_addresses(tf_config)
    listener = None
    try:
        listener = socket.create_server(own, reuse_port=False)
    except OSError:
        listener = None  # the port is taken (a server of ours already runs): the others can reach it
    try:
        missing = _unreachable(peers, time.time() + wait)
    finally:
        if listener is not None:
            listener.close()
    if missing:
        raise ConfigError(f"the workers {', '.join(missing)} of TF_CONFIG did not start within {wait:g} s "
                          "(FOLDNET_CLUSTER_WAIT); start the same command on every worker")


def _multi_worker_strategy():
    """MultiWorkerMirroredStrategy with bounded waits.

    TensorFlow waits forever for the other workers at start and checks a
    running cluster's health every 30 s. Here the start waits at most
    ``FOLDNET_CLUSTER_WAIT`` seconds (default 600; ``wait_for_workers``) and health is checked every
    ``FOLDNET_HEALTH_INTERVAL`` seconds (default 30): when a worker dies, the
    others' collectives are aborted and they stop with an error (rerun all
    workers to resume). These are class settings TensorFlow reads when the
    strategy starts.
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars

    wait = workers.seconds_setting("FOLDNET_CLUSTER_WAIT", 600)
    interval = workers.seconds_setting("FOLDNET_HEALTH_INTERVAL", 30)
    wait_for_workers(os.environ["TF_CONFIG"], wait)
    ext = cars.CollectiveAllReduceExtended
    ext._check_health_initial_timeout = wait
    ext._check_health_interval = interval
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        if "Timeout waiting for the cluster" in str(error):
            raise ConfigError(
                f"the other workers of TF_CONFIG did not join within {wait:g} s "
                "(FOLDNET_CLUSTER_WAIT); start the same command on every worker") from error
        raise


def get_strategy(tpu=None, devices=None, tpu_resolve_timeout=60.0):
    """Return the ``tf.distribute.Strategy`` to build and train models under; logs one line naming it.

    tpu: TPU name, ``grpc://`` address or ``"local"``; None or "" for no TPU.
    devices: explicit device names for a MirroredStrategy (e.g.
        ``["/cpu:0", "/cpu:1"]`` after ``split_cpu(2)``).
    tpu_resolve_timeout: seconds to wait for a TPU name to resolve.
    """
    if tpu:
        strategy, detail = _tpu_strategy(tpu, tpu_resolve_timeout), f"TPU {tpu}"
    elif _tf_config_workers(os.environ.get("TF_CONFIG", "")) > 1:
        strategy = _multi_worker_strategy()
        detail = f"{_tf_config_workers(os.environ['TF_CONFIG'])} workers from TF_CONFIG"
    elif devices:
        strategy, detail = tf.distribute.MirroredStrategy(devices=list(devices)), ", ".join(devices)
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
        detail = f"{len(tf.config.list_logical_devices('GPU'))} GPUs"
    else:
        strategy = tf.distribute.get_strategy()
        detail = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    log.info(f"strategy: {type(strategy).__name__} ({detail}), replicas: {strategy.num_replicas_in_sync}")
    return strategy


def set_mixed_precision(policy):
    """Set the global Keras dtype policy; returns its name.

    policy: "mixed_float16" (GPUs), "mixed_bfloat16" (TPUs, recent CPUs),
    or "none" / None / "float32" for full precision.
    """
    name = "float32" if policy in (None, "none", "") else policy
    if name not in MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"unknown mixed precision policy {policy!r}; use one of "
            "'mixed_float16', 'mixed_bfloat16', 'none'"
        )
    keras.mixed_precision.set_global_policy(name)
    return name


def split_cpu(n):
    """Split the physical CPU into ``n`` logical devices; returns their names.

    Must run before TensorFlow initialises its devices (before any tensor,
    model, dataset or strategy is created).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"split_cpu needs a positive int, got {n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    already = len(current) == n if current is not None else n == 1
    if not already:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as error:
            raise RuntimeError(
                f"split_cpu({n}) was called too late: TensorFlow has already initialised "
                "its devices. Call it first thing, before creating any tensor, model, "
                f"dataset or strategy. ({error})"
            ) from error
    return [d.name for d in tf.config.list_logical_devices("CPU")]
