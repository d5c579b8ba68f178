"""File helpers: atomic writes (temp name + rename) for local paths and gs://.

A kill at any moment leaves either the old file or the new one, never a torn
one. Local paths use os.replace; ``gs://`` and other remote schemes go through
tf.io.gfile (imported only when such a path is used).
"""
import contextlib
import json
import os
import shutil
import tempfile
import uuid


def is_remote(path):
    return "://" in str(path)


def _gfile():
    import foldnet  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
    import tensorflow as tf

    return tf.io.gfile


def exists(path):
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(path):
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def join(*parts):
    if is_remote(parts[0]):
        return "/".join(p.rstrip("/") for p in parts)
    return os.path.join(*parts)


def read_bytes(path):
    if is_remote(path):
        with _gfile().GFile(path, "rb") as f:
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
        gf = _gfile()
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
            gf = _gfile()
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
def atomic_dir(path):
    """Yield a temporary directory next to ``path``; it replaces ``path`` on success.

    Local paths only (remote outputs are written file by file with
    atomic_write_bytes, the manifest last). An existing ``path`` is moved aside
    and deleted only after the new directory is in place.
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
        replace_aside(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
