"""Several worker processes training one member (MultiWorkerMirroredStrategy via TF_CONFIG).

Every worker runs the same ``run.py`` command. Only the chief (task ``chief``,
else ``worker`` 0) writes the run directory and holds its lock; every other
worker works in a private copy of the run directory's resume state (a
temporary folder, removed at the end), so it resumes from the same epoch as
the chief and never writes where the chief writes. Resuming therefore needs
the run directory on a filesystem every worker can read (it is only read by
the non-chief workers, at start).

No TensorFlow here.
"""
import contextlib
import json
import logging
import math
import os
import shutil
import tempfile

from foldnet.core.errors import ConfigError

log = logging.getLogger(__name__)


def task():
    """(type, index, number of workers) from TF_CONFIG; ("", 0, 1) without one."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return "", 0, 1
    try:
        conf = json.loads(text)
        cluster = conf.get("cluster", {})
        t = conf.get("task", {})
        n = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return str(t.get("type", "")), int(t.get("index", 0)), max(n, 1)
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid: {e}") from None


def seconds_setting(name, default):
    """A positive finite number of seconds from environment variable ``name`` (ConfigError otherwise)."""
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={text!r}: expected a number of seconds > 0")
    return value


def cluster_addresses(tf_config):
    """(this task's (host, port), [(task name, host, port)] of the other tasks) of TF_CONFIG;
    ConfigError on a task that is not in the cluster or an address that is not host:port."""
    try:
        conf = json.loads(tf_config)
        cluster, task_ = conf.get("cluster", {}), conf.get("task", {})
        kind, index = str(task_.get("type", "")), task_.get("index", 0)
        items = [(k, list(v)) for k, v in cluster.items()]
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid: {e}") from None
    sizes = dict((k, len(v)) for k, v in items)
    if kind not in sizes or isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < sizes[kind]:
        raise ConfigError(f"TF_CONFIG: task {kind!r} {index!r} is not in the cluster "
                          f"({', '.join(f'{k}: {n}' for k, n in sizes.items()) or 'empty'})")
    own, peers = None, []
    for k, addresses in items:
        for i, address in enumerate(addresses):
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"TF_CONFIG: {k} {i} address {address!r} is not host:port")
            if (k, i) == (kind, index):
                own = (host.strip("[]"), int(port))
            else:
                peers.append((f"{k} {i} ({address})", host.strip("[]"), int(port)))
    return own, peers


def check_environment():
    """ConfigError on a bad TF_CONFIG (of several workers) or FOLDNET_CLUSTER_WAIT / FOLDNET_HEALTH_INTERVAL,
    before anything is written."""
    if task()[2] > 1:
        cluster_addresses(os.environ["TF_CONFIG"])
        seconds_setting("FOLDNET_CLUSTER_WAIT", 600)
        seconds_setting("FOLDNET_HEALTH_INTERVAL", 30)


def is_chief():
    """True unless TF_CONFIG names this process a non-chief worker of a multi-worker cluster."""
    kind, index, n = task()
    if n <= 1 or not kind:
        return True
    if kind == "chief":
        return True
    conf = json.loads(os.environ["TF_CONFIG"])
    has_chief = bool(conf.get("cluster", {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief


@contextlib.contextmanager
def private_run_dir(run_dir):
    """A temporary copy of ``run_dir`` (resume state, finished folds) for a non-chief worker."""
    tmp = tempfile.mkdtemp(prefix="foldnet-worker-")
    try:
        if os.path.isdir(run_dir):
            shutil.copytree(run_dir, os.path.join(tmp, "run"),
                            ignore=shutil.ignore_patterns("*.npz", "tb", "*.png", ".foldnet.lock"))
        else:
            os.makedirs(os.path.join(tmp, "run"))
        yield os.path.join(tmp, "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def writable_run_dir(run_dir):
    """The run directory this process writes, for the whole run.

    The chief (or a single process) gets ``run_dir`` itself, locked
    (runlock: one writer) and cleaned of the temporary files of interrupted
    runs; another worker gets a private copy (see module doc).
    """
    if not is_chief():
        with private_run_dir(run_dir) as tmp:
            kind, index, n = task()
            log.info(f"{kind} {index} of {n} workers: the chief writes {run_dir}; this worker writes a private copy")
            yield tmp
        return
    from foldnet.core import fileio
    from foldnet.core.runlock import run_dir_lock

    with run_dir_lock(run_dir):
        fileio.clean_debris(run_dir)
        yield run_dir
