"""Training under MirroredStrategy with 2 replicas (the CPU split into 2 logical devices)."""
import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import sys, json
import foldnet
from foldnet.tasks.classification.task import TASK as CLASSIFICATION
from foldnet.tasks.classification.labels import load_label_map
from foldnet.engine import strategy
devices = strategy.split_cpu(2)
from foldnet.engine import config
from foldnet.core import logs
from foldnet.io import records
from foldnet.io import rundir
from foldnet.engine import train
from foldnet.engine import predict
logs.setup()
tfrec, run_dir = sys.argv[1], sys.argv[2]
strat = strategy.get_strategy(devices=devices)
manifest = records.load_manifest(tfrec)
cfg = config.make_config(arch="tiny_cnn", dim=16, batch_size=8, n_epochs=2, tfrec_dir=tfrec, run_dir=run_dir,
                         verbose=0, early_stop_patience=0, aug_number=9, aug_probability=0.5)
model = train.train_fold(cfg, 0, manifest, run_dir, strat)
p = rundir.fold_paths(run_dir, 0)
lm = load_label_map(manifest)
predict.predict_split(model, records.fold_files(manifest, [0]), p["oof"], dict(cfg, tta_number=1), lm.fingerprint(),
                      rundir.weights_fingerprint(p["best"]), manifest["folds"][0]["n_examples"], task=CLASSIFICATION)
print(json.dumps({"replicas": strat.num_replicas_in_sync, "kind": type(strat).__name__}))
"""


def test_mirrored_strategy_two_replicas(tiny_tfrec, tmp_path):
    run_dir = str(tmp_path / "member")
    # oneDNN's CPU kernels fail on the second logical CPU device ("input depth must be
    # evenly divisible by filter depth") under MirroredStrategy: they are switched off
    # for this CPU-only stand-in of a multi-GPU machine.
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    out = subprocess.run([sys.executable, "-c", SCRIPT, tiny_tfrec, run_dir], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info == {"replicas": 2, "kind": "MirroredStrategy"}
    assert "replicas: 2" in out.stdout
    done = json.load(open(os.path.join(run_dir, "fold_0", "done.json")))
    assert done["epochs"] == 2
    with np.load(os.path.join(run_dir, "fold_0", "oof.npz")) as z:
        assert z["outputs"].shape[0] == 2
        np.testing.assert_allclose(z["outputs"].sum(-1), 1.0, rtol=1e-4)
