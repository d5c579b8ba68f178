"""Training input pipeline (foldnet.tasks.classification.data.train_dataset) vs its physical ceiling,
and training fed by the pipeline vs by in-memory tensors.

    .venv/bin/python bench/bench_pipeline.py [--n 600] [--dim 224] [--train-dim 128] [--reps 3]

Data: ``--n`` photos of about 640x480 (random crops/flips of scikit-learn's
sample photographs, a little noise, JPEG quality 90), converted by
``create_tfrecords`` (generic layout, 5 folds) in a temporary directory; every
fold's shards are read.

(a) Pipeline images/s at ``--dim``, batch 32, augmentation on (aug_number 9,
    aug_probability 0.5, the defaults), after warm-up, vs the ceiling: the same
    shards read by tf.data with parse + ``tf.io.decode_jpeg`` only (parallel
    map AUTOTUNE). Also prototypes of fixes (foldnet code is not changed: the
    prototype decode function is swapped in while the dataset is built).
(b) ``model.fit`` images/s of models built by ``build_model`` (``--train-dim``)
    and compiled by ``compile_model`` fed by the pipeline vs by one pre-decoded
    batch repeated in memory; same steps, steps timed after warm-up by a
    callback. On a CPU the pipeline and the model share the cores, so the
    ratio cannot beat R_pipe / (R_pipe + R_model) unless the model leaves
    cores idle (R_pipe: the pipeline alone, R_model: the in-memory rate).

Every row is measured ``--reps`` times, interleaved (A B C A B C ...); the
table shows medians, ratios are medians of per-round ratios. Machines are noisy
and shared: compare ratios, not absolute rates. Writes bench/out/pipeline.md.
"""
import argparse
import contextlib
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
AUG = (9, 0.5)  # the defaults of --aug_number / --aug_probability


# ---------------------------------------------------------------- prototypes

def decode_prototype(dct_scaled=False, method="bilinear", antialias=True):
    """A drop-in for foldnet.tasks.classification.data.decode_image (same output contract).

    method / antialias: of the tf.image.resize to dim x dim (foldnet: bilinear
    with antialias). dct_scaled: a JPEG whose shorter side is >= 2, 4 or 8
    times ``dim`` is decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling
    (header read first by extract_jpeg_shape), so it never goes below ``dim``;
    other formats go through decode_image as before.
    """
    import tensorflow as tf

    def decode(image_bytes, dim):
        def jpeg():
            side = tf.reduce_min(tf.io.extract_jpeg_shape(image_bytes)[:2])
            index = tf.add_n([tf.cast(side >= r * dim, tf.int32) for r in (2, 4, 8)])
            return tf.switch_case(index, [lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r)
                                          for r in (1, 2, 4, 8)])

        def other():
            return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

        image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other) if dct_scaled else other()
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), [dim, dim], method=method, antialias=antialias)
        return tf.clip_by_value(image / 255.0, 0.0, 1.0)
    return decode



def train_dataset(files, dim, batch, cache="none", aug=AUG, decode=None):
    """foldnet.tasks.classification.data.train_dataset, optionally with a prototype decode function
    (traced while the dataset is built, so the patch lasts only that long)."""
    from foldnet.tasks.classification import data

    # the pipeline decodes with data.decode_source, then resizes (a dim x dim source is only cast) and / 255
    prototype = (lambda image_bytes, d: decode(image_bytes, d) * 255.0) if decode else None
    with common.patched(data, "decode_source", prototype) if decode else contextlib.nullcontext():
        return data.train_dataset(files, N_CLASSES, dim, batch, aug[0], aug[1], cache=cache, seed=0)


def ceiling_dataset(files, batch):
    """The same shards, parse + decode_jpeg only; batches of decoded shapes."""
    import tensorflow as tf

    from foldnet.io import records, tfdata

    def decode(serialized):
        return tf.shape(tf.io.decode_jpeg(records.parse_example(serialized)["image"], channels=3))

    ds = tfdata.read_records(files, deterministic=False).map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                                    deterministic=False)
    return ds.repeat().batch(batch).prefetch(tf.data.AUTOTUNE)



# ---------------------------------------------------------------- (a)

