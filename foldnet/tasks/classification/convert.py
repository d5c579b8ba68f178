"""create_tfrecords.py: a dataset (CSV + images) -> sharded TFRecords, folds, label map, manifest.

Output (Contract 1 of docs/DESIGN.md), written into a temporary directory
beside ``out_dir`` and renamed when complete (manifest.json last), so a failed
run leaves no partial output. TensorFlow is imported only when shards are
written, never at import time: spawned image workers re-import the main script.
"""
import os
import string

import numpy as np
import pandas as pd

from foldnet.core import fileio
from foldnet.core.cli import say
from foldnet.core.errors import ConfigError, DataError
from foldnet.io import folds as folds_mod
from foldnet.io import images
from foldnet.io.convert import (
    DEFAULT_SHARD_SIZE,
    input_fingerprint,
    shared_flag_problems,
    staging_dir,
    write_unless_current,
)
from foldnet.tasks.classification import layouts
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL, LabelMap

# ---------------------------------------------------------------- inputs


def base_dir(data_dir, train_csv):
    """Directory that relative generic-layout paths and the default out_dir hang off."""
    return data_dir or os.path.dirname(os.path.abspath(train_csv))


def read_dataset(data_dir, train_csv, test_csv, images_dir, id_col, label_col, path_col, path_pattern,
                 group_col, known_labels_csv, new_label, skip_bad, allow_outside=False):
    """The Turtle Recall layout of ``data_dir``, or the generic layout if ``train_csv`` is given."""
    if train_csv is None:
        if group_col or path_col or path_pattern or test_csv or known_labels_csv:
            raise ConfigError("--test_csv/--path_col/--path_pattern/--group_col/--known_labels_csv "
                              "need --train_csv (generic layout)")
        return layouts.read_turtle(data_dir, skip_bad=skip_bad, new_label=new_label, allow_outside=allow_outside)
    base = base_dir(data_dir, train_csv)
    return layouts.read_generic(
        train_csv=os.path.join(base, train_csv),
        test_csv=None if test_csv is None else os.path.join(base, test_csv),
        images_dir=os.path.join(base, images_dir or "images"),
        id_col=id_col, label_col=label_col, path_col=path_col, path_pattern=path_pattern, group_col=group_col,
        known_labels_csv=None if known_labels_csv is None else os.path.join(base, known_labels_csv),
        new_label=new_label, skip_bad=skip_bad, allow_outside=allow_outside, data_root=base)


def with_corrupt_images(error, max_pixels, workers, progress):
    """``error`` (bad rows) extended with every existing image that does not decode: one error for all."""
    found = getattr(error, "found_images", None)
    if not found:
        return error
    results = images.map_images(images.check_task, [(path, max_pixels) for _, path in found], workers,
                                desc="checking images", progress=progress)
    bad = [f"{image_id} ({path}): {reason}" for (image_id, path), (ok, reason) in zip(found, results) if not ok]
    if not bad:
        return error
    return DataError(f"bad input: {len(error.problems)} bad row(s) and {len(bad)} unreadable image file(s) "
                     "(use --skip_bad to drop them)", error.problems + bad)


# ---------------------------------------------------------------- bad images


def bad_image_messages(bad, root):
    return [f"{job.id} ({os.path.relpath(job.path, root)}): {reason}" for job, reason in bad]


def handle_bad_images(bad, root, skip_bad):
    """Raise one DataError naming every bad image, or return their skipped entries."""
    if not bad:
        return []
    messages = bad_image_messages(bad, root)
    if not skip_bad:
        raise DataError(f"{len(bad)} unreadable image file(s) (use --skip_bad to drop them)", messages)
    return [{"id": job.id, "source": os.path.relpath(job.path, root), "reason": reason} for job, reason in bad]


# ---------------------------------------------------------------- folds


def near_duplicate_clusters(train, threshold, workers, progress):
    """(near-duplicate cluster id per row, [(row, reason)] of unreadable images)."""
    results = list(images.map_images(images.thumb_task, list(train["path"]), workers,
                                     desc="thumbnails", progress=progress))
    bad = [(i, value) for i, (ok, value) in enumerate(results) if not ok]
    # An unreadable image gets a zero thumbnail: similar to nothing.
    thumbs = np.stack([value if ok else np.zeros(images.THUMB_SIZE ** 2, np.float32) for ok, value in results])
    return folds_mod.duplicate_groups(thumbs, threshold), bad


