"""Peak memory of ensembling test predictions: streaming average_test vs stack-then-mean.

Writes MEMBERS x FOLDS prediction files (Contract 2; rows shuffled per file)
into a temporary directory, then measures with tracemalloc, in one process:

- streaming: ``foldnet.ensemble.averaging.average_test`` (running sum + one array at a time)
- naive: read every file, align rows, ``np.stack`` them all, then mean

Prints a Markdown table and writes bench/out/ensemble.md. Not a test.

    .venv/bin/python bench/bench_ensemble.py [--members 6] [--folds 5] [--rows 2000] [--classes 2265]
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
import pandas as pd

from foldnet.core import report
from foldnet.ensemble import averaging
from foldnet.io import rundir
from foldnet.tasks.classification.task import TASK as CLASSIFICATION

MB = 1024 * 1024


def write_members(root, members, folds, ids, n_classes, n_tta, seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for m in range(members):
        run = os.path.join(root, f"member{m}")
        for fold in range(folds):
            os.makedirs(os.path.join(run, f"fold_{fold}"))
            perm = rng.permutation(len(ids))
            outputs = rng.random((n_tta, len(ids), n_classes), dtype=np.float32)
            np.savez(os.path.join(run, f"fold_{fold}", "test.npz"), ids=ids[perm], outputs=outputs,
                     labels=np.full(len(ids), -1, np.int64), tta_names=np.array(["identity"] * n_tta),
                     label_map_fingerprint=np.array("bench"), weights_fingerprint=np.array(f"{m}-{fold}"))
        runs.append(run)
    return runs


def naive_average(runs, ids):
    """Every file in memory at once, stacked, then averaged (equal members, equal folds)."""
    arrays = []
    for run in runs:
        for _, path in rundir.prediction_files(run, "test"):
            with np.load(path) as npz:
                rows = pd.Index(npz["ids"]).get_indexer(ids)
                arrays.append(rundir.reduce_tta(npz["outputs"])[rows])
    return np.stack(arrays).mean(axis=0)


def measure(fn):
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    return result, (tracemalloc.get_traced_memory()[1] - base) / MB, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=6)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--classes", type=int, default=2265)
    p.add_argument("--tta", type=int, default=1)
    p.add_argument("--out", default=os.path.join(common.OUT_DIR, "ensemble.md"))
    args = p.parse_args(argv)

    ids = np.array([f"ID{i:06d}" for i in range(args.rows)])
    array_mb = args.tta * args.rows * args.classes * 4 / MB
    sum_mb = args.rows * args.classes * 4 / MB
    root = tempfile.mkdtemp(prefix="bench-ensemble-")
    try:
        runs = write_members(root, args.members, args.folds, ids, args.classes, args.tta)
        tracemalloc.start()
        streamed, s_peak, s_time = measure(lambda: averaging.average_test(runs, ids, task=CLASSIFICATION))
        del streamed
        naive, n_peak, n_time = measure(lambda: naive_average(runs, ids))
        tracemalloc.stop()
        check = averaging.average_test(runs, ids, task=CLASSIFICATION)
        max_diff = float(np.abs(check - naive).max())
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n_files = args.members * args.folds
    rows = [
        {"method": "streaming average_test", "peak MB": s_peak, "x one array": s_peak / array_mb, "seconds": s_time},
        {"method": "naive stack-then-mean", "peak MB": n_peak, "x one array": n_peak / array_mb, "seconds": n_time},
        {"method": "floor: running sum + one array", "peak MB": sum_mb + array_mb,
         "x one array": (sum_mb + array_mb) / array_mb, "seconds": None},
    ]
    text = (
        f"# Ensemble memory: {n_files} prediction files ({args.members} members x {args.folds} folds), "
        f"{args.rows} rows x {args.classes} classes x {args.tta} TTA float32 = {array_mb:.1f} MB each\n\n"
        + report.markdown_table(rows, ["method", "peak MB", "x one array", "seconds"], digits=2)
        + f"\nnaive / streaming peak: {n_peak / s_peak:.1f}x. Streaming and naive results differ by at most "
        f"{max_diff:.1e} (float32 running sum). Peaks by tracemalloc (numpy allocations included).\n"
    )
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
