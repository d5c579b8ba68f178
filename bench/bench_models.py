"""Training throughput on CPU: plain fp32 vs XLA (jit_compile) vs mixed_bfloat16.

    .venv/bin/python bench/bench_models.py [--dim 64] [--batch 32] [--min-seconds 8]

For ``small_cnn`` and ``efficientnet_b0`` (weights none), each of
fp32 / fp32 + jit_compile / mixed_bfloat16 / mixed_bfloat16 + jit_compile,
all in one run: build, compile (Adam, sparse categorical cross-entropy), warm
up (tracing / XLA compilation excluded), then time ``model.fit`` on one
in-memory batch repeated until ``--min-seconds`` have passed. Reports training
images/s and the ratio to the plain fp32 run of the same model. Machines are
noisy and shared: compare ratios, not absolute rates. Prints a Markdown table
and writes it to bench/out/models.md. Not a test. Takes ~6 minutes on 2 cores,
most of it XLA compiling efficientnet_b0 (~95 s per jit variant).
"""
import argparse
import os
import platform
import time

import common  # noqa: E402,F401  (first: puts the repo on sys.path, imports foldnet before tensorflow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from foldnet.engine import strategy
from foldnet.models import backbones as models

keras = tf.keras
ARCHS = ["small_cnn", "efficientnet_b0"]
VARIANTS = [("fp32", "none", False), ("fp32 + jit", "none", True),
            ("bf16", "mixed_bfloat16", False), ("bf16 + jit", "mixed_bfloat16", True)]
N_CLASSES = 10


def train_images_per_second(arch, dim, batch, policy, jit, min_seconds, warmup_steps):
    keras.backend.clear_session()
    strategy.set_mixed_precision(policy)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, dim, dim, 3).astype("float32"))
    y = tf.constant(rng.randint(0, N_CLASSES, batch))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model = models.build_model(arch, n_classes=N_CLASSES, dim=dim)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", jit_compile=jit)
    model.fit(data, steps_per_epoch=warmup_steps, epochs=1, verbose=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        model.fit(data, steps_per_epoch=warmup_steps, epochs=1, verbose=0)
        steps += warmup_steps
    elapsed = time.perf_counter() - start
    strategy.set_mixed_precision("none")
    return steps * batch / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=8.0, help="timed seconds per run")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps per fit call (first call untimed)")
    parser.add_argument("--out", default=os.path.join(common.OUT_DIR, "models.md"))
    args = parser.parse_args(argv)

    rows = []
    for arch in ARCHS:
        base = None
        for label, policy, jit in VARIANTS:
            rate = train_images_per_second(arch, args.dim, args.batch, policy, jit, args.min_seconds, args.warmup_steps)
            base = rate if base is None else base
            rows.append(f"| {arch} | {label} | {rate:.1f} | {rate / base:.2f} |")
            print(rows[-1], flush=True)

    lines = [
        f"Training images/s on CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"flags: {common.cpu_flags()}; TF {tf.__version__}), dim {args.dim}, batch {args.batch}, "
        "in-memory batch, weights none. Ratio: relative to fp32 of the same model.",
        "",
        "| model | variant | images/s | ratio |",
        "|---|---|---:|---:|",
        *rows,
    ]
    common.write_out("\n".join(lines) + "\n", path=args.out)


if __name__ == "__main__":
    main()