def group_near_duplicates(train, root, threshold, skip_bad, workers, progress):
    """(train without unreadable images, their cluster ids, skipped entries). Raises
    DataError naming every unreadable image unless ``skip_bad``."""
    from foldnet.io.records import Job

    clusters, bad_rows = near_duplicate_clusters(train, threshold, workers, progress)
    bad = [(Job("train", train.at[r, "id"], train.at[r, "path"], -1, train.at[r, "label"]), reason)
           for r, reason in bad_rows]
    skipped = handle_bad_images(bad, root, skip_bad)
    keep = np.setdiff1d(np.arange(len(train)), [r for r, _ in bad_rows])
    return train.iloc[keep].reset_index(drop=True), clusters[keep], skipped


def fold_groups(train, group_col, clusters, held_out=None):
    """Group ids for StratifiedGroupKFold, or None when rows need not stay together.

    held_out: labels whose rows all stay in one fold (``--holdout_individuals``).
    """
    parts = []
    if group_col is not None:
        parts.append(train["group"].to_numpy())
    if clusters is not None:
        parts.append(clusters)
    if held_out:
        parts.append(folds_mod.individual_groups(train["label"], held_out))
    if not parts:
        return None
    groups = parts[0]
    for part in parts[1:]:
        groups = folds_mod.merge_groups(groups, part)
    return groups


def warn_small_classes(labels, n_folds):
    small = folds_mod.small_classes(labels, n_folds)
    if small:
        say("warning: " + folds_mod.small_classes_message(small, n_folds))


def split_identical_images(train, fold):
    """How many training images have a byte-identical copy (another id, same file content) in another fold."""
    import hashlib

    by_hash = {}
    for row, path in enumerate(train["path"]):
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            continue  # reported when the shards are written
        by_hash.setdefault(digest, []).append(row)
    return sum(len(rows) for rows in by_hash.values() if len(rows) > 1 and len({int(fold[r]) for r in rows}) > 1)


def plan_jobs(train, fold, test, label_map, seed):
    """Jobs in write order: each fold's rows shuffled (seeded), then the test rows."""
    from foldnet.io.records import Job

    rng = np.random.default_rng(seed)
    codes = label_map.encode(train["label"])
    jobs = []
    for k in range(int(fold.max()) + 1):
        rows = rng.permutation(np.flatnonzero(fold == k))
        jobs += [Job(f"train-fold{k}", train.at[r, "id"], train.at[r, "path"], int(codes[r]), train.at[r, "label"])
                 for r in rows]
    jobs += [Job("test", i, p, -1, "") for i, p in zip(test["id"], test["path"])]
    return jobs


# ---------------------------------------------------------------- output


def folds_table(train, fold, groups):
    df = pd.DataFrame({"id": train["id"], "label": train["label"], "fold": fold})
    if groups is not None:
        df["group"] = groups
    return df


def build_manifest(n_folds, label_map, result, flags, fingerprint, skipped, n_grouped):
    from foldnet.io.records import FOLDS_CSV, FORMAT_VERSION, LABEL_MAP, image_stats

    fold_parts = [{"fold": k, "n_examples": result.counts.get(f"train-fold{k}", 0),
                   "files": result.files.get(f"train-fold{k}", [])} for k in range(n_folds)]
    return {
        "format_version": FORMAT_VERSION,
        "task": "classification",
        "n_folds": n_folds,
        "n_classes": label_map.n_classes,
        "n_examples": sum(p["n_examples"] for p in fold_parts),
        "label_map": LABEL_MAP,
        "folds_csv": FOLDS_CSV,
        "folds": fold_parts,
        "test": {"n_examples": result.counts.get("test", 0), "files": result.files.get("test", [])},
        "image_stats": image_stats(result.sizes),
        "flags": flags,
        "fingerprint": fingerprint,
        "skipped": skipped,
        "n_grouped": n_grouped,
    }


