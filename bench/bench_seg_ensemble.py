"""Peak memory of the segmentation ensemble vs the number of members and folds.

For each (members, folds) of a grid, writes the prediction files of a
segmentation ensemble (Contract 2: uint8 probability maps [n_tta, n, H, W],
rows shuffled per file) into a temporary directory: every fold predicts all
test tiles, and the folds share the OOF tiles. Then measures with tracemalloc
(numpy allocations; memory-mapped file pages are the OS's page cache and are
not counted), in one process:

- test: ``averaging.average_test`` (fold x TTA x member weighted average,
  streaming; holds the float32 running sum of the test maps);
- OOF streamed: ``weightfit.oof_report`` (member scores, the blend's scores and
  the threshold fit, as ``run_inference.sh`` runs them);
- OOF in memory: what the ensemble did before streaming: every member's
  TTA-mean OOF maps decoded to float32 (``rundir.load_oof``), then blended.

Prints a Markdown table and writes bench/out/seg_ensemble.md. Not a test.

    .venv/bin/python bench/bench_seg_ensemble.py [--tiles 240] [--size 160] [--tta 2]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import common  # noqa: E402  (first: puts the repo on sys.path)
import numpy as np

from foldnet.core import report
from foldnet.ensemble import averaging, weightfit
from foldnet.io import rundir
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation.task import SegSpec  # noqa: E402

MB = 1024 * 1024
GRID = ((1, 2), (1, 5), (2, 5), (4, 2), (4, 5))


def write_run(run, folds, test_ids, oof_ids, truth, size, n_tta, spec, task, rng):
    for fold in range(folds):
        d = rundir.fold_dir(run, fold)
        os.makedirs(d)
        perm = rng.permutation(len(test_ids))
        maps = rng.integers(0, 256, (n_tta, len(test_ids), size, size), dtype=np.uint8)
        rundir.save_predictions(os.path.join(d, "test.npz"), test_ids[perm], maps,
                                np.zeros((len(test_ids), size, size), np.uint8), ["identity", "flip_lr"][:n_tta],
                                spec.fingerprint(), f"{run}-{fold}")
        rows = np.arange(fold, len(oof_ids), folds)
        noise = rng.integers(0, 90, (n_tta, len(rows), size, size))
        maps = np.clip(truth[rows][None] * 165 + noise, 0, 255).astype(np.uint8)
        rundir.save_predictions(os.path.join(d, "oof.npz"), oof_ids[rows], maps, truth[rows],
                                ["identity", "flip_lr"][:n_tta], spec.fingerprint(), f"{run}-{fold}")
    rundir.write_task(run, "segmentation")


def in_memory_oof(runs, task):
    loaded = [rundir.load_oof(r, task) for r in runs]
    probs = [p for _, _, p in loaded]
    return averaging.blend(probs, np.full(len(runs), 1 / len(runs)))


def measure(fn):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    fn()
    return (tracemalloc.get_traced_memory()[1] - base) / MB, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=240, help="test tiles, and OOF tiles")
    p.add_argument("--size", type=int, default=160, help="tile side in pixels")
    p.add_argument("--tta", type=int, default=2, choices=(1, 2))
    p.add_argument("--out", default=os.path.join(common.OUT_DIR, "seg_ensemble.md"))
    args = p.parse_args(argv)

    task = tasks.get("segmentation")
    spec = SegSpec([args.size, args.size, 4], ["B02", "B03", "B04", "B08"], "cloud", "{id}.tif")
    rng = np.random.default_rng(0)
    test_ids = np.array([f"t{i:05d}" for i in range(args.tiles)])
    oof_ids = np.array([f"o{i:05d}" for i in range(args.tiles)])
    truth = (rng.random((args.tiles, args.size, args.size)) < 0.3).astype(np.uint8)
    sum_mb = args.tiles * args.size * args.size * 4 / MB
    rows = []
    for members, folds in GRID:
        root = tempfile.mkdtemp(prefix="bench-seg-ensemble-")
        try:
            runs = [os.path.join(root, f"m{m}") for m in range(members)]
            for run in runs:
                write_run(run, folds, test_ids, oof_ids, truth, args.size, args.tta, spec, task, rng)
            tracemalloc.start()
            test_peak, test_s = measure(lambda: averaging.average_test(runs, test_ids, task=task))
            oof_peak, oof_s = measure(lambda: weightfit.oof_report(runs, np.full(members, 1 / members), spec,
                                                                   "dice", False, task=task))
            naive_peak, _ = measure(lambda: in_memory_oof(runs, task))
            tracemalloc.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append({"members": members, "folds": folds, "test files": members * folds,
                     "test peak MB": test_peak, "test KB/tile": test_peak * 1024 / args.tiles, "test s": test_s,
                     "OOF streamed peak MB": oof_peak, "OOF s": oof_s, "OOF in memory peak MB": naive_peak})
    item_mb = args.size * args.size * 4 / MB
    text = (
        f"# Segmentation ensemble memory: {args.tiles} test + {args.tiles} OOF tiles of {args.size}x{args.size}, "
        f"{args.tta} TTA view(s), uint8 maps ({common.machine()})\n\n"
        + report.markdown_table(rows, ["members", "folds", "test files", "test peak MB", "test KB/tile", "test s",
                                       "OOF streamed peak MB", "OOF s", "OOF in memory peak MB"], digits=2)
        + f"\nFloor of the test average: its float32 running sum, {sum_mb:.2f} MB ({item_mb * 1024:.0f} KB per "
        f"tile), the output itself. OOF streamed: blocks of {rundir.OOF_BLOCK_ELEMENTS} decoded elements "
        "(split among the members in the blend pass) and counters. Peaks by tracemalloc.\n"
    )
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
