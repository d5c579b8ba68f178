"""Test-time augmentation: all views in one pass vs one pass per view.

    .venv/bin/python bench/bench_tta.py [--tta 3] [--dim 128] [--reps 3]

Data: photos of about 640x480 (random crops/flips of scikit-learn's sample
photographs, JPEG quality 90) converted by ``create_tfrecords`` into 10 folds
of 60 images in a temporary directory.

For each model (``build_model``, random weights), with ``--tta N`` views
besides the identity, in one run, interleaved (one-pass, per-view, parts;
repeated ``--reps`` times after an untimed round that traces everything):

* one pass: ``foldnet.engine.predict.predict_records`` (ids and labels read once
  without decoding; every image decoded once, expanded to its N+1 views,
  batches of batch * (N+1) rows);
* per view (the original way, implemented here): ids and labels read once,
  then for each of the N+1 views a new dataset (read + parse + decode +
  resize + that one transform, batches of ``batch``) and a ``model.predict``;
* the parts: decode alone (``tta_dataset`` with N = 0 iterated without a
  model) and the model alone on in-memory views, at both batch sizes.

The two ways must give the same outputs (checked). Speed-up = per-view time /
one-pass time, median of per-round ratios. Expected from the parts, if decode
and model do not overlap: (N+1)(1/D + 1/M_b) / (1/D + (N+1)/M_bT) with D the
decode rate and M the model rate (images/s). Machines are noisy and shared:
compare ratios, not absolute times. Writes bench/out/tta.md.
"""
import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import common  # noqa: E402  (first: puts the repo on sys.path; no TensorFlow)

# Spawned workers (photos, shard writer) re-import this file: TensorFlow is
# imported inside functions only.

N_CLASSES = 10


def per_view_predict(model, files, dim, batch, tta_number):
    """The original way: one dataset (read, decode, transform) and one predict per TTA view."""
    import numpy as np
    import tensorflow as tf

    from foldnet.io import tfdata
    from foldnet.tasks.classification import augment, data

    ids, labels = data.read_ids_labels(files)
    outputs = []
    for view in range(tta_number + 1):
        ds = tfdata.read_records(files, deterministic=True).map(data.parse_record, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda _id, img, label, view=view: augment.apply_transform(data.decode_image(img, dim), view),
                    num_parallel_calls=tf.data.AUTOTUNE)
        outputs.append(model.predict(ds.batch(batch).prefetch(tf.data.AUTOTUNE), verbose=0))
    return ids, labels, np.stack(outputs).astype(np.float32)


