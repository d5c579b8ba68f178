"""How every command line ends on a user error: one message on stderr and exit code 2.

``run_main(fn, ...)`` calls ``fn`` and turns the errors a user can cause and
fix into ``error: ...`` + return code 2, never a traceback: bad data or
flags (DataError, ConfigError), a busy output directory (runlock.LockedError,
a ConfigError), an output disk that is full, read-only or not writable, and
running out of memory, a multi-worker peer that died. Anything else is a bug
and keeps its traceback.
"""
import errno
import sys

from foldnet.core.errors import ConfigError, DataError

# errno values of a disk the user must fix (full, read-only, no permission, quota).
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
# The same conditions as libraries report them in text (h5py, TensorFlow file writers).
_DISK_TEXT = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def disk_problem(error):
    """A one-line description if ``error`` is a full / read-only / forbidden disk, else None."""
    text = str(error)
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        where = error.filename or ""
        return f"cannot write {where}: {error.strerror}" if where else f"cannot write: {error.strerror}"
    for t in _DISK_TEXT:
        if t in text:
            return f"cannot write ({t}): {text.strip().splitlines()[0][:300]}"
    return None


def _tf_errors():
    tf = sys.modules.get("tensorflow")
    return getattr(tf, "errors", None) if tf is not None else None


def user_error_message(error):
    """The message for an error the user can fix, or None if ``error`` is a bug."""
    if isinstance(error, (DataError, ConfigError)):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory; lower --batch_size (or the cache budget, image size, workers)"
    tf_errors = _tf_errors()
    if isinstance(error, OSError) or (tf_errors is not None and isinstance(error, tf_errors.OpError)):
        problem = disk_problem(error)
        if problem:
            return problem + " (free space, or choose a writable output directory)"
    if tf_errors is not None and isinstance(error, tf_errors.UnavailableError):
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        return (f"a worker of the cluster stopped or cannot be reached ({first}); the last completed epoch is "
                "saved: start every worker again with the same command to resume")
    if tf_errors is not None and isinstance(error, tf_errors.ResourceExhaustedError):
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        return f"out of memory ({first}); lower --batch_size or --dim"
    return None


def run_main(fn, *args, extra_errors=(), **kwargs):
    """``fn(*args, **kwargs)``; 0 on success, 2 with ``error: ...`` on stderr for a user error.

    ``extra_errors``: more exception types that are user errors (e.g. an unreachable TPU).
    """
    try:
        fn(*args, **kwargs)
    except extra_errors as e:
        say(f"error: {e}")
        return 2
    except Exception as e:  # filtered below: only errors a user can fix end here without traceback
        message = user_error_message(e)
        if message is None:
            raise
        say(f"error: {message}")
        return 2
    return 0
