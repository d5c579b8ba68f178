"""Training augmentation at dim 512 on phone-sized photos: the fused one-warp
augmentation vs the same pipeline without augmentation vs a bare decode.

    .venv/bin/python bench/bench_augment.py [--n 160] [--dim 512] [--reps 3]

Data: ``--n`` JPEGs of 1600x1200 (crops/flips of scikit-learn's sample
photographs, a little noise, quality 90; 30 % portrait), converted by
``create_tfrecords`` with the bytes kept (the default); every fold is read.

Rows (images/s of 12 batches of 32 after warm-up, tf.data over the same
shards; also images per CPU-second of this process, which other jobs on a
shared machine disturb much less than wall-clock rates):

* bare decode: parse + ``tf.io.decode_jpeg`` at full size (the issue's
  reference) and the DCT-scaled decode of ``data.decode_source`` alone;
* ``train_dataset`` without augmentation: decode + resize to dim;
* ``train_dataset`` with the original's augmentation (aug_number 9,
  aug_probability 0.5): flips / 90-degree rotations as a resize + exact
  permutation, 45-degree rotations by ``augment.diagonal`` (now) or, swapped
  in, by one bilinear warp at dim x dim from the decoded image (before);
* the same with the former two-step augmentation (resize to dim, then the
  45-degree rotations rotate, crop and resize again), swapped into
  ``data.augment_image`` while the dataset is built;
* photo augmentation (flip_lr, shift/scale 0.25, rotate 15): one bilinear warp
  per image;
* TTA with all 10 views in one pass (``data.tta_views``), now vs before.

Also the in-model option (``augment.GeometricAugment``, XLA-compiled as in a
jit-compiled training step) on this CPU: images/s of the layer on a batch of
32 already at dim, vs the pipeline without augmentation. Writes bench/out/augment.md. Ratios are medians of per-round
ratios of interleaved rounds (A B C A B C ...).
"""
import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time

import common  # noqa: E402  (first: puts the repo on sys.path; no TensorFlow)
import numpy as np

# Spawned workers (photos, shard writer) re-import this file: TensorFlow is
# imported inside functions only.

N_CLASSES = 10
ORIGINAL = dict(aug_number=9, aug_probability=0.5)
PHOTO = dict(aug_number=1, aug_probability=0.5, aug_crop_scale=0.25, aug_rotate=15.0)


# ---------------------------------------------------------------- the former augmentation

def former_rotate(image, degrees):
    """The former augment.rotate: ImageProjectiveTransformV3, border pixels repeated."""
    import tensorflow as tf

    from foldnet.tasks.classification import augment

    side = image.shape[0]
    matrix = augment._about_centre(augment._rotation(degrees), side)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.constant(matrix.reshape(1, 9)[:, :8], tf.float32),
        output_shape=[side, side], fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")[0]


def former_augment_image(source, dim, aug_number=0, aug_probability=0.0, aug_crop_scale=0.0, aug_rotate=0.0,
                         aug_photometric=0.0):
    """What train_dataset did before the fused warp: resize to dim, then a random
    shift/scale/rotation warp of the dim x dim image, then a flip / 90-degree
    rotation / 45-degree rotation + central crop + resize back."""
    import tensorflow as tf

    from foldnet.tasks.classification import augment, data

    image = data.resize_image(source, dim)
    if aug_crop_scale > 0 or aug_rotate > 0:
        matrices, _ = augment.random_geometry(1, dim, 0, 0.0, aug_crop_scale, aug_rotate)
        image = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None], transforms=tf.reshape(matrices, [1, 9])[:, :8], output_shape=[dim, dim],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]
    if aug_number and aug_probability:
        start = math.ceil(dim * (1.0 - augment.CROP_FRACTION) / 2.0)

        def diagonal(degrees):
            rotated = former_rotate(image, degrees)[start:dim - start, start:dim - start]
            return tf.image.resize(rotated, [dim, dim])

        branches = [lambda i=i: augment._exact(image, i) for i in range(augment.N_EXACT)]
        branches += [lambda d=d: diagonal(d) for d in (45, 135, 225, 315)]
        chosen = tf.random.uniform([], 1, aug_number + 1, dtype=tf.int32)
        index = tf.where(tf.random.uniform([]) < aug_probability, chosen, 0)
        image = tf.ensure_shape(tf.switch_case(index, branches), [dim, dim, 3])
    if aug_photometric > 0:
        image = augment.random_photometric(image, aug_photometric)
    return image