def bench_model(arch, files, n_images, dim, batch, tta_number, reps):
    import numpy as np
    import tensorflow as tf

    from foldnet.engine import predict
    from foldnet.models import backbones as models
    from foldnet.tasks.classification import data
    from foldnet.tasks.classification.task import TASK as CLASSIFICATION

    tf.keras.backend.clear_session()
    model = models.build_model(arch, N_CLASSES, dim)
    n_views = tta_number + 1
    views, _ = data.tta_dataset(files, dim, batch, tta_number)
    views = tf.concat(list(views), axis=0)  # in-memory [n * T, dim, dim, 3] for the model-alone parts
    decode_only, _ = data.tta_dataset(files, dim, batch, 0)

    def seconds(fn):
        start = time.perf_counter()
        fn()
        gc.collect()
        return time.perf_counter() - start

    measures = {
        "one pass (predict_records)": lambda: seconds(
            lambda: predict.predict_records(model, files, {"dim": dim, "batch_size": batch, "tta_number": tta_number}, task=CLASSIFICATION)),  # noqa: F821, E501
        "per view (N+1 passes)": lambda: seconds(lambda: per_view_predict(model, files, dim, batch, tta_number)),  # noqa: F821
        "decode alone": lambda: seconds(lambda: [None for _ in decode_only]),
        f"model alone, batch {batch * n_views}": lambda: seconds(
            lambda: model.predict(views, batch_size=batch * n_views, verbose=0)),  # noqa: F821
        f"model alone, batch {batch}": lambda: seconds(lambda: model.predict(views, batch_size=batch, verbose=0)),  # noqa: F821
    }
    # untimed round: traces every function (each batch shape), checks the two ways agree
    one = predict.predict_records(model, files, {"dim": dim, "batch_size": batch, "tta_number": tta_number}, task=CLASSIFICATION)
    base = per_view_predict(model, files, dim, batch, tta_number)
    for name in list(measures)[2:]:
        measures[name]()
    max_diff = float(np.abs(one[2] - base[2]).max())
    assert one[0] == base[0] and one[2].shape == base[2].shape == (n_views, n_images, N_CLASSES), "outputs differ"
    assert max_diff < 1e-4, f"one-pass and per-view outputs differ by {max_diff}"

    t = common.interleaved(measures, reps)
    names = list(measures)
    one_s, base_s, dec_s, big_s, small_s = (t[n] for n in names)
    # expected speed-up from the parts, per round
    expected = [(n_views * d + s) / (d + b) for d, b, s in zip(dec_s, big_s, small_s)]
    speedup = common.median_ratio(base_s, one_s)
    rows = [f"| {arch} | {n} | {common.median(t[n]):.2f} | {n_images / common.median(t[n]):.0f} |"
            for n in names[:3]]
    rows += [f"| {arch} | {n} | {common.median(t[n]):.2f} | {n_images * n_views / common.median(t[n]):.0f} views/s |"
             for n in names[3:]]
    summary = (f"| {arch} | {n_images} | {speedup:.2f} | {common.median(expected):.2f} | "
               f"{common.median_ratio(dec_s, big_s):.2f} | {max_diff:.0e} |")
    del model
    tf.keras.backend.clear_session()
    gc.collect()
    return summary, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tta", type=int, default=3, help="TTA views besides the identity")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--models", default="small_cnn:5,efficientnet_b0:2",
                   help="arch:folds,... (folds of 60 images predicted)")
    p.add_argument("--keep", action="store_true", help="keep the temporary dataset")
    p.add_argument("--out", default=os.path.join(common.OUT_DIR, "tta.md"))
    args = p.parse_args(argv)

    import tensorflow as tf  # noqa: F401  (loaded before any timing)

    from foldnet.io import records

    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="bench-tta-")
    summaries, rows = [], []
    try:
        manifest, _, mean_bytes = common.photo_tfrecords(root, 600, n_folds=10)
        for spec in args.models.split(","):
            arch, n_folds = spec.split(":")
            files = records.fold_files(manifest, range(int(n_folds)))
            n_images = sum(f["n_examples"] for f in manifest["folds"][:int(n_folds)])
            summary, model_rows = bench_model(arch, files, n_images, args.dim, args.batch, args.tta, args.reps)
            summaries.append(summary)
            rows += model_rows
            print(summary, *model_rows, sep="\n", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    text = "\n".join([
        f"# TTA: one pass vs one pass per view ({common.machine()}, TF {tf.__version__}, one run, "
        f"{time.perf_counter() - t0:.0f} s)",
        "",
        f"--tta_number {args.tta} ({args.tta + 1} views), dim {args.dim}, batch {args.batch}, JPEGs of about "
        f"640x480 ({mean_bytes / 1e3:.0f} kB each); medians of {args.reps} interleaved repetitions.",
        "",
        "| model | images | speed-up (per view / one pass) | expected from the parts | "
        "decode / model time | max output diff |",
        "|---|---:|---:|---:|---:|---:|",
        *summaries,
        "",
        "Expected: (N+1)(1/D + 1/M_b) / (1/D + (N+1)/M_bT), decode and model not overlapping. "
        "Decode / model time: decoding every image once vs predicting all its views (batch x (N+1)); "
        "the speed-up tends to N+1 when decoding dominates and to 1 when the model does.",
        "",
        "| model | measurement | seconds | images/s |",
        "|---|---|---:|---:|",
        *rows,
        "",
    ])
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