def write_output(out_dir, jobs, train, fold, groups, label_map, flags, fingerprint, skipped, n_grouped,
                 root, workers, progress):
    """Write shards, label map, folds.csv and (last) the manifest; return the manifest."""
    from foldnet.io import records

    limit = records.parse_shard_size(flags["shard_size"])
    with staging_dir(out_dir) as tmp:
        result = records.write_shards(jobs, tmp, limit, workers, flags["max_side"], flags["jpeg_quality"], progress,
                                      max_pixels=flags["max_pixels"])
        skipped = skipped + handle_bad_images(result.bad, root, flags["skip_bad"])
        written = ~train["id"].isin({job.id for job, _ in result.bad if job.split != "test"}).to_numpy()
        label_map.save(os.path.join(tmp, records.LABEL_MAP))
        table = folds_table(train, fold, groups)[written]
        fileio.atomic_write_text(os.path.join(tmp, records.FOLDS_CSV), table.to_csv(index=False))
        manifest = build_manifest(flags["n_folds"], label_map, result, flags, fingerprint, skipped, n_grouped)
        fileio.atomic_write_json(os.path.join(tmp, records.MANIFEST), manifest)
    manifest["dir"] = out_dir
    return manifest


MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "models")


def member_dims(models_dir=MODELS_DIR):
    """{config name: dim} of the member configs ``models_dir``/*.yaml (none if absent)."""
    import yaml

    dims = {}
    for name in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        if name.endswith(".yaml"):
            with open(os.path.join(models_dir, name)) as f:
                cfg = yaml.safe_load(f)
            if isinstance(cfg, dict) and isinstance(cfg.get("dim"), int):
                dims[name[:-5]] = cfg["dim"]
    return dims


def oversize_warning(image_stats, dims):
    """A warning if the kept images are far larger than the largest member ``dim``
    needs (longer side above 3x dim on average; ``--max_side`` 2x dim is enough), else None."""
    if not dims or not image_stats.get("height"):
        return None
    name, dim = max(dims.items(), key=lambda kv: kv[1])
    longer = max(image_stats["height"]["mean"], image_stats["width"]["mean"])
    if longer <= 3 * dim:
        return None
    return (f"images are kept at a mean longer side of {longer:.0f} px, {longer / dim:.1f}x the largest member dim "
            f"({dim}, models/{name}.yaml): --max_side {2 * dim} would make smaller shards and a faster input "
            f"pipeline with no loss at that dim (see data/README.md)")


def report(manifest, out_dir):
    n_files = sum(len(p["files"]) for p in manifest["folds"]) + len(manifest["test"]["files"])
    print(f"wrote {manifest['n_examples']} training examples ({manifest['n_classes']} classes, "
          f"{manifest['n_folds']} folds) and {manifest['test']['n_examples']} test examples "
          f"in {n_files} shards to {out_dir}")
    if manifest["skipped"]:
        say(f"skipped {len(manifest['skipped'])} bad row(s)/image(s) (listed in manifest.json 'skipped'):")
        for s in manifest["skipped"][:20]:
            say(f"  - {s['id']} ({s['source']}): {s['reason']}")
        if len(manifest["skipped"]) > 20:
            say(f"  ... and {len(manifest['skipped']) - 20} more")


# ---------------------------------------------------------------- entry points


def path_pattern_problem(path_pattern):
    """Why ``--path_pattern`` cannot make a file name from an id, or None."""
    if path_pattern is None:
        return None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(path_pattern) if f is not None}
        path_pattern.format(id="x")
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        return f"--path_pattern {path_pattern!r} is not a valid pattern ({type(e).__name__}: {e}); use e.g. '{{id}}.png'"
    unknown = sorted(fields - {"id"})
    if unknown:
        return (f"--path_pattern {path_pattern!r}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
                "the only field is {id} (double braces {{ }} write a literal brace)")
    if "id" not in fields:
        return f"--path_pattern must contain {{id}}, got {path_pattern!r}"
    return None


def check_flags(data_dir, train_csv, n_folds, jpeg_quality, max_side, group_duplicates, shard_size, path_pattern,
                max_pixels=images.DEFAULT_MAX_PIXELS):
    problems = shared_flag_problems(n_folds, group_duplicates, shard_size)
    if data_dir is None and train_csv is None:
        problems.append("give --data_dir (Turtle Recall layout) or --train_csv (generic layout)")
    if not 1 <= jpeg_quality <= 100:
        problems.append(f"--jpeg_quality must be in 1..100, got {jpeg_quality}")
    if max_side is not None and max_side < 1:
        problems.append(f"--max_side must be >= 1, got {max_side}")
    if path_pattern_problem(path_pattern):
        problems.append(path_pattern_problem(path_pattern))
    if max_pixels is not None and max_pixels < 1:
        problems.append(f"--max_pixels must be >= 1, got {max_pixels}")
    if problems:
        raise ConfigError("; ".join(problems))