def former_tta_views(image_bytes, dim, tta_number):
    """Before: decode_image, then each view from the dim x dim image (45-degree views
    rotated, cropped and resized)."""
    import tensorflow as tf

    from foldnet.tasks.classification import augment, data

    image = data.decode_image(image_bytes, dim)
    start = math.ceil(dim * (1.0 - augment.CROP_FRACTION) / 2.0)
    views = [augment._exact(image, i) for i in range(augment.N_EXACT)]
    for degrees in (45, 135, 225, 315)[:max(0, tta_number + 1 - augment.N_EXACT)]:
        rotated = former_rotate(image, degrees)[start:dim - start, start:dim - start]
        views.append(tf.image.resize(rotated, [dim, dim]))
    return tf.stack(views[:tta_number + 1])



# ---------------------------------------------------------------- datasets

def bilinear_diagonal(source, index, dim):
    """The 45-degree transforms before ``augment.diagonal``: one bilinear warp at dim x dim
    from the source at ``transform_matrix``'s points (4 reads per value, 3x the cost)."""
    import tensorflow as tf

    from foldnet.tasks.classification import augment

    shape = tf.shape(source)
    matrices = tf.constant(np.stack([augment.transform_matrix(name, dim) for name in augment.TRANSFORMS]),
                           tf.float32)
    return augment.warp(source, tf.matmul(augment.resize_matrix(shape[0], shape[1], dim),
                                          tf.gather(matrices, index)), dim)


def _patches(former=False, bilinear=False):
    from foldnet.tasks.classification import augment, data

    stack = contextlib.ExitStack()
    if former:
        stack.enter_context(common.patched(data, "augment_image", former_augment_image))
    if bilinear:
        stack.enter_context(common.patched(augment, "diagonal", bilinear_diagonal))
    return stack


def train_dataset(files, dim, batch, former=False, bilinear=False, **aug):
    from foldnet.tasks.classification import data

    with _patches(former, bilinear):
        return data.train_dataset(files, N_CLASSES, dim, batch, cache="none", seed=0, **aug)


