"""Checkpoint selection rules on a map stand-in: which epoch each rule keeps, and that epoch's test score.

One training run per fold records, after every epoch, the validation value the rules see and the
pooled test IoU of that epoch's weights (the test tiles' hidden masks); every rule (best, best after
min_epochs, smoothed, smoothed after min_epochs, last) is then replayed on the recorded validation
curve, so all rules are compared on the same weights. Segmentation (On Cloud N layout), folds by
location.

    python bench/bench_selection.py --data_dir /tmp/cloud --n_epochs 12 --config models/cloud_unet.yaml \\
        --set arch=tiny weights=none batch_size=8
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import foldnet  # noqa: E402,F401


def pick(curve, rule, min_epochs, window, mode="max"):
    """0-based epoch a rule keeps on a validation ``curve`` (the FoldCallback logic, replayed)."""
    sign = 1.0 if mode == "max" else -1.0
    best, kept = None, None
    for e, v in enumerate(curve):
        if rule.startswith("smoothed"):
            if e + 1 < window:
                continue
            v = float(np.mean(curve[e + 1 - window:e + 1]))
        if rule == "last":
            kept = e
            continue
        if e + 1 < min_epochs or not math.isfinite(v):
            continue
        if best is None or sign * v > sign * best:
            best, kept = v, e
    return len(curve) - 1 if kept is None else kept


def main(argv=None):
    import pandas as pd
    import tensorflow as tf

    from foldnet.engine import config, train
    from foldnet.io import records
    from foldnet.raster import submission as seg_submission
    from foldnet.tasks import base as tasks
    from foldnet.tasks.segmentation import metrics as seg_metrics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--config", default="models/cloud_unet.yaml")
    p.add_argument("--run_dir", default="/tmp/bench_selection")
    p.add_argument("--n_epochs", type=int, default=12)
    p.add_argument("--answers_naming", default="cloud")
    p.add_argument("--set", nargs="*", default=[], help="extra run settings as key=value")
    a = p.parse_args(argv)
    extra = [x for kv in a.set for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    cfg = config.parse_config(["--config", a.config, "--data_dir", a.data_dir, "--run_dir", a.run_dir,
                               "--n_epochs", str(a.n_epochs), "--select", "last", "--early_stop_patience", "0",
                               "--overwrite", "true", *extra])
    manifest = records.load_manifest(cfg["tfrec_dir"])
    task = tasks.for_manifest(manifest)
    spec = task.load_spec(manifest)
    test_files = records.test_files(manifest)
    ids, _ = task.read_ids_targets(test_files)
    answers = seg_submission.read_masks(os.path.join(a.data_dir, "answers"), a.answers_naming)
    truth = np.stack([answers[i] for i in ids])

    class TestScore(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.scores = []

        def on_epoch_end(self, epoch, logs=None):
            maps = task.predict_files(self.model, test_files, cfg).mean(0)
            self.scores.append(seg_metrics.pooled_iou(maps >= 0.5, truth))

    min_epochs = int(math.ceil(a.n_epochs / 4))
    rules = {"best": ("best", 0), f"best, min_epochs {min_epochs}": ("best", min_epochs),
             "smoothed (3)": ("smoothed", 0), f"smoothed (3), min_epochs {min_epochs}": ("smoothed", min_epochs),
             "last": ("last", 0)}
    rows = {name: [] for name in rules}
    for fold in range(manifest["n_folds"]):
        train.seed_everything(cfg["seed"] + fold)
        cb = TestScore()
        train.train_fold(cfg, fold, manifest, a.run_dir, tf.distribute.get_strategy(), [cb], task, spec)
        curve = pd.read_csv(os.path.join(a.run_dir, f"fold_{fold}", "history.csv"))[cfg["monitor"]].tolist()
        print(f"fold {fold}: validation {np.round(curve, 3).tolist()}; test IoU {np.round(cb.scores, 3).tolist()}")
        for name, (rule, m) in rules.items():
            e = pick(curve, rule, m, 3, task.monitor_mode(cfg["monitor"]))
            rows[name].append((e + 1, cb.scores[e]))
    print("\n| rule | kept epochs | mean test IoU of the folds' kept models |\n|---|---|---|")
    for name, kept in rows.items():
        print(f"| {name} | {', '.join(str(e) for e, _ in kept)} | {np.mean([s for _, s in kept]):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