def bench_pipeline(files, n_images, dim, batch, reps, n_batches):
    warm_cached = n_images // batch + 3  # the first epoch fills the cache
    variants = [
        # (name, dataset, warm-up batches, what it is)
        ("ceiling: parse + decode_jpeg", ceiling_dataset(files, batch), 3, "ceiling"),
        ("train_dataset cache=none", train_dataset(files, dim, batch), 3, "foldnet"),
        ("train_dataset cache=decoded", train_dataset(files, dim, batch, cache="decoded"), warm_cached, "foldnet"),
        ("train_dataset cache=none, no augmentation", train_dataset(files, dim, batch, aug=(0, 0.0)), 3, "foldnet"),
        ("prototype: resize bilinear without antialias (aliases)",
         train_dataset(files, dim, batch, decode=decode_prototype(antialias=False)), 3, "prototype"),
        ("prototype: resize method=area",
         train_dataset(files, dim, batch, decode=decode_prototype(method="area", antialias=False)), 3, "prototype"),
        ("prototype: DCT-scaled decode + bilinear without antialias",
         train_dataset(files, dim, batch, decode=decode_prototype(dct_scaled=True, antialias=False)), 3,
         "prototype"),
    ]
    measures = {name: (lambda ds=ds, w=w: common.iterate_rate(ds, batch, w, n_batches)) for name, ds, w, _ in variants}
    # untimed: fill the in-memory cache (it outlives the iterator)
    common.iterate_rate(variants[2][1], batch, warm_cached, 1)
    rates = common.interleaved(measures, reps)
    ceiling = rates[variants[0][0]]
    rows = []
    for name, _, _, kind in variants:
        rows.append(f"| {name} | {kind} | {common.median(rates[name]):.0f} | "
                    f"{common.median_ratio(rates[name], ceiling):.2f} |")
    return rows


def bench_ops(files, dim, reps, n_images=8, calls=4):
    """Milliseconds per image of each step of train_dataset's map function,
    called one image at a time (as tf.data's map does) on ``n_images`` records."""
    import tensorflow as tf

    from foldnet.io import records
    from foldnet.tasks.classification import augment

    encoded = [records.parse_example(s)["image"] for s in tf.data.TFRecordDataset(files[:1]).take(n_images)]
    pixels = [tf.io.decode_jpeg(b, channels=3) for b in encoded]
    floats = [tf.cast(p, tf.float32) for p in pixels]
    small = [tf.image.resize(f, [dim, dim]) / 255.0 for f in floats]
    ratio = max([1] + [r for r in (2, 4, 8) if min(pixels[0].shape[:2]) >= r * dim])
    ops = [  # (step, function, inputs, foldnet does it?)
        ("call overhead (identity; subtracted from the rows below)", tf.identity, small, ""),
        ("decode_jpeg, full size (the ceiling's work)", lambda b: tf.io.decode_jpeg(b, channels=3), encoded, "yes"),
        (f"decode_jpeg ratio={ratio} (DCT-scaled)", lambda b: tf.io.decode_jpeg(b, channels=3, ratio=ratio),
         encoded, "no"),
        ("cast to float32", lambda p: tf.cast(p, tf.float32), pixels, "yes"),
        (f"resize to {dim}, bilinear + antialias", lambda f: tf.image.resize(f, [dim, dim], antialias=True),
         floats, "yes"),
        (f"resize to {dim}, bilinear", lambda f: tf.image.resize(f, [dim, dim]), floats, "no"),
        (f"resize to {dim}, area", lambda f: tf.image.resize(f, [dim, dim], method="area"), floats, "no"),
        ("/ 255 and clip to [0, 1]", lambda f: tf.clip_by_value(f / 255.0, 0.0, 1.0), small, "yes"),
        ("random_augment(9, 0.5)", lambda x: augment.random_augment(x, *AUG), small, "yes"),
    ]
    measures = {}
    for name, fn, inputs, _ in ops:
        fn = tf.function(fn)
        for x in inputs:  # trace for every input shape
            fn(x)

        def ms(fn=fn, inputs=inputs):
            start = time.perf_counter()
            for _ in range(calls):
                for x in inputs:
                    fn(x)
            return (time.perf_counter() - start) * 1e3 / (calls * len(inputs))
        measures[name] = ms
    times = common.interleaved(measures, reps)
    overhead = times[ops[0][0]]
    net = {name: [t - o for t, o in zip(times[name], overhead)] for name in times}
    decode = net[ops[1][0]]
    rows = [f"| {ops[0][0]} | | {common.median(overhead):.2f} | |"]
    for name, _, _, done in ops[1:]:
        rows.append(f"| {name} | {done} | {common.median(net[name]):.2f} | "
                    f"{common.median_ratio(net[name], decode):.2f} |")
    return rows


# ---------------------------------------------------------------- (b)

def fit_rate(model, ds, batch, warm, steps):
    """Training images/s of ``steps`` steps of one fit call, after ``warm`` steps."""
    import tensorflow as tf

    times = {}

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            times[step] = time.perf_counter()

    model.fit(ds, steps_per_epoch=warm + steps, epochs=1, verbose=0, callbacks=[Clock()])
    gc.collect()
    return steps * batch / (times[warm + steps - 1] - times[warm - 1])