def decode_dataset(files, batch, fn):
    """Parse + ``fn(image_bytes)`` only, batches of the decoded shapes."""
    import tensorflow as tf

    from foldnet.io import records, tfdata

    ds = tfdata.read_records(files, deterministic=False).map(lambda s: tf.shape(fn(records.parse_example(s)["image"])),
                                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.repeat().batch(batch).prefetch(tf.data.AUTOTUNE)


def tta_dataset(files, dim, batch, tta_number, former=False, bilinear=False):
    import tensorflow as tf

    from foldnet.io import records, tfdata
    from foldnet.tasks.classification import data

    views = former_tta_views if former else data.tta_views
    with _patches(bilinear=bilinear):
        ds = tfdata.read_records(files, deterministic=False).map(
            lambda s: views(records.parse_example(s)["image"], dim, tta_number), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False)
    return ds.repeat().batch(batch).prefetch(tf.data.AUTOTUNE)


CPU_RATES = {}


def timed(name, ds, batch, warm, n):
    """Wall-clock images/s (returned) and images per CPU-second of this process
    (kept in CPU_RATES[name]; all tf.data threads count, other processes do not)."""
    it = iter(ds)
    for _ in range(warm):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del it
    CPU_RATES.setdefault(name, []).append(n * batch / cpu)
    return n * batch / wall



def layer_rate(dim, batch, reps_inner=3, **settings):
    """Images/s of GeometricAugment (training mode) on one batch at dim, on this CPU."""
    import tensorflow as tf

    from foldnet.tasks.classification import augment

    layer = augment.GeometricAugment(**settings)
    x = tf.random.uniform([batch, dim, dim, 3])
    fn = tf.function(lambda images: layer(images, training=True), jit_compile=True)  # as in an XLA-compiled step
    fn(x)

    def measure():
        start = time.perf_counter()
        for _ in range(reps_inner):
            fn(x).numpy()
        return reps_inner * batch / (time.perf_counter() - start)
    return measure


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=160, help="number of photos")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    p.add_argument("--keep", action="store_true", help="keep the temporary dataset")
    p.add_argument("--out", default=os.path.join(common.OUT_DIR, "augment.md"))
    args = p.parse_args(argv)

    import tensorflow as tf

    from foldnet.tasks.classification import data

    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="bench-augment-")
    dim, batch = args.dim, args.batch
    try:
        _, files, mean_bytes = common.photo_tfrecords(root, args.n, size=(1600, 1200))
        built = time.perf_counter() - t0
        print(f"built {args.n} photos ({mean_bytes / 1e3:.0f} kB each) in {built:.0f} s", file=sys.stderr)
        variants = [  # (name, dataset, what it is)
            ("bare parse + decode_jpeg, full size", decode_dataset(files, batch, lambda b: tf.io.decode_jpeg(
                b, channels=3)), "reference"),
            ("parse + DCT-scaled decode (decode_source)", decode_dataset(
                files, batch, lambda b: data.decode_source(b, dim)), "ceiling"),
            ("train_dataset, no augmentation", train_dataset(files, dim, batch), "base"),
            ("train_dataset, original aug (9, 0.5): 45-degree views by diagonal (now)",
             train_dataset(files, dim, batch, **ORIGINAL), "aug"),
            ("train_dataset, original aug (9, 0.5): 45-degree views by bilinear warp (before)",
             train_dataset(files, dim, batch, bilinear=True, **ORIGINAL), "aug"),
            ("train_dataset, original aug (9, 0.5), former two-step",
             train_dataset(files, dim, batch, former=True, **ORIGINAL), "aug"),
            ("train_dataset, photo aug (flip_lr, shift/scale 0.25, rotate 15), fused",
             train_dataset(files, dim, batch, **PHOTO), "aug"),
            ("TTA 10 views one pass (tta_number 9), diagonal (now)", tta_dataset(files, dim, 8, 9), "tta"),
            ("TTA 10 views one pass (tta_number 9), bilinear warp (before)",
             tta_dataset(files, dim, 8, 9, bilinear=True), "tta"),
        ]
        measures = {}
        for name, ds, kind in variants:
            b = 8 if kind == "tta" else batch
            measures[name] = lambda name=name, ds=ds, b=b: timed(name, ds, b, 3, args.batches)
        measures["GeometricAugment layer (9, 0.5), CPU, batch already at dim"] = layer_rate(dim, batch, **{
            "aug_number": 9, "aug_probability": 0.5})
        rates = common.interleaved(measures, args.reps)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    base = rates["train_dataset, no augmentation"]
    bare = rates[variants[0][0]]
    rows = []
    cpu_base = CPU_RATES["train_dataset, no augmentation"]
    for name in rates:
        cpu = (f"{common.median(CPU_RATES[name]):.0f} | {common.median_ratio(CPU_RATES[name], cpu_base):.2f}"
               if name in CPU_RATES else "| ")
        rows.append(f"| {name} | {common.median(rates[name]):.0f} | {common.median_ratio(rates[name], base):.2f} | "
                    f"{common.median_ratio(rates[name], bare):.2f} | {cpu} |")
    text = "\n".join([
        f"# Augmentation at dim {dim} ({common.machine()}, TF {tf.__version__}, one run, "
        f"{time.perf_counter() - t0:.0f} s, of which {built:.0f} s building the photos)",
        "",
        f"{args.n} JPEGs of 1600x1200 ({mean_bytes / 1e3:.0f} kB each, quality 90, bytes kept by create_tfrecords), "
        f"batch {batch} (TTA: 8 images x 10 views); {args.batches} batches per measurement after 3 of warm-up; "
        f"medians of {args.reps} interleaved rounds; ratios are medians of per-round ratios.",
        "",
        "| pipeline | images/s | / no augmentation | / bare decode | images per CPU-second | / no augmentation |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Image-work ceiling of the training pipeline: the DCT-scaled decode alone (every image must be decoded); "
        "the pipeline without augmentation adds one resize, the fused augmentation replaces it by one warp for "
        "the images that need one. The layer rows are the cost of augmenting inside the model when that runs "
        "on this CPU (on an accelerator it runs beside the model, off the input pipeline).",
        "",
    ])
    common.write_out(text, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
