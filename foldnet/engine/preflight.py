"""Checks that run before any model is built or any output written.

Everything a user can get wrong and that can be known up front is checked
here, so a run fails in its first second with one clear error (exit 2) rather
than after hours of training (value ranges such as transform counts are
config's): a batch that cannot fit in memory, a weights file that is missing or not HDF5, named
pretrained weights that cannot be loaded (offline, not cached), an output directory that
cannot be written, an ensemble output that would replace an input. A run directory that the
checks created is removed again when they fail, so a refused run leaves nothing behind.
"""
import math
import os
import tempfile

from foldnet.core import fileio
from foldnet.core.errors import ConfigError

# The pipeline holds several copies of a decoded input batch (augmentation, batching,
# prefetch) and a model's activations and gradients are many times its input; a batch
# whose float32 pixels times this factor exceed the available memory cannot run.
MEMORY_FACTOR = 8


def available_memory():
    """Bytes of memory this process may still use (MemAvailable, capped by a cgroup limit), or None."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            avail = min(avail, int(limit) - used) if avail is not None else int(limit) - used
    except (OSError, ValueError):
        pass
    return avail


def batch_memory_problem(batch_size, input_shape, available=None):
    """Why a batch of ``batch_size`` examples of ``input_shape`` (one example as the model gets it,
    e.g. (dim, dim, 3) or (months, height, width, bands)) cannot fit in memory, or None."""
    available = available_memory() if available is None else available
    if not available:
        return None
    example = 4 * math.prod(int(n) for n in input_shape)
    need = MEMORY_FACTOR * batch_size * example
    if need <= available:
        return None
    fit = max(1, available // (MEMORY_FACTOR * example))
    shape = "x".join(str(int(n)) for n in input_shape)
    return (f"--batch_size {batch_size} of {shape} inputs needs at least {need / 2**30:.1f} GiB "
            f"({batch_size} x {shape} float32 values x {MEMORY_FACTOR} for the pipeline and the "
            f"model), {available / 2**30:.1f} GiB are available; use --batch_size {fit} or less")


def weights_file_problem(path, flag):
    """Why ``path`` (a --weights / --checkpoints value that names a file) cannot be a Keras h5 file, or None."""
    if fileio.is_remote(path):
        return None if fileio.exists(path) else f"{flag} {path}: file not found"
    if not os.path.isfile(path):
        return f"{flag} {path}: file not found"
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as e:
        return f"{flag} {path}: not a Keras .h5 weights file ({str(e).splitlines()[0]})"
    return None


def is_weights_path(weights):
    w = str(weights)
    return w.endswith((".h5", ".hdf5")) or os.sep in w or fileio.is_remote(w)


def writable_problem(directory):
    """Why files cannot be created in ``directory``, or None. Nothing is left behind: a missing
    ``directory`` is not created (its nearest existing parent is probed with a folder made and removed)."""
    if fileio.is_remote(directory):
        return None
    where = os.path.abspath(directory)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        return f"cannot write in {directory}: {where} is a file, not a folder (choose another --run_dir / output folder)"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tmp-write-test-", dir=where))
    except OSError as e:
        return f"cannot write in {directory}: {e.strerror} (choose a writable --run_dir / output folder)"
    return None


def pretrained_problem(arch, weights, dim=96):
    """Why the named pretrained set ``weights`` of ``arch`` cannot be loaded (e.g. no network and
    not cached), or None. Builds the 3-channel backbone once at ``dim`` px
    (``backbones.fetch_pretrained``; the weights land in the Keras cache for the real build)."""
    from foldnet.core.errors import DataError
    from foldnet.models import backbones

    try:
        backbones.fetch_pretrained(arch, weights, size=dim)
    except DataError as e:
        return e.format()
    except ValueError as e:
        return f"--weights {weights}: {e}"
    return None


def check_run(cfg, jobs, input_shape=None):
    """One ConfigError listing every problem of a run.py config, beyond its values' ranges (config),
    found before a model is built. ``input_shape``: one example as the task's model gets it
    (``Task.input_shape``; default a dim x dim RGB image)."""
    from foldnet.engine import workers

    problems = []
    try:
        workers.check_environment()
    except ConfigError as e:
        problems.append(str(e))
    if jobs & {"train", "val", "test", "predict"}:
        memory = batch_memory_problem(cfg["batch_size"], input_shape or (cfg["dim"], cfg["dim"], 3))
        if memory:
            problems.append(memory)
    if "train" in jobs and cfg.get("weights") and is_weights_path(cfg["weights"]):
        problem = weights_file_problem(cfg["weights"], "--weights")
        if problem:
            problems.append(problem)
    elif "train" in jobs and cfg.get("weights") and str(cfg["weights"]).lower() != "none":
        problem = pretrained_problem(cfg["arch"], cfg["weights"], max(int(cfg["dim"]), 32))
        if problem:
            problems.append(problem)
    for path in (cfg.get("checkpoints") or []) if "predict" in jobs else []:
        problem = weights_file_problem(path, "--checkpoints")
        if problem:
            problems.append(problem)
    made = None
    if jobs - {"predict"}:
        made = None if fileio.is_remote(cfg["run_dir"]) or os.path.exists(cfg["run_dir"]) else cfg["run_dir"]
        problem = writable_problem(cfg["run_dir"])
        if problem:
            problems.append(problem)
    if problems:
        if made is not None and os.path.isdir(made) and not os.listdir(made):
            os.rmdir(made)  # the writability probe made it; a refused run leaves no run directory
        raise ConfigError("cannot start:\n  - " + "\n  - ".join(problems))