# The original Turtle Recall solution split its folds with StratifiedKFold(n_splits=5, shuffle=True,
# random_state=33) over train.csv then extra_images.csv (vecxoz/turtle-recall lib/vecxoz_utils.py
# create_cv_split): the Turtle layout's default seed, so the default folds are the original's.
TURTLE_FOLD_SEED = 33
GENERIC_FOLD_SEED = 42


def create_tfrecords(data_dir=None, out_dir=None, *, train_csv=None, test_csv=None, images_dir=None,
                     id_col="image_id", label_col="label", path_col=None, path_pattern=None, group_col=None,
                     known_labels_csv=None, new_label=DEFAULT_NEW_LABEL, n_folds=5, seed=None,
                     group_duplicates=None, shard_size=DEFAULT_SHARD_SIZE, workers=None, max_side=None,
                     jpeg_quality=95, skip_bad=False, overwrite=False, progress=True,
                     max_pixels=images.DEFAULT_MAX_PIXELS, allow_outside=False, holdout_individuals=0.0):
    """Convert a dataset into a TFRecord directory (Contract 1); return its manifest.

    Without ``train_csv`` ``data_dir`` is read as the Turtle Recall layout;
    with it, as the generic layout (relative CSV paths and ``images_dir``,
    default "images", are relative to ``data_dir`` or the train CSV's folder).
    ``out_dir`` defaults to ``<data dir>/tfrec``. If ``out_dir`` already holds
    a manifest with the same input fingerprint nothing is rewritten (unless
    ``overwrite``). Images must lie inside the data folder unless
    ``allow_outside``, and have at most ``max_pixels`` pixels.
    ``seed`` (fold split and shard order) None: ``TURTLE_FOLD_SEED`` for the
    Turtle Recall layout, ``GENERIC_FOLD_SEED`` for the generic one.
    ``holdout_individuals``: fraction of the individuals kept in one fold
    each (``folds.held_out_individuals``; 0: off). A local
    ``out_dir`` is locked for the conversion (runlock). Raises DataError (bad
    input) or ConfigError (bad flags, busy or foreign ``out_dir``).
    """
    check_flags(data_dir, train_csv, n_folds, jpeg_quality, max_side, group_duplicates, shard_size, path_pattern,
                max_pixels)
    if not 0 <= holdout_individuals < 1:
        raise ConfigError(f"--holdout_individuals is a fraction in [0, 1), got {holdout_individuals}")
    workers = images.default_workers() if not workers else int(workers)
    try:
        dataset = read_dataset(data_dir=data_dir, train_csv=train_csv, test_csv=test_csv, images_dir=images_dir,
                               id_col=id_col, label_col=label_col, path_col=path_col, path_pattern=path_pattern,
                               group_col=group_col, known_labels_csv=known_labels_csv, new_label=new_label,
                               skip_bad=skip_bad, allow_outside=allow_outside)
    except DataError as e:
        raise with_corrupt_images(e, max_pixels, workers, progress) from None
    out_dir = out_dir or os.path.join(base_dir(data_dir, train_csv), "tfrec")
    if seed is None:
        seed = GENERIC_FOLD_SEED if train_csv else TURTLE_FOLD_SEED
    flags = {"layout": "generic" if train_csv else "turtle", "n_folds": n_folds, "seed": seed,
             "shard_size": str(shard_size), "max_side": max_side, "jpeg_quality": jpeg_quality,
             "group_duplicates": group_duplicates, "group_col": group_col, "skip_bad": skip_bad,
             "new_label": new_label, "id_col": id_col, "label_col": label_col, "path_col": path_col,
             "path_pattern": path_pattern, "max_pixels": max_pixels, "allow_outside": allow_outside}
    if holdout_individuals:  # only when set: conversions made before the flag stay current
        flags["holdout_individuals"] = float(holdout_individuals)
    fingerprint = input_fingerprint(dataset, flags)
    return write_unless_current(out_dir, fingerprint, overwrite,
                                lambda: convert_dataset(dataset, out_dir, flags, fingerprint, workers, progress))


