"""Two real worker processes on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) train one fold.

The chief alone writes the run directory; the result matches one process
within tolerance; a worker killed with SIGKILL makes the other stop with an
error (health check), and starting both again resumes from the chief's last
completed epoch, as README's "Several machines" section says. Loopback only,
every wait bounded.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import foldnet  # noqa: F401
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def command(data_dir, tfrec, run_dir, n_epochs):
    return [sys.executable, os.path.join(ROOT, "run.py"), "--arch", "tiny_cnn", "--dim", "16", "--batch_size", "8",
            "--lr", "0.003", "--n_epochs", str(n_epochs), "--steps_per_epoch", "20", "--folds", "0", "--job", "train",
            "--aug_number", "0",
            "--early_stop_patience", "0", "--verbose", "2", "--seed", "1", "--data_dir", data_dir,
            "--tfrec_dir", tfrec, "--run_dir", run_dir, "--cache", "decoded"]


def env_for(ports, index):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    # Bounded waits: joining the cluster, and noticing a dead peer (see strategy._multi_worker_strategy).
    return dict(os.environ, TF_CONFIG=json.dumps(tf_config), FOLDNET_CLUSTER_WAIT="120",
                FOLDNET_HEALTH_INTERVAL="2", TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES="")


def start_workers(cmd, ports, logs):
    procs = []
    for i in range(len(ports)):
        log = open(logs[i], "w")
        procs.append(subprocess.Popen(cmd, env=env_for(ports, i), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    return procs


def wait_all(procs, timeout):
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"workers did not finish within {timeout} s")
    return codes


def test_two_workers_train_like_one_chief_writes_and_a_killed_worker_is_resumed(tiny_turtle_dir, tiny_tfrec,
                                                                                 tmp_path):
    # One process (the reference), started alongside the first two-worker run.
    one = str(tmp_path / "one")
    single = subprocess.Popen(command(tiny_turtle_dir, tiny_tfrec, one, 2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0"))

    # Two workers, one killed with SIGKILL after the first epoch: the chief stops with an error.
    two = str(tmp_path / "two")
    ports = free_ports(2)
    logs = [str(tmp_path / f"w{i}.log") for i in range(2)]
    procs = start_workers(command(tiny_turtle_dir, tiny_tfrec, two, 2), ports, logs)
    state = os.path.join(two, "fold_0", "state", "state.json")
    deadline = time.time() + 180
    while not os.path.exists(state) and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.1)
    assert os.path.exists(state), open(logs[0]).read()[-3000:]
    procs[1].send_signal(signal.SIGKILL)
    codes = wait_all(procs, 90)
    chief_log = open(logs[0]).read()
    if codes[0] == 0:  # the chief finished its last epoch before it noticed: nothing to resume
        pytest.skip("the chief finished before the kill was noticed")
    assert codes[0] == 2 and "error: a worker of the cluster stopped" in chief_log, chief_log[-3000:]
    assert "Traceback" not in chief_log, chief_log[-3000:]
    assert json.load(open(state))["epochs_done"] == 1
    out, _ = single.communicate(timeout=180)
    assert single.returncode == 0, out[-3000:]

    # Both started again with the same command: the fold resumes from the chief's epoch and finishes.
    ports = free_ports(2)
    procs = start_workers(command(tiny_turtle_dir, tiny_tfrec, two, 2), ports, logs)
    codes = wait_all(procs, 180)
    chief_log, other_log = open(logs[0]).read(), open(logs[1]).read()
    assert codes == [0, 0], chief_log[-3000:] + other_log[-3000:]
    assert "2 workers from TF_CONFIG), replicas: 2" in chief_log
    assert "resuming after epoch 1" in chief_log and "resuming after epoch 1" in other_log

    # The chief alone wrote the run directory; the other worker wrote a private copy, now gone.
    assert "this worker writes a private copy" in other_log and "(tiny_cnn, two)" not in other_log
    done_two = json.load(open(os.path.join(two, "fold_0", "done.json")))
    done_one = json.load(open(os.path.join(one, "fold_0", "done.json")))
    assert done_two["epochs"] == done_one["epochs"] == 2
    assert len(open(os.path.join(two, "fold_0", "history.csv")).read().splitlines()) == 3  # header + 2 epochs
    assert not os.path.exists(os.path.join(two, ".foldnet.lock"))
    # Same result as one process within tolerance (same data, global batch and steps; the batch
    # composition differs, so not bit for bit).
    assert abs(done_two["best_value"] - done_one["best_value"]) < 0.25, (done_one, done_two)
