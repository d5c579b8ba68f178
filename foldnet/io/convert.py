"""Conversion helpers shared by every task's converter: the input fingerprint, the
"current output" check, the replace policy of an output folder, staging (local temp dir
renamed at the end, or uploaded to a remote folder manifest last) and the flags every
layout shares."""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from foldnet.core import fileio
from foldnet.core.errors import DataError

DEFAULT_SHARD_SIZE = "150MB"


OUTPUT_NAMES = {"manifest.json", "label_map.json", "folds.csv", "tiles.csv", "chips.csv"}


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


def written_before_records(out_dir):
    """Records of a version before owner records: nothing but the files create_tfrecords writes
    (manifest.json, label_map.json, folds.csv and the shards its manifest lists)."""
    ours = OUTPUT_NAMES | listed_outputs(os.path.join(out_dir, "manifest.json"))
    return os.path.isfile(os.path.join(out_dir, "manifest.json")) and all(n in ours for n in os.listdir(out_dir))


def check_replaceable(out_dir):
    """Refuse (ConfigError) to replace a file, or a local directory holding files foldnet did not
    write (``fileio.check_owned_output``; records of older versions by their manifest)."""
    fileio.check_owned_output(out_dir, flag="--out_dir", kind="dir", legacy=written_before_records)


@contextlib.contextmanager
def staging_dir(out_dir):
    """A local directory to write into; becomes ``out_dir`` only on success."""
    if not fileio.is_remote(out_dir):
        with fileio.atomic_dir(out_dir, owned=True) as tmp:
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
    gfile = fileio.gfile()
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


def manifest_common(task, layout, n_folds, files, counts, tiles_csv):
    """The manifest keys every task's converter writes: format, task, layout, folds with their shards,
    test shards, folds.csv and the per-item CSV (``tiles_csv``)."""
    from foldnet.io.records import FOLDS_CSV, FORMAT_VERSION

    fold_parts = [{"fold": k, "n_examples": counts.get(f"train-fold{k}", 0), "files": files.get(f"train-fold{k}", [])}
                  for k in range(n_folds)]
    return {"format_version": FORMAT_VERSION, "task": task, "layout": layout, "n_folds": n_folds,
            "n_examples": sum(p["n_examples"] for p in fold_parts), "folds_csv": FOLDS_CSV, "tiles_csv": tiles_csv,
            "folds": fold_parts, "test": {"n_examples": counts.get("test", 0), "files": files.get("test", [])}}
