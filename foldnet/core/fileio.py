"""File helpers: atomic writes (temp name + rename) for local paths and gs://.

A kill at any moment leaves either the old file or the new one, never a torn
one. Local paths use os.replace; ``gs://`` and other remote schemes go through
tf.io.gfile (imported only when such a path is used).
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid


def is_remote(path):
    return "://" in str(path)


def gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path):
    return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(path):
    if is_remote(path):
        gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def join(*parts):
    if is_remote(parts[0]):
        return "/".join(p.rstrip("/") for p in parts)
    return os.path.join(*parts)


def read_bytes(path):
    if is_remote(path):
        with gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path):
    return read_bytes(path).decode("utf-8")


def read_json(path):
    return json.loads(read_text(path))


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    path = str(path)
    parent = os.path.dirname(path) if not is_remote(path) else path.rsplit("/", 1)[0]
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    if is_remote(path):
        gf = gfile()
        gf.makedirs(parent)
        with gf.GFile(tmp, "wb") as f:
            f.write(data)
        gf.rename(tmp, path, overwrite=True)
        return path
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    For writers that insist on a file name (np.savez, h5py, savefig). The
    temporary name ends with the final name, so such writers neither append an
    extension nor pick another format.
    """
    path = str(path)
    if is_remote(path):
        local_dir = tempfile.mkdtemp(prefix="foldnet-")
        tmp = os.path.join(local_dir, os.path.basename(path))
        try:
            yield tmp
            gf = gfile()
            gf.copy(tmp, path + ".tmp", overwrite=True)
            gf.rename(path + ".tmp", path, overwrite=True)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    # The whole final name stays at the end: writers pick formats by suffix
    # (tf-keras treats "x.weights.h5" and "x.h5" differently).
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def replace_aside(src, dst):
    """Rename ``src`` (file or directory) to ``dst``; an existing ``dst`` is first moved aside and
    deleted only once ``src`` is in place (local paths)."""
    old = None
    if os.path.lexists(dst):
        old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