def openset_plan(label_map, n_held_out=0):
    """One line: which new-label rule the data will get (said by create_tfrecords)."""
    from foldnet.tasks.classification import openset

    new = label_map.new_label
    if not (~openset.keep_mask(label_map)).any():
        return (f"open-set rule: none (every label is original: no class answers {new!r}; submissions rank "
                "the labels as they are)")
    held = (f"; the {n_held_out} held-out individuals' out-of-fold images count as unseen too" if n_held_out
            else "")
    return (f"open-set rule: fitted out of fold without re-split folds: run.py's openset_features (auto: on for "
            f"this data) stores each image's prototype similarity (the best cosine to the mean features of a "
            f"trained individual), and the same without its own individual's prototype, which simulates an unseen "
            f"individual{held}; {new!r} goes first below the fitted "
            f"threshold, at most {openset.MAX_KNOWN_LOSS} OOF MAP@5 lost on known individuals "
            f"(openset_features false: only held-out individuals can fit it, else the plain rule; "
            f"run_inference.sh OPENSET=natural: the plain rule)")


def check_submission_labels(label_map, k=5):
    """DataError if some labels map to the new label and fewer than ``k`` distinct submission
    labels remain (top-``k`` impossible); found here, before any image is written or model trained.

    A closed set (every label original) of fewer than ``k`` classes passes: its scores rank all
    the labels it has (a ``k``-column submission is refused by the ensemble, before it averages).
    """
    from foldnet.tasks.classification.ranking import n_submission_labels

    n = n_submission_labels(label_map)
    if n >= k:
        return
    n_new = int((~label_map.original_mask).sum())
    if n_new == 0:
        return
    raise DataError(
        f"top-{k} predictions are impossible: {len(label_map.original)} original label(s) + the new label "
        f"{label_map.new_label!r} = {n} distinct submission labels, {k} needed",
        [f"original labels: {sorted(label_map.original) or 'none'}; {n_new} other class(es) map to "
         f"{label_map.new_label!r}",
         f"list at least {k} labels in --known_labels_csv (or leave it out: then every label is original)"])


def convert_dataset(dataset, out_dir, flags, fingerprint, workers, progress):
    """Folds (grouped if asked) then shards of a validated Dataset; return the manifest."""
    train, skipped = dataset.train, list(dataset.skipped)
    clusters, n_grouped = None, 0
    if flags["group_duplicates"] is not None:
        train, clusters, bad_skipped = group_near_duplicates(train, dataset.root, flags["group_duplicates"],
                                                             flags["skip_bad"], workers, progress)
        skipped += bad_skipped
        n_grouped = folds_mod.n_grouped(clusters)
        say(f"near-duplicates: {n_grouped} images in clusters of 2 or more (threshold {flags['group_duplicates']})")
    original = sorted(set(dataset.original) & set(train["label"]))  # a class may lose all its images to skip_bad
    label_map = LabelMap.fit(train["label"], original=original, new_label=dataset.new_label)
    check_submission_labels(label_map)
    held_out = folds_mod.held_out_individuals(train["label"], flags.get("holdout_individuals") or 0,
                                              flags["n_folds"], flags["seed"])
    if held_out:
        say(f"held-out individuals: {len(held_out)} of {train['label'].nunique()} stay in one fold each, "
            "so their out-of-fold images simulate unseen individuals (fits the open-set rule)")
    say(openset_plan(label_map, len(held_out)))
    groups = fold_groups(train, flags["group_col"], clusters, held_out)
    warn_small_classes(train["label"], flags["n_folds"])
    try:
        fold = folds_mod.assign_folds(train["label"], flags["n_folds"], flags["seed"], groups)
    except ValueError as e:
        raise DataError(f"cannot assign folds: {e}") from e
    if flags["group_duplicates"] is None and flags["group_col"] is None:
        split = split_identical_images(train, fold)
        if split:
            say(f"warning: {split} training images are byte-identical to an image under another id in another "
                "fold: their out-of-fold scores are optimistic (use --group_duplicates to keep such images in one "
                "fold)")
    jobs = plan_jobs(train, fold, dataset.test, label_map, flags["seed"])
    manifest = write_output(out_dir, jobs, train, fold, groups, label_map, flags, fingerprint, skipped,
                            n_grouped, dataset.root, workers, progress)
    report(manifest, out_dir)
    if flags["max_side"] is None and (warning := oversize_warning(manifest["image_stats"], member_dims())):
        say(f"warning: {warning}")
    return manifest




def convert_from_flags(layout, flags):
    """create_tfrecords.py with a classification layout (Turtle Recall, or generic with --train_csv)."""
    return create_tfrecords(**dict(flags, id_col=flags["id_col"] or "image_id"))