def bench_feed(files, arch, dim, batch, reps, steps, feeds):
    import tensorflow as tf

    from foldnet.engine import train
    from foldnet.models import backbones as models
    from foldnet.tasks.classification import task as classification

    tf.keras.backend.clear_session()
    model = classification.compile_classifier(models.build_model(arch, N_CLASSES, dim), N_CLASSES,
                                              train.make_optimizer("adam", 1e-3))
    pipelines = {name: make() for name, make in feeds}
    x, y = next(iter(pipelines[feeds[0][0]]))
    memory = tf.data.Dataset.from_tensors((x, y)).repeat()
    warm = 2
    model.fit(memory, steps_per_epoch=2, epochs=1, verbose=0)  # trace + first steps untimed
    measures = {"in-memory batch": lambda: fit_rate(model, memory, batch, warm, steps)}  # noqa: F821 (model is deleted after the timings)
    for name, ds in pipelines.items():
        measures[name] = lambda ds=ds: fit_rate(model, ds, batch, warm, steps)  # noqa: F821 (model is deleted after the timings)
        # the pipeline alone at the same dim, for the no-overlap bound
        measures[name + " (alone)"] = lambda ds=ds: common.iterate_rate(ds, batch, 3, 15)
    rates = common.interleaved(measures, reps)
    mem = rates["in-memory batch"]
    rows = [f"| {arch} | in-memory batch | {common.median(mem):.1f} | 1.00 | |"]
    for name in pipelines:
        fed, alone = rates[name], rates[name + " (alone)"]
        bound = common.median([p / (p + m) for p, m in zip(alone, mem)])
        rows.append(f"| {arch} | {name} | {common.median(fed):.1f} | {common.median_ratio(fed, mem):.2f} | "
                    f"{bound:.2f} (pipeline alone {common.median(alone):.0f} img/s) |")
    del model
    tf.keras.backend.clear_session()
    gc.collect()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="number of photos")
    p.add_argument("--dim", type=int, default=224, help="image side for (a)")
    p.add_argument("--train-dim", type=int, default=128, help="image side for (b)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement in (a)")
    p.add_argument("--models", default="small_cnn:20,efficientnet_b0:8",
                   help="arch:timed_steps,... for (b)")
    p.add_argument("--keep", action="store_true", help="keep the temporary dataset")
    p.add_argument("--out", default=os.path.join(common.OUT_DIR, "pipeline.md"))
    args = p.parse_args(argv)

    import tensorflow as tf  # noqa: F401  (loaded before any timing)

    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        manifest, files, mean_bytes = common.photo_tfrecords(root, args.n)
        print(f"built {args.n} photos ({mean_bytes / 1e3:.0f} kB each) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        rows_ops = bench_ops(files, args.dim, args.reps)
        rows_a = bench_pipeline(files, args.n, args.dim, args.batch, args.reps, args.batches)
        print("\n".join(rows_a), file=sys.stderr)
        rows_b = []
        for spec in args.models.split(","):
            arch, steps = spec.split(":")
            feeds = [("pipeline cache=none", lambda: train_dataset(files, args.train_dim, args.batch))]
            if arch == "small_cnn":
                feeds += [("pipeline cache=decoded",
                           lambda: train_dataset(files, args.train_dim, args.batch, cache="decoded")),
                          ("prototype: resize method=area, cache=none",
                           lambda: train_dataset(files, args.train_dim, args.batch,
                                                 decode=decode_prototype(method="area", antialias=False)))]
            rows_b += bench_feed(files, arch, args.train_dim, args.batch, args.reps, int(steps), feeds)
            print("\n".join(rows_b), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    text = "\n".join([
        f"# Training input pipeline ({common.machine()}, TF {tf.__version__}, one run, "
        f"{time.perf_counter() - t0:.0f} s)",
        "",
        f"{args.n} JPEGs of about 640x480 ({mean_bytes / 1e3:.0f} kB each, quality 90) in "
        f"{len(files)} shards; batch {args.batch}; augmentation aug_number {AUG[0]}, aug_probability {AUG[1]}; "
        f"medians of {args.reps} interleaved repetitions; ratios are medians of per-round ratios.",
        "",
        f"## (a) Pipeline alone, dim {args.dim}, vs bare JPEG decode",
        "",
        "| pipeline | code | images/s | / ceiling |",
        "|---|---|---:|---:|",
        *rows_a,
        "",
        "Ceiling: tf.data over the same shards, parse + tf.io.decode_jpeg (full size) only, parallel map AUTOTUNE. "
        "Prototypes: train_dataset with its decode function swapped (foldnet code unchanged).",
        "",
        f"Where the time goes: each step of the map function alone, one image per call, ms per image "
        f"(median of {args.reps} interleaved rounds) and relative to the full-size JPEG decode:",
        "",
        "| step | in foldnet | ms/image | / decode |",
        "|---|---|---:|---:|",
        *rows_ops,
        "",
        f"## (b) model.fit fed by the pipeline vs by one in-memory batch, dim {args.train_dim}",
        "",
        "| model | feed | train images/s | / in-memory | no-overlap bound |",
        "|---|---|---:|---:|---|",
        *rows_b,
        "",
        "No-overlap bound: R_pipe / (R_pipe + R_model) with R_pipe the pipeline alone and R_model the in-memory "
        "rate, measured in the same rounds: what the ratio would be if the pipeline and the model could not run "
        "at the same time on the shared cores.",
        "",
    ])
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
