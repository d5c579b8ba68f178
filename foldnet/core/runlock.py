"""One writer per output directory: an advisory lock file held for the whole run.

``RunLock(path)`` takes an exclusive ``fcntl.flock`` on ``path`` (created if
needed) and writes who holds it: pid, host, start time and command line. A
second process that asks for the same lock gets a ``LockedError`` (exit 2
through the command lines) naming the holder. The kernel drops a flock when
its process dies, so a run killed with ``kill -9`` leaves a lock file but no
lock: the next run takes it over (a *stale* lock) and says whose it was. A
run that ends normally removes its lock file.

``run.py`` locks ``RUN_DIR/.foldnet.lock``; ``create_tfrecords.py`` locks
``.<name>.lock`` beside its output directory (the directory itself is replaced
on success, so the lock cannot live inside it). Local paths only; on a
filesystem without flock support (some network mounts) the lock is skipped
with a warning rather than failing the run.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys

from foldnet.core.errors import ConfigError

log = logging.getLogger(__name__)

RUN_LOCK_NAME = ".foldnet.lock"


class LockedError(ConfigError):
    """Another live process holds the lock."""


def _describe(info):
    if not info:
        return "another process (no details in the lock file)"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"({info.get('command', '?')})")


def read_holder(path):
    """The {pid, host, started, command} written in a lock file, or {} if unreadable."""
    try:
        with open(path) as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


class RunLock:
    """Exclusive advisory lock on ``path``; a context manager (``acquire`` / ``release``).

    ``what`` names the locked thing in messages ("run directory models/x").
    ``previous`` is set to the holder of a stale lock that was taken over.
    """

    def __init__(self, path, what=None):
        self.path = os.path.abspath(str(path))
        self.what = what or self.path
        self._fd = None
        self.previous = None

    def _open_locked(self):
        """An fd of ``self.path`` holding the flock, or raise. Retries if the file was
        replaced while we waited (a releasing holder unlinks it)."""
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # we locked a file its holder had just removed: lock the current one
        raise LockedError(f"{self.what}: the lock file {self.path} keeps being replaced; is another run starting?")

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = self._open_locked()
        except BlockingIOError:
            holder = read_holder(self.path)
            raise LockedError(
                f"{self.what} is in use by {_describe(holder)} (lock file {self.path}); "
                "wait for that run to finish or stop it, or use another output directory") from None
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning(f"warning: {self.path}: file locks are not supported here ({e.strerror}); "
                         "make sure no other run writes to the same directory")
                return self
            raise
        old = read_holder(self.path)
        if old and old.get("pid") != os.getpid():
            self.previous = old
            alive = old.get("host") == socket.gethostname() and _pid_alive(old.get("pid"))
            log.warning(f"note: {self.what}: taking over the lock file of an interrupted run: {_describe(old)}"
                     f"{' (that pid is alive but does not hold the lock)' if alive else ', no longer running'}")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self):
        """Remove the lock file, then drop the lock (a waiting process notices the removal and retries)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def run_dir_lock(run_dir):
    """The lock of a run directory (``RUN_DIR/.foldnet.lock``)."""
    return RunLock(os.path.join(run_dir, RUN_LOCK_NAME), what=f"run directory {run_dir}")


def sibling_lock(out_dir):
    """The lock of an output directory that is replaced as a whole: ``.<name>.lock`` beside it."""
    out_dir = os.path.abspath(str(out_dir))
    path = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.lock")
    return RunLock(path, what=f"output directory {out_dir}")
