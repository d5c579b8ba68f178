"""Host memory of one Kelp training pipeline (issue 23): peak resident set size of
``seg_data.train_dataset`` at Kelp size (350 x 350 x 7 int16 tiles, the winner's 7 bands + 17
indices = 24 channels, batch 32, padded to 352), iterated for a number of batches, no model.

Each configuration runs in a fresh process: import TensorFlow, build the features, read VmRSS
(the baseline: TensorFlow itself), take 2 batches (warm-up: the XLA compile of the features and
the shuffle buffer filling) and read VmHWM, reset the peak (/proc/self/clear_refs), iterate the
rest and read VmHWM again. "pipeline after" is that peak - baseline, what the running pipeline
holds: the shuffle buffer of serialized raw tiles, the tiles in flight in the parallel map, the
batch being assembled and the prefetched batches.

Configurations:
  bounded    the defaults: shuffle buffer capped at seg_data.SHUFFLE_BUDGET_MB of serialized tiles,
             PREFETCH_BATCHES finished batches, tf.data autotune RAM budget AUTOTUNE_RAM_MB
  unbounded  before issue 23: shuffle buffer = the shuffle_buffer setting (2048 tiles, here capped
             by the number of tiles written), prefetch AUTOTUNE, no autotune RAM budget

The unbounded shuffle buffer can hold at most the tiles written (shuffle comes before repeat), so
with --tiles N it shows N tiles of it; at the real 2048 it holds 2048 x 1.96 MB = 4 GB.

Usage: python bench/bench_seg_memory.py [--tiles 300] [--batches 20] [--size 350]
Results: bench/out/seg_memory.md
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from common import ROOT, machine, write_out

CHILD = r"""
import json, sys
import foldnet
import tensorflow as tf
from foldnet.raster import spectral
from foldnet.tasks.segmentation import data as seg_data
mode, root, size, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
bands = ["SWIR", "NIR", "R", "G", "B", "QA", "DEM"]
stats = [{"band": b, "min": 0.0, "max": 16000.0, "q01": 4500.0, "q99": 11500.0, "mean": 8000.0, "std": 1500.0}
         for b in bands]
manifest = {"image": {"shape": [size, size, 7], "dtype": "int16", "missing_value": -32768, "bands": bands},
            "band_stats": stats}
names = list(spectral.KELP_WINNER_INDICES)
index_stats = {n: {"min": -1.0, "max": 2.0, "q01": 0.0, "q99": 1.0} for n in names}
features = spectral.Features(manifest, bands=["R", "G", "B", "SWIR", "NIR", "QA", "DEM"], indices=names,
                             index_stats=index_stats)
if mode == "unbounded":
    seg_data.SHUFFLE_BUDGET_MB = 10 ** 9
    seg_data.PREFETCH_BATCHES = tf.data.AUTOTUNE
    seg_data.AUTOTUNE_RAM_MB = None
files = sorted(f"{root}/{n}" for n in __import__("os").listdir(root))
shuffle = seg_data.shuffle_tiles(2048, features, seg_data.SHUFFLE_BUDGET_MB)
ds = seg_data.train_dataset(files, features, 32, augment={"flip": True, "rot90": False}, shuffle_buffer=2048, seed=0)
before = status("VmRSS")
it = iter(ds)
for _ in range(2):  # warm-up: the XLA compile of the features, the shuffle buffer filling
    next(it)
warm = status("VmHWM")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
for _ in range(batches - 2):
    next(it)
print(json.dumps({"before": before, "warm": warm, "peak": status("VmHWM"), "shuffle": shuffle,
                  "tile_mb": seg_data.tile_mb(features)}))
"""


def write_tiles(root, n, size, n_files=8):
    import tensorflow as tf

    from foldnet.tasks.segmentation import records as seg_records

    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(root, f"train-{k:03d}.tfrec")) for k in range(n_files)]
    for i in range(n):
        image = rng.normal(8000, 1500, (size, size, 7)).astype(np.int16)
        image[..., 5] = (rng.random((size, size)) < 0.1).astype(np.int16)
        image[..., 6] = np.where(np.arange(size)[None, :] < size // 4, 30, 0)
        mask = (rng.random((size, size)) < 0.02).astype(np.uint8)
        valid = np.ones((size, size), bool)
        writers[i % n_files].write(seg_records.make_example(f"t{i}", image, mask, valid, ""))
    for w in writers:
        w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=300)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--size", type=int, default=350)
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_tiles(root, a.tiles, a.size)
        for mode in ("bounded", "unbounded"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, root, str(a.size), str(a.batches)], env=env,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((mode, r))
            print(mode, r, flush=True)
    lines = [f"# Host memory of one Kelp training pipeline ({machine()})", "",
             f"{a.tiles} tiles of {a.size}x{a.size}x7 int16 written, batch 32, 24 channels (7 bands + the 17 "
             f"winner indices), {a.batches} batches iterated, no model.", "",
             "| pipeline | shuffle buffer (tiles) | RSS before (MB) | peak, first 2 batches (MB) | "
             "peak after (MB) | pipeline after (MB) |", "|---|---|---|---|---|---|"]
    for mode, r in rows:
        shuffle = r["shuffle"] if mode == "bounded" else f"2048 (holds {min(2048, a.tiles)})"
        lines.append(f"| {mode} | {shuffle} | {r['before']:.0f} | {r['warm']:.0f} | {r['peak']:.0f} | "
                     f"{r['peak'] - r['before']:.0f} |")
    lines += ["", f"serialized tile: {rows[0][1]['tile_mb']:.2f} MB"]
    write_out("\n".join(lines) + "\n", "seg_memory")


if __name__ == "__main__":
    main()
