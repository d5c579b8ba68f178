"""create_tfrecords.py: a dataset (CSV + images) -> sharded TFRecords, folds, label map, manifest.

Output (Contract 1 of docs/DESIGN.md), written into a temporary directory
beside ``out_dir`` and renamed when complete (manifest.json last), so a failed
run leaves no partial output. TensorFlow is imported only when shards are
written, never at import time: spawned image workers re-import the main script.
"""
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile

import numpy as np
import pandas as pd

from foldnet.core import fileio
from foldnet.io import folds as folds_mod
from foldnet.io import images
from foldnet.tasks.classification import layouts
from foldnet.core.errors import ConfigError, DataError
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL, LabelMap

DEFAULT_SHARD_SIZE = "150MB"
_OUTPUT_NAMES = {"manifest.json", "label_map.json", "folds.csv", "tiles.csv", "chips.csv"}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


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


def input_fingerprint(dataset, flags):
    """sha256 of the CSV contents, the image files' names, sizes and mtimes, and ``flags``."""
    h = hashlib.sha256()
    for path in dataset.csv_files:
        h.update(f"csv {os.path.basename(path)}\n".encode())
        h.update(fileio.read_bytes(path))
    problems = []
    for table in (dataset.train, dataset.test):
        for image_id, path in zip(table["id"], table["path"]):
            try:
                st = os.stat(path)
            except OSError as e:  # removed or made unreadable since it was found
                problems.append(f"{image_id} ({path}): {e.strerror}")
                continue
            h.update(f"{image_id}\t{os.path.relpath(path, dataset.root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if problems:
        raise DataError(f"{len(problems)} image file(s) cannot be read", problems)
    h.update(json.dumps(flags, sort_keys=True).encode())
    return h.hexdigest()


def current_manifest(out_dir, fingerprint):
    """The manifest in ``out_dir`` if it is complete and has ``fingerprint``, else None."""
    path = fileio.join(out_dir, "manifest.json")
    if not fileio.exists(path):
        return None
    from foldnet.io import records

    try:
        manifest = records.load_manifest(out_dir)
    except (DataError, ValueError, KeyError):  # incomplete, unreadable or old-format output: rewrite it
        return None
    return manifest if manifest.get("fingerprint") == fingerprint else None


def listed_outputs(manifest_path):
    """Names a previous conversion wrote, from its manifest (an empty set if it has none or it is unreadable)."""
    try:
        manifest = json.loads(fileio.read_text(manifest_path))
        parts = list(manifest.get("folds", [])) + [manifest.get("test", {})]
        return {str(f) for part in parts for f in part.get("files", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def check_replaceable(out_dir):
    """Refuse (ConfigError) to replace a file, or a local directory holding files we did not write.

    Ours: manifest.json, label_map.json, folds.csv and the shards the manifest
    lists. Any other file (a ``*.tfrec`` the manifest does not list too) is foreign.
    """
    if fileio.is_remote(out_dir):
        return
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out_dir {out_dir} is an existing file, not a directory; refusing to replace it: "
                          "choose another --out_dir")
    if not os.path.isdir(out_dir):
        return
    ours = _OUTPUT_NAMES | listed_outputs(os.path.join(out_dir, "manifest.json"))
    foreign = sorted(n for n in os.listdir(out_dir) if n not in ours)
    if foreign:
        raise ConfigError(f"--out_dir {out_dir} holds files create_tfrecords.py did not write "
                          f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                          "refusing to replace it: choose another --out_dir")


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


@contextlib.contextmanager
def staging_dir(out_dir):
    """A local directory to write into; becomes ``out_dir`` only on success."""
    if not fileio.is_remote(out_dir):
        with fileio.atomic_dir(out_dir) as tmp:
            yield tmp
        return
    tmp = tempfile.mkdtemp(prefix="foldnet-tfrec-")
    try:
        yield tmp
        upload_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upload_dir(local_dir, remote_dir):
    """Copy ``local_dir`` to a remote directory: the old manifest goes first, the new one last."""
    gfile = fileio._gfile()
    manifest = fileio.join(remote_dir, "manifest.json")
    gfile.makedirs(remote_dir)
    previous = set()
    if gfile.exists(manifest):
        previous = listed_outputs(manifest)  # only shards an earlier conversion listed are ever removed
        gfile.remove(manifest)
    names = sorted(os.listdir(local_dir))
    for name in names:
        if name != "manifest.json":
            gfile.copy(os.path.join(local_dir, name), fileio.join(remote_dir, name), overwrite=True)
    for stale in sorted(previous - set(names)):
        if gfile.exists(fileio.join(remote_dir, stale)):
            gfile.remove(fileio.join(remote_dir, stale))
    gfile.copy(os.path.join(local_dir, "manifest.json"), manifest, overwrite=True)


def folds_table(train, fold, groups):
    df = pd.DataFrame({"id": train["id"], "label": train["label"], "fold": fold})
    if groups is not None:
        df["group"] = groups
    return df


def build_manifest(n_folds, label_map, result, flags, fingerprint, skipped, n_grouped):
    from foldnet.io.records import FORMAT_VERSION, FOLDS_CSV, LABEL_MAP, image_stats

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


def shared_flag_problems(n_folds, group_duplicates, shard_size):
    """Messages about the flags every layout shares (folds, near-duplicate threshold, shard size)."""
    from foldnet.io.records import parse_shard_size

    problems = []
    if n_folds < 2:
        problems.append(f"--n_folds must be >= 2, got {n_folds}")
    if group_duplicates is not None and not 0 < group_duplicates <= 1:
        problems.append(f"--group_duplicates is a cosine similarity in (0, 1], got {group_duplicates}")
    try:
        parse_shard_size(shard_size)
    except ValueError as e:
        problems.append(str(e))
    return problems


def create_tfrecords(data_dir=None, out_dir=None, *, train_csv=None, test_csv=None, images_dir=None,
                     id_col="image_id", label_col="label", path_col=None, path_pattern=None, group_col=None,
                     known_labels_csv=None, new_label=DEFAULT_NEW_LABEL, n_folds=5, seed=42,
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


def write_unless_current(out_dir, fingerprint, overwrite, write):
    """The manifest of ``out_dir`` if it is current (same ``fingerprint``) and not ``overwrite``;
    else ``write()``'s, after checking that ``out_dir`` may be replaced. Shared by every layout.

    A local ``out_dir`` is locked meanwhile (``.<name>.lock`` beside it, runlock: one conversion
    per folder) and the unfinished folders of interrupted conversions beside it are removed.
    """
    check_replaceable(out_dir)
    with contextlib.ExitStack() as stack:
        if not fileio.is_remote(out_dir):
            from foldnet.core.runlock import sibling_lock

            stack.enter_context(sibling_lock(out_dir))
            fileio.clean_dir_debris(out_dir)
        existing = None if overwrite else current_manifest(out_dir, fingerprint)
        if existing is not None:
            print(f"{out_dir}: shards are current (same inputs and flags); nothing to do (--overwrite rewrites)")
            return existing
        check_replaceable(out_dir)  # again under the lock
        return write()


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
    groups = fold_groups(train, flags["group_col"], clusters, held_out)
    warn_small_classes(train["label"], flags["n_folds"])
    try:
        fold = folds_mod.assign_folds(train["label"], flags["n_folds"], flags["seed"], groups)
    except ValueError as e:
        raise DataError(f"cannot assign folds: {e}") from e
    jobs = plan_jobs(train, fold, dataset.test, label_map, flags["seed"])
    manifest = write_output(out_dir, jobs, train, fold, groups, label_map, flags, fingerprint, skipped,
                            n_grouped, dataset.root, workers, progress)
    report(manifest, out_dir)
    if flags["max_side"] is None and (warning := oversize_warning(manifest["image_stats"], member_dims())):
        say(f"warning: {warning}")
    return manifest


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except for unset options, whose help text says what happens."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        prog="create_tfrecords.py",
        description="Convert a dataset (CSV + images) into sharded TFRecords with K folds, a label map "
                    "and manifest.json (see data/README.md).",
        formatter_class=_HelpFormatter)
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--data_dir", help="dataset directory; alone: Turtle Recall layout (train.csv, "
                     "extra_images.csv, test.csv, images/)")
    io_.add_argument("--out_dir", help="output directory (local or gs://); default: DATA_DIR/tfrec")
    gen = p.add_argument_group("generic layout (used when --train_csv is given)")
    gen.add_argument("--train_csv", help="training CSV (relative to --data_dir if given); selects this layout")
    gen.add_argument("--test_csv", help="test CSV (default: no test set)")
    gen.add_argument("--images_dir", help="image directory (relative to --data_dir); default: DATA_DIR/images")
    gen.add_argument("--id_col", help="id column (default: image_id; segmentation: id)")
    gen.add_argument("--label_col", default="label", help="label column")
    gen.add_argument("--path_col", help="column with image paths relative to --images_dir "
                     "(default: search <id>.* in --images_dir)")
    gen.add_argument("--path_pattern", help='image file name from the id, e.g. "{id}.png"')
    gen.add_argument("--group_col", help="rows sharing a value stay in one fold (StratifiedGroupKFold)")
    gen.add_argument("--known_labels_csv", help="CSV listing the 'original' labels; others map to --new_label "
                     "in submissions (default: all labels are original)")
    gen.add_argument("--new_label", default=DEFAULT_NEW_LABEL, help="label for new individuals")
    fo = p.add_argument_group("folds")
    fo.add_argument("--n_folds", type=int, default=5, help="number of folds (stratified K-fold)")
    fo.add_argument("--seed", type=int, default=42, help="seed of the fold split and shard order")
    fo.add_argument("--holdout_individuals", type=float, default=0.0, metavar="FRACTION",
                    help="this fraction of the individuals keep all their images in one fold, so that fold's "
                         "model never sees them and their out-of-fold predictions behave like new individuals "
                         "of a test set: the open-set rule (new label first) is fitted on them (default: off; "
                         "e.g. 0.2)")
    fo.add_argument("--group_duplicates", type=float, metavar="THRESHOLD",
                    help="keep near-identical images (cosine similarity of 16x16 grayscale thumbnails "
                         ">= THRESHOLD, e.g. 0.95) in one fold (default: off)")
    sh = p.add_argument_group("shards")
    sh.add_argument("--shard_size", default=DEFAULT_SHARD_SIZE,
                    help='per shard: a size ("150MB") or a number of examples ("1000")')
    sh.add_argument("--max_side", type=int, help="re-encode images so the longer side is at most this "
                    "(default: keep JPEG/PNG bytes as they are)")
    sh.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality when re-encoding a JPEG")
    sh.add_argument("--workers", type=int, default=0, help="image worker processes (0: all cores)")
    sh.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                    help="largest image accepted, in pixels (width x height); a larger one is a bad image")
    se = p.add_argument_group("segmentation layouts (--layout kelp|cloud|seg; kelp and cloud are recognised "
                              "from DATA_DIR's folders)")
    se.add_argument("--layout", choices=("classification",) + SEG_LAYOUTS + TEMPORAL_LAYOUTS,
                    help="classification (default): Turtle Recall or generic CSV of labelled images; kelp: Kelp "
                         "Wanted (train_satellite/, train_kelp/, metadata_fTq0l2T.csv); cloud: On Cloud N "
                         "(train_features/<chip>/B0x.tif, train_labels/, train_metadata.csv); seg: generic CSV "
                         "of tiles (--train_csv with --id_col, --image_col, --mask_col, --group_col); biomassters: The "
                         "BioMassters (train_features/{chip}_S1|S2_{MM}.tif, train_agbm/; recognised from DATA_DIR); "
                         "temporal: generic CSV of [T, H, W, C] chips (--train_csv with --id_col, --image_col, "
                         "--target_col)")
    se.add_argument("--image_col", help="seg: column of the tile's multi-band TIFF, or a pattern with {band} "
                    "naming one TIFF per band of --bands (default: image)")
    se.add_argument("--mask_col", help="seg: column of the mask TIFF, uint8 0/1 (default: mask)")
    se.add_argument("--target_col", help="temporal: column of the target TIFF [H, W] (default: target)")
    se.add_argument("--bands", help="seg: comma-separated band names (default: b0, b1, ... from the first tile)")
    se.add_argument("--missing_value", type=float, help="seg: pixel value meaning missing (default: none)")
    se.add_argument("--stratify_bins", type=int, default=3, help="segmentation folds are stratified on "
                    "has-positive x this many quantile bins of cloud share and water share (when known)")
    ru = p.add_argument_group("behaviour")
    ru.add_argument("--skip_bad", action="store_true", help="skip bad rows/images (listed in the manifest) "
                    "instead of failing")
    ru.add_argument("--overwrite", action="store_true", help="rewrite even if the shards are current")
    ru.add_argument("--allow_outside", action="store_true", help="read images whose path (from a CSV column, "
                    "a pattern or a symlink) resolves outside the data folder and the images folder")
    ru.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


SEG_LAYOUTS = ("kelp", "cloud", "seg")
SEG_FLAGS = ("image_col", "mask_col", "bands", "missing_value", "stratify_bins", "target_col")
TEMPORAL_LAYOUTS = ("biomassters", "temporal")
_CLASSIFICATION_ONLY = {"images_dir": None, "label_col": "label", "path_col": None, "path_pattern": None,
                        "known_labels_csv": None, "max_side": None, "jpeg_quality": 95,
                        "new_label": DEFAULT_NEW_LABEL, "max_pixels": images.DEFAULT_MAX_PIXELS,
                        "allow_outside": False, "holdout_individuals": 0.0}


def detect_seg_layout(data_dir):
    from foldnet.tasks.segmentation.layouts import detect_layout
    from foldnet.tasks.temporal.layouts import detect_layout as detect_temporal

    return detect_temporal(data_dir) or detect_layout(data_dir)


def create_temporal(layout, kwargs, seg_kwargs):
    """create_tfrecords.py with a temporal layout (foldnet.tasks.temporal.convert)."""
    from foldnet.tasks.temporal.convert import create_temporal_tfrecords

    foreign = [f"--{k}" for k, default in _CLASSIFICATION_ONLY.items() if kwargs.get(k) != default]
    foreign += ["--mask_col"] if seg_kwargs["mask_col"] else []
    foreign += ["--group_col"] if kwargs["group_col"] else []
    foreign += ["--group_duplicates"] if kwargs["group_duplicates"] is not None else []
    if foreign:
        raise ConfigError(f"{', '.join(foreign)} do not apply to the {layout} layout")
    bands = [b.strip() for b in seg_kwargs["bands"].split(",") if b.strip()] if seg_kwargs["bands"] else None
    return create_temporal_tfrecords(
        layout, kwargs["data_dir"], kwargs["out_dir"], train_csv=kwargs["train_csv"], test_csv=kwargs["test_csv"],
        id_col=kwargs["id_col"] or "id", image_col=seg_kwargs["image_col"] or "image",
        target_col=seg_kwargs["target_col"] or "target", bands=bands, missing_value=seg_kwargs["missing_value"],
        n_folds=kwargs["n_folds"], seed=kwargs["seed"], stratify_bins=seg_kwargs["stratify_bins"],
        shard_size=kwargs["shard_size"], workers=kwargs["workers"], skip_bad=kwargs["skip_bad"],
        overwrite=kwargs["overwrite"], progress=kwargs["progress"])


def create_seg(layout, kwargs, seg_kwargs):
    """create_tfrecords.py with a segmentation layout (foldnet.tasks.segmentation.convert)."""
    from foldnet.tasks.segmentation.convert import create_seg_tfrecords

    foreign = [f"--{k}" for k, default in _CLASSIFICATION_ONLY.items() if kwargs.get(k) != default]
    if foreign:
        raise ConfigError(f"{', '.join(foreign)} do not apply to the {layout} layout")
    missing = seg_kwargs["missing_value"]
    if missing is not None and float(missing).is_integer():
        missing = int(missing)
    bands = [b.strip() for b in seg_kwargs["bands"].split(",") if b.strip()] if seg_kwargs["bands"] else None
    return create_seg_tfrecords(
        layout, kwargs["data_dir"], kwargs["out_dir"], train_csv=kwargs["train_csv"], test_csv=kwargs["test_csv"],
        id_col=kwargs["id_col"] or "id", image_col=seg_kwargs["image_col"] or "image",
        mask_col=seg_kwargs["mask_col"] or "mask", group_col=kwargs["group_col"], bands=bands,
        missing_value=missing, n_folds=kwargs["n_folds"], seed=kwargs["seed"],
        group_duplicates="default" if kwargs["group_duplicates"] is None else kwargs["group_duplicates"],
        stratify_bins=seg_kwargs["stratify_bins"], shard_size=kwargs["shard_size"], workers=kwargs["workers"],
        skip_bad=kwargs["skip_bad"], overwrite=kwargs["overwrite"], progress=kwargs["progress"])


def main(argv=None):
    """Command line entry point; returns the exit code (2 on bad input or flags)."""
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    kwargs["progress"] = not kwargs.pop("no_progress")
    from foldnet.core.cli import run_main

    def go():
        layout = kwargs.pop("layout")
        if layout is None and kwargs["train_csv"] is None and kwargs["data_dir"] is not None:
            layout = detect_seg_layout(kwargs["data_dir"])
        seg_kwargs = {k: kwargs.pop(k) for k in SEG_FLAGS}
        if layout in TEMPORAL_LAYOUTS:
            create_temporal(layout, kwargs, seg_kwargs)
        elif layout in SEG_LAYOUTS:
            seg_kwargs.pop("target_col")
            create_seg(layout, kwargs, seg_kwargs)
        else:
            set_seg = [f"--{k}" for k, v in seg_kwargs.items() if v is not None and k != "stratify_bins"]
            if set_seg:
                raise ConfigError(f"{', '.join(set_seg)} apply to segmentation layouts only (--layout)")
            kwargs["id_col"] = kwargs["id_col"] or "image_id"
            create_tfrecords(**kwargs)

    return run_main(go)