@contextlib.contextmanager
def atomic_dir(path, owned=False):
    """Yield a temporary directory next to ``path``; it replaces ``path`` on success.

    Local paths only (remote outputs are written file by file with
    atomic_write_bytes, the manifest last). An existing ``path`` is moved aside
    and deleted only after the new directory is in place. ``owned``: the result
    carries foldnet's owner record (``check_owned_output``).
    """
    path = os.path.abspath(str(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any new directory
    try:
        yield tmp
        (replace_owned if owned else replace_aside)(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- debris of interrupted writes

# Names the atomic writers above give their temporary files and folders; a kill
# -9 at the wrong moment leaves them behind. Nothing else is ever removed.
_TMP_FILE = re.compile(r"^(?:.+\.tmp-[0-9a-f]{8}|\.tmp-[0-9a-f]{8}-.+)$")   # atomic_write_bytes, atomic_path
_TF_CKPT_TMP = re.compile(r"^ckpt-\d+_temp$")  # TensorFlow's checkpoint writer (state/ folders only)


def _log():
    import logging

    return logging.getLogger(__name__)


def dir_debris_names(name):
    """Regex of the folders ``atomic_dir(<parent>/name)`` leaves beside it when killed."""
    n = re.escape(name)
    return re.compile(rf"^(?:\.{n}\.tmp-[A-Za-z0-9_]{{8}}|{n}\.old-[0-9a-f]{{8}})$")


def clean_debris(root, recursive=True):
    """Remove the temporary files of interrupted atomic writes under ``root``; return their paths.

    Only names of this module's temporary patterns (and TensorFlow's
    ``ckpt-N_temp`` folders inside a ``state`` folder) are touched. The caller
    must own ``root`` (hold its lock): a live writer's temporary file would go too.
    """
    removed = []
    if is_remote(root) or not os.path.isdir(root):
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if _TMP_FILE.match(name):
                removed.append(os.path.join(dirpath, name))
        if os.path.basename(dirpath) == "state":
            removed += [os.path.join(dirpath, d) for d in dirnames if _TF_CKPT_TMP.match(d)]
            dirnames[:] = [d for d in dirnames if not _TF_CKPT_TMP.match(d)]
        if not recursive:
            break
    for path in removed:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    if removed:
        _log().info(f"removed {len(removed)} temporary file(s) left by an interrupted run under {root}")
    return removed


def clean_dir_debris(path):
    """Remove the folders an interrupted ``atomic_dir(path)`` left beside ``path``; return them."""
    if is_remote(path):
        return []
    path = os.path.abspath(str(path))
    parent, pattern = os.path.dirname(path), dir_debris_names(os.path.basename(path))
    if not os.path.isdir(parent):
        return []
    removed = [os.path.join(parent, n) for n in sorted(os.listdir(parent)) if pattern.match(n)]
    for p in removed:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
    if removed:
        _log().info(f"removed {len(removed)} unfinished output folder(s) of an interrupted run beside {path}")
    return removed


# ---------------------------------------------------------------- what the tool owns

# One mechanism for every file and folder foldnet writes where a user's files may be (submissions and
# their side files, baselines' outputs, run dirs, demo data, converted records): an owner record, a
# hidden JSON file ``.<name>.foldnet`` beside the output. An output is replaced only when it is new or
# carries its record:
#   file    {"by": "foldnet", "kind": "file", "sha256": [...]}: its current content is one foldnet wrote;
#   folder  {"by": "foldnet", "kind": "dir", "files": [...]}: every file now under it is one foldnet
#           wrote there (relative paths); a file a user added makes it foreign again;
#   run dir {"by": "foldnet", "kind": "run_dir"}: a folder run.py made (it writes named files in it).
# A rerun replaces its own outputs; anything else is refused with a ConfigError naming it.
OWNER = "foldnet"


def owner_record(path):
    """Hidden record beside ``path`` that marks it as written by foldnet (``.<name>.foldnet``)."""
    path = str(path).rstrip("/") or "/"
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.foldnet")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def read_owner_record(path):
    """The owner record of ``path`` as a dict, or None (absent, unreadable, not foldnet's)."""
    try:
        record = read_json(owner_record(path))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("by") == OWNER else None


# foldnet's own bookkeeping inside a folder: owner records and locks (never a user's file)
_BOOKKEEPING = re.compile(r"^(?:\..+\.foldnet|\.foldnet\.lock|\..+\.lock)$")


def _tree_files(root):
    """Relative paths of every file (and symlink) under folder ``root``, sorted; foldnet's owner
    records and locks left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if not _BOOKKEEPING.match(name):
                out.append(name if rel == "." else os.path.join(rel, name))
    return sorted(out)


def foreign_entries(path):
    """What in an existing ``path`` foldnet did not write: [] if it carries its owner record (see above).

    Inside a folder foldnet wrote, a file it does not list is still foldnet's when it, or a folder
    holding it, carries its own record (a submission or records written into a demo folder later)."""
    record = read_owner_record(path)
    if os.path.isdir(path) and not os.path.islink(path):
        if record and record.get("kind") == "run_dir":
            return []
        listed = set(record.get("files", [])) if record and record.get("kind") == "dir" else set()
        owned_dirs = {}

        def owned_elsewhere(rel):
            parts = rel.split(os.sep)
            for i in range(1, len(parts)):
                sub = os.sep.join(parts[:i])
                if sub not in owned_dirs:
                    sub_record = read_owner_record(os.path.join(path, sub))
                    owned_dirs[sub] = bool(sub_record) and not foreign_entries(os.path.join(path, sub))
                if owned_dirs[sub]:
                    return True
            own = read_owner_record(os.path.join(path, rel))
            return bool(own) and not foreign_entries(os.path.join(path, rel))

        return [f for f in _tree_files(path) if f not in listed and not owned_elsewhere(f)]
    try:
        owned = bool(record) and record.get("kind", "file") == "file" and _sha256(path) in record.get("sha256", [])
    except OSError:
        owned = False
    return [] if owned else [os.path.basename(path)]


def check_owned_output(path, inputs=(), flag="the output", kind="file", legacy=None):
    """Refuse (ConfigError) to replace ``path`` unless it is new or foldnet's (it carries its record).

    ``kind``: "file" or "dir", what the caller writes there (an existing output of the other kind is
    refused too). ``inputs``: paths this run reads; ``path`` naming one of them is refused even if
    foldnet once wrote it. ``legacy(path)``: True for an output that older versions wrote without a
    record and that is recognised by its content.
    """
    from foldnet.core.errors import ConfigError

    if is_remote(path):
        return
    path = str(path)
    for src in inputs:
        if src and os.path.exists(src) and os.path.exists(path) and (
                same_file(path, src) or os.path.realpath(src).startswith(os.path.realpath(path) + os.sep)):
            raise ConfigError(f"{flag} {path} is an input of this run ({src}); refusing to overwrite it: "
                              "choose another output path")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another output path")
    try:  # writable? (a folder made and removed: nothing is left behind)
        os.rmdir(tempfile.mkdtemp(prefix=".tmp-write-test-", dir=parent or "."))
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {parent}: {e.strerror}; choose a writable output "
                          "path") from None
    if not os.path.lexists(path):
        return
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    if kind == "file" and is_dir:
        raise ConfigError(f"{flag} {path} is a directory; give a file path")
    if kind == "dir" and not is_dir:
        raise ConfigError(f"{flag} {path} is an existing file, not a folder; choose another output path")
    if is_dir and not _tree_files(path):
        return
    foreign = foreign_entries(path)
    if foreign and legacy is not None and read_owner_record(path) is None and legacy(path):
        return
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise ConfigError(f"{flag} {path} exists and was not written by foldnet (or was changed since): "
                          f"{shown}; refusing to {'replace' if is_dir else 'overwrite'} it: choose another output "
                          "path or remove it yourself")


def write_owner_record(path, kind=None, previous=()):
    """Record ``path`` (a file or folder foldnet just wrote) as foldnet's. ``previous``: hashes (file) or
    paths (folder) to keep recognising while a replacement is under way."""
    if is_remote(path):
        return
    path = str(path)
    if kind == "run_dir":
        record = {"by": OWNER, "kind": "run_dir"}
    elif os.path.isdir(path):
        record = {"by": OWNER, "kind": "dir", "files": sorted(set(_tree_files(path)) | set(previous))}
    else:
        record = {"by": OWNER, "kind": "file", "sha256": [*previous, _sha256(path)] if previous else [_sha256(path)]}
    atomic_write_json(owner_record(path), record)


def _previous_hashes(path, new_hash):
    old = _sha256(path) if os.path.isfile(path) else None
    return [h for h in (old, new_hash) if h]


def atomic_write_owned_bytes(path, data):
    """``atomic_write_bytes`` that records the file as foldnet's (see ``check_owned_output``).

    The record lists the old and the new content's hash while the file is
    replaced, so a kill at any moment leaves the file recognised as foldnet's.
    """
    path = str(path)
    if is_remote(path):
        return atomic_write_bytes(path, data)
    new = hashlib.sha256(data).hexdigest()
    atomic_write_json(owner_record(path), {"by": OWNER, "kind": "file", "sha256": _previous_hashes(path, new)})
    atomic_write_bytes(path, data)
    atomic_write_json(owner_record(path), {"by": OWNER, "kind": "file", "sha256": [new]})
    return path


def atomic_write_owned_text(path, text):
    return atomic_write_owned_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def owned_path(path):
    """``atomic_path`` whose result is recorded as foldnet's (for np.savez, savefig, ...)."""
    path = str(path)
    if is_remote(path):
        with atomic_path(path) as tmp:
            yield tmp
        return
    with atomic_path(path) as tmp:
        yield tmp
        new = _sha256(tmp)
        atomic_write_json(owner_record(path), {"by": OWNER, "kind": "file", "sha256": _previous_hashes(path, new)})
    atomic_write_json(owner_record(path), {"by": OWNER, "kind": "file", "sha256": [new]})


def replace_owned(src, dst):
    """``replace_aside`` of a finished output ``src`` (file or folder) over ``dst``, recorded as foldnet's:
    the record covers the old and the new output while the rename happens."""
    if os.path.isdir(src):
        old = _tree_files(dst) if os.path.isdir(dst) else []
        atomic_write_json(owner_record(dst), {"by": OWNER, "kind": "dir",
                                              "files": sorted(set(old) | set(_tree_files(src)))})
    else:
        new = _sha256(src)
        atomic_write_json(owner_record(dst), {"by": OWNER, "kind": "file", "sha256": _previous_hashes(dst, new)})
    replace_aside(src, dst)
    write_owner_record(dst)
