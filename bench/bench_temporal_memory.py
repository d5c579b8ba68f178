"""Peak memory of a training step of the temporal UNet on [B, 12, H, W, 15] batches.

Each configuration runs in a fresh process (CPU, float32, no XLA): build and
compile the model, run one training step (warm-up: the optimizer's slots and
the graph), read the peak resident set size (``ru_maxrss``), run 2 more
steps and read it again; "step memory" is the peak after the steps minus the
resident size measured just before the first step (weights, optimizer slots
and TensorFlow itself excluded). It is what the backward pass keeps alive:
the activations of the B * T encoder passes (months folded into the batch),
the attention pooling and the decoder at batch B.

Reference (the ceiling we compare with): the plain UNet (``unet.build_unet``,
same encoder and decoder) on a batch of B * T single images, which has the
same encoder activations; the ratio says what the months' pooling and the
decoder at batch B add or save. The trade-off of batch size and side: step
memory grows linearly in B * T * H * W (months folded into the batch); a
least-squares line over the rows gives the marginal memory per pixel (the
slope, free of the constant cost of the first step's graph tracing) and the
estimate for other batch sizes and sides: halving the side buys 4x the batch.

Usage: python bench/bench_temporal_memory.py [--arch efficientnet_b0] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from common import ROOT, machine, write_out

CHILD = r"""
import json, resource, sys
import foldnet
import numpy as np
import tensorflow as tf
from foldnet.tasks.temporal import losses as temporal_losses
from foldnet.models import temporal_unet
from foldnet.models import unet
kind, arch, b, t, side, c = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
tf.keras.utils.set_random_seed(0)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
if kind == "temporal":
    model = temporal_unet.build_temporal_unet(arch, t, (side, side), c)
    x = {"image": np.random.rand(b, t, side, side, c).astype("float32"), "months": np.ones((b, t), "float32")}
    y = np.random.rand(b, side, side, 1).astype("float32") * 100
else:  # the plain UNet on B * T single images
    model = unet.build_unet(arch, c, side)
    x = np.random.rand(b * t, side, side, c).astype("float32")
    y = np.random.rand(b * t, side, side, 1).astype("float32")
model.compile(tf.keras.optimizers.AdamW(1e-3), loss=temporal_losses.make_loss("rmse", 400))
before = rss_mb()
model.train_on_batch(x, y)
first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _ in range(2):
    model.train_on_batch(x, y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"before": before, "first": first, "peak": peak, "params": model.count_params()}))
"""


def measure(kind, arch, b, t, side, c=15):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, arch, str(b), str(t), str(side), str(c)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["step_mb"] = r["peak"] - r["before"]
    return r


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    args = parser.parse_args(argv)
    t = args.months
    configs = [(1, 64), (2, 64), (4, 64), (1, 128), (2, 128)] if not args.quick else [(1, 64), (2, 64), (1, 128)]
    rows = []
    for b, side in configs:
        tem = measure("temporal", args.arch, b, t, side)
        ref = measure("plain", args.arch, b, t, side)
        pixels = b * t * side * side
        rows.append((b, side, tem, ref, pixels))
        print(f"B={b} side={side}: temporal {tem['step_mb']:.0f} MB, plain UNet on B*T {ref['step_mb']:.0f} MB",
              flush=True)
    lines = [f"# Temporal UNet: training-step memory of [B, {t}, H, W, 15] batches ({args.arch})", "",
             f"Machine: {machine()}. CPU, float32, one process per row; step memory = peak RSS over 3 training "
             "steps minus the RSS after building and compiling the model (see the script's doc).", "",
             "| B | H = W | B·T·H·W (M px) | temporal UNet MB | KB per px | plain UNet on B·T images MB | "
             "temporal / plain |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, side, tem, ref, pixels in rows:
        lines.append(f"| {b} | {side} | {pixels / 1e6:.2f} | {tem['step_mb']:.0f} | "
                     f"{tem['step_mb'] * 1024 / pixels:.2f} | {ref['step_mb']:.0f} | {tem['step_mb'] / ref['step_mb']:.2f} |")
    lines.append("")
    pixels = np.array([r[4] for r in rows], float)
    for name, idx in (("temporal UNet", 2), ("plain UNet on B·T images", 3)):
        mb = np.array([r[idx]["step_mb"] for r in rows])
        slope, intercept = np.polyfit(pixels, mb, 1)
        lines.append(f"- {name}: step MB = {intercept:.0f} + {slope * 1e6:.0f} x (B·T·H·W in M px), i.e. "
                     f"{slope * 1024:.2f} KB per pixel of the folded batch; at B = 8, T = {t}, 256 x 256 "
                     f"(the 1st place's batch per GPU, {args.arch}): ~{(intercept + slope * 8 * t * 256 * 256) / 1024:.1f} GB")
    lines.append(f"- parameters: temporal {rows[0][2]['params']:,}, plain {rows[0][3]['params']:,}")
    write_out("\n".join(lines) + "\n", "temporal_memory")


if __name__ == "__main__":
    main()
