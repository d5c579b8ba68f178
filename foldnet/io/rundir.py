"""The run directory (Contract 2 in docs/DESIGN.md): its paths, its fold list, its prediction files.

Every module that touches ``RUN_DIR/fold_{K}/...`` goes through here: fold
paths and the best checkpoint's name, listing the folds (numerical order),
writing prediction files atomically, reading their header only (ids,
fingerprints, outputs shape without loading the outputs) or in full, the
staleness check, and the one reader of out-of-fold predictions.

No TensorFlow here: this module runs in light processes. Local paths.
"""
import dataclasses
import glob
import hashlib
import os
import re
import zipfile

import numpy as np

from foldnet.core import fileio, report
from foldnet.core.errors import DataError

BEST = "best.h5"
DONE = "done.json"
TASK_FILE = "task.json"      # {"task": name}; absent in run dirs written before the task seam = classification
DEFAULT_TASK = "classification"
SPLITS = ("oof", "test")
# The model trained on every fold after cross-validation (run.py job ``full``) lives in fold_all/,
# with the same files as a fold (state/, best.h5, done.json, test.npz) and no oof.npz.
FULL_FOLD = "all"
# How the ensemble uses fold_all/test.npz: averaged as one more fold, alone, or not at all.
FULL_MODES = ("with", "only", "no")

_FOLD_DIR = re.compile(r"^fold_(\d+)$")

# Errors np.load / zipfile raise on a missing, truncated or foreign file.
READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

# Keys every prediction file has (older files may lack weights_fingerprint / tta_names).
REQUIRED_KEYS = ("ids", "outputs", "label_map_fingerprint")


# ---------------------------------------------------------------- paths and folds

def write_task(run_dir, name):
    fileio.atomic_write_json(os.path.join(run_dir, TASK_FILE), {"task": name})


def is_run_dir(run_dir):
    """True for a folder run.py made: it carries foldnet's run-dir record, or (versions before the
    records) holds task.json or fold_K folders."""
    if not os.path.isdir(run_dir):
        return False
    record = fileio.read_owner_record(run_dir)
    if record and record.get("kind") == "run_dir":
        return True
    return os.path.exists(os.path.join(run_dir, TASK_FILE)) or any(_FOLD_DIR.match(n) for n in os.listdir(run_dir))


def check_run_dir_owned(run_dir):
    """ConfigError unless ``run_dir`` is new, empty, or a run dir foldnet made (``is_run_dir``): run.py never
    writes config.yaml, scores.md, ... into a folder of the user's (such as the one holding the recipes)."""
    fileio.check_owned_output(run_dir, flag="--run_dir", kind="dir", legacy=is_run_dir)


def record_run_dir(run_dir):
    """Mark ``run_dir`` as a run dir foldnet made (its owner record, beside it)."""
    if fileio.read_owner_record(run_dir) is None:
        fileio.write_owner_record(run_dir, kind="run_dir")


def read_task(run_dir):
    """Name of the task a run directory was trained for."""
    path = os.path.join(run_dir, TASK_FILE)
    if not os.path.exists(path):
        return DEFAULT_TASK
    try:
        return str(fileio.read_json(path)["task"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable", [f"{path}: {type(e).__name__}: {e}"]) from e


def runs_task(runs):
    """The one task name of several run directories; DataError naming them if they differ."""
    names = {r: read_task(r) for r in runs}
    if len(set(names.values())) > 1:
        raise DataError("the runs were trained for different tasks", [f"{r}: {n}" for r, n in names.items()])
    return next(iter(names.values()), DEFAULT_TASK)


def fold_dir(run_dir, fold):
    return os.path.join(run_dir, f"fold_{fold}")


def fold_paths(run_dir, fold):
    """Paths of one fold: dir, best, done, state, oof, test, history, curves."""
    d = fold_dir(run_dir, fold)
    return {
        "dir": d,
        "best": os.path.join(d, BEST),
        "done": os.path.join(d, DONE),
        "state": os.path.join(d, "state"),
        "oof": os.path.join(d, "oof.npz"),
        "test": os.path.join(d, "test.npz"),
        "history": os.path.join(d, "history.csv"),
        "curves": os.path.join(d, "curves.png"),
    }


def list_folds(run_dir, filename=None):
    """``[(fold, path)]`` of the ``fold_{K}`` directories of ``run_dir`` in fold order.

    With ``filename``, only folds holding that file, and ``path`` is the
    file's path; without, ``path`` is the fold directory.
    """
    found = []
    for d in glob.glob(os.path.join(glob.escape(str(run_dir)), "fold_*")):
        m = _FOLD_DIR.match(os.path.basename(d))
        if not m or not os.path.isdir(d):
            continue
        path = d if filename is None else os.path.join(d, filename)
        if filename is None or os.path.isfile(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def prediction_files(run_dir, split, full="no"):
    """``[(fold, path)]`` of ``RUN_DIR/fold_{K}/{split}.npz``, in fold order.

    ``full`` (``FULL_MODES``): ``with`` appends ``(FULL_FOLD, fold_all/{split}.npz)`` when it
    exists, ``only`` returns that file alone (or nothing), ``no`` leaves it out.
    """
    if full not in FULL_MODES:
        raise ValueError(f"full must be one of {FULL_MODES}, got {full!r}")
    folds = list_folds(run_dir, f"{split}.npz") if full != "only" else []
    path = os.path.join(fold_dir(run_dir, FULL_FOLD), f"{split}.npz")
    if full != "no" and os.path.isfile(path):
        folds.append((FULL_FOLD, path))
    return folds


def best_checkpoints(run_dir, n_folds=None):
    """Best checkpoints of the folds present in ``run_dir`` (below ``n_folds`` if given), in fold order."""
    return [p for f, p in list_folds(run_dir, BEST) if n_folds is None or f < n_folds]


def weights_fingerprint(path):
    """Identifies a checkpoint file by content (the staleness check of prediction files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- prediction files

def save_predictions(path, ids, outputs, labels, tta_names, spec_fingerprint, weights_fp, owned=False, **extra):
    """Write a prediction file atomically. ``outputs`` / ``labels`` as the task encoded them. ``owned``:
    record it as foldnet's (an output outside a run dir, such as the ensemble's ``<stem>.probs.npz``)."""
    with (fileio.owned_path if owned else fileio.atomic_path)(path) as tmp:
        np.savez(tmp, ids=np.asarray(ids).astype(str), outputs=outputs, labels=labels,
                 tta_names=np.asarray(tta_names, dtype=str),
                 label_map_fingerprint=np.asarray(spec_fingerprint),
                 weights_fingerprint=np.asarray(weights_fp), **extra)
    return path


@dataclasses.dataclass
class PredictionHeader:
    """What a prediction file holds, read without its outputs array."""

    path: str
    ids: np.ndarray            # str [n]
    fingerprint: str           # label_map_fingerprint (the task spec's)
    weights_fingerprint: str   # "" if absent
    shape: tuple               # outputs shape (n_tta, n, ...)
    tta_names: list            # [] if absent


def _scalar_str(npz, key):
    return str(npz[key][()]) if key in npz.files else ""


def _npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream ``f`` positioned at its magic string; ``f`` is left
    at the start of the array data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _outputs_header(path):
    with zipfile.ZipFile(path) as z, z.open("outputs.npy") as f:
        shape, _, dtype = _npy_header(f)
    return tuple(shape), dtype


def _unreadable(path, e):
    return DataError(f"{path}: unreadable", [f"{path}: unreadable ({type(e).__name__}: {e})"])


def read_header(path):
    """PredictionHeader of one file; DataError naming the file if it breaks Contract 2."""
    problems = []
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: not a prediction file", [f"{path}: missing keys {missing}"])
            ids = npz["ids"].astype(str)
            fp = _scalar_str(npz, "label_map_fingerprint")
            wfp = _scalar_str(npz, "weights_fingerprint")
            tta = [str(t) for t in npz["tta_names"]] if "tta_names" in npz.files else []
        shape, dtype = _outputs_header(path)
    except READ_ERRORS as e:
        raise _unreadable(path, e) from e
    if len(shape) < 3 or shape[1] != len(ids):
        problems.append(f"{path}: outputs shape {shape}, expected [n_tta, {len(ids)} ids, ...]")
    elif shape[0] < 1:
        problems.append(f"{path}: outputs has no TTA view")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        problems.append(f"{path}: outputs dtype {dtype}, expected a number type")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        problems.append(f"{path}: ids repeated {report.preview(uniq[counts > 1])}")
    if problems:
        raise DataError(f"{path}: invalid prediction file", problems)
    return PredictionHeader(str(path), ids, fp, wfp, shape, tta)


def read_arrays(path, keys):
    """The arrays ``keys`` of a prediction file; DataError if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[k] for k in keys]
    except READ_ERRORS as e:
        raise _unreadable(path, e) from e


def load_predictions(path):
    """Every array of a prediction file, as a dict."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except READ_ERRORS as e:
        raise _unreadable(path, e) from e


def is_current(path, weights_fp, spec_fp, n_views, n_rows):
    """True if ``path`` holds predictions of this checkpoint, spec, TTA count and size (header only)."""
    if not os.path.exists(path):
        return False
    try:
        head = read_header(path)
    except DataError:
        return False
    return (head.weights_fingerprint == weights_fp and head.fingerprint == spec_fp
            and head.shape[:2] == (n_views, n_rows))


def reduce_tta(outputs, tta="mean"):
    """[n_tta, n, ...] -> [n, ...]: mean over the views, or the identity view (index 0)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if tta == "identity" or outputs.shape[0] == 1:
        return outputs[0]
    return outputs.mean(axis=0, dtype=np.float32)


TTA_MODES = ("mean", "identity")


def nonfinite_rows(block):
    """bool [n] of rows of ``block`` [n, ...] holding NaN or inf."""
    return ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)


def nonfinite_problem(path, bad_ids):
    return f"{path}: NaN or inf probabilities for ids {report.preview(bad_ids)}"


# ---------------------------------------------------------------- out-of-fold predictions

@dataclasses.dataclass
class FoldOOF:
    """One fold's OOF predictions: decoded float32 outputs [n_tta, n, ...] and targets [n, ...]."""

    fold: int
    path: str
    ids: np.ndarray
    targets: np.ndarray
    outputs: np.ndarray
    tta_names: list


# Elements of decoded outputs ([n_tta, rows, ...]) per block when OOF predictions are streamed.
OOF_BLOCK_ELEMENTS = 1 << 22


def open_array(path, key):
    """Array ``key`` of an .npz file, memory-mapped when it is stored uncompressed (np.savez), else read.

    A memory map reads only the rows a caller indexes, so callers can walk
    an array much larger than memory in blocks.
    """
    import struct

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    start = info.header_offset + 30 + name_len + extra_len
                    f.seek(start)
                    shape, fortran, dtype = _npy_header(f)
                    offset = f.tell()
                if not dtype.hasobject and not fortran:
                    if int(np.prod(shape, dtype=np.int64)) == 0:
                        return np.zeros(shape, dtype)
                    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        return read_arrays(path, [key])[0]
    except READ_ERRORS as e:
        raise _unreadable(path, e) from e


@dataclasses.dataclass
class OOFSource:
    """One fold's OOF file opened for streaming: ``targets`` and ``stored`` outputs memory-mapped."""

    fold: int
    path: str
    ids: np.ndarray
    targets: np.ndarray        # [n, ...] as stored
    stored: np.ndarray         # [n_tta, n, ...] as the task encoded them
    tta_names: list

    def block_rows(self, block_elements=None):
        item = int(np.prod(self.stored.shape[2:], dtype=np.int64))
        return max(1, int(block_elements or OOF_BLOCK_ELEMENTS) // max(1, self.stored.shape[0] * item))

    def read(self, rows, task):
        """(targets, decoded float32 outputs [n_tta, len(rows), ...]) of the rows ``rows`` (sorted ints or a slice)."""
        return np.asarray(self.targets[rows]), task.decode_outputs(np.asarray(self.stored[:, rows]))

    def blocks(self, task, problems, block_elements=None):
        """Yield ``(ids, targets, outputs)`` blocks of rows in file order (outputs decoded, all views).

        Checks every block (``task.invalid_targets``, finite outputs) and, once
        the file is done, appends one problem per kind to ``problems`` naming
        the file and the offending ids. Blocks are yielded even when they have
        problems; callers raise after the pass.
        """
        n = len(self.ids)
        step = self.block_rows(block_elements)
        bad_target, nonfinite, reason = np.zeros(n, bool), np.zeros(n, bool), ""
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            targets, outputs = self.read(rows, task)
            bad, reason = task.invalid_targets(targets, outputs)
            bad_target[rows] = bad
            for view in outputs:
                nonfinite[rows] |= nonfinite_rows(view)
            yield self.ids[rows], targets, outputs
        if nonfinite.any():
            problems.append(nonfinite_problem(self.path, self.ids[nonfinite]))
        if bad_target.any():
            problems.append(f"{self.path}: {reason} for ids {report.preview(self.ids[bad_target])}")


def open_oof(run_dir, expected_fingerprint=None):
    """``OOFSource`` of every fold of a run (headers validated by ``oof_headers``), in fold order.

    Only headers are read; the arrays are memory-mapped. DataError listing
    every file whose arrays do not match its ids.
    """
    problems, out = [], []
    for fold, h in oof_headers(run_dir, expected_fingerprint):
        targets, stored = open_array(h.path, "labels"), open_array(h.path, "outputs")
        n = len(h.ids)
        if stored.shape != h.shape or targets.shape[:1] != (n,):
            problems.append(f"{h.path}: outputs {stored.shape}, labels {targets.shape} for {n} ids")
            continue
        out.append(OOFSource(fold, h.path, h.ids, targets, stored, h.tta_names))
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    return out


def oof_headers(run_dir, expected_fingerprint=None):
    """Validated headers of every ``fold_*/oof.npz`` of a run, in fold order.

    One DataError listing every problem: no OOF file, unreadable files, folds
    whose spec fingerprints differ (from each other or ``expected_fingerprint``)
    or whose output shapes differ beyond the row count, ids in several folds.
    """
    files = prediction_files(run_dir, "oof")
    if not files:
        raise DataError(f"{run_dir}: no out-of-fold predictions", [f"{run_dir}: no fold_*/oof.npz",
                                                                     "run with --job val first"])
    problems, headers = [], []
    for _, path in files:
        try:
            headers.append(read_header(path))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    fps = {h.fingerprint for h in headers}
    if expected_fingerprint is not None:
        wrong = [h for h in headers if h.fingerprint != expected_fingerprint]
        problems += [f"{h.path}: predicted with another label map (expected {expected_fingerprint}, "
                     f"found {h.fingerprint})" for h in wrong]
    elif len(fps) > 1:
        problems.append(f"{run_dir}: folds have different label_map_fingerprint: "
                        + ", ".join(f"{h.path}={h.fingerprint}" for h in headers))
    if len({h.shape[2:] for h in headers}) > 1:
        problems.append(f"{run_dir}: folds have different output shapes (class counts): "
                        + ", ".join(f"{h.path}={h.shape[2:] if len(h.shape) > 3 else h.shape[2]}"
                                    for h in headers))
    all_ids = np.concatenate([h.ids for h in headers])
    uniq, counts = np.unique(all_ids, return_counts=True)
    for dup in uniq[counts > 1][:20]:
        problems.append(f"{run_dir}: id {str(dup)!r} in several folds: "
                        + ", ".join(h.path for h in headers if dup in set(h.ids)))
    if (counts > 1).sum() > 20:
        problems.append(f"{run_dir}: ... {(counts > 1).sum()} ids in several folds in all")
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    return [(fold, h) for (fold, _), h in zip(files, headers)]


def read_oof(run_dir, task, expected_fingerprint=None, reduce=None):
    """Every fold's ``FoldOOF`` of a run, in fold order, held in memory (small runs, tests).

    Headers are validated first (``open_oof``); then the files are read one
    at a time, decoded with ``task.decode_outputs``, passed through ``reduce``
    (e.g. ``reduce_tta``, so only reduced arrays are held) and checked:
    targets of the right length and scorable (``task.invalid_targets``),
    finite outputs. One DataError lists the problems of every file. Runs
    too large for memory are streamed with ``open_oof`` and ``OOFSource.blocks``.
    """
    problems, out = [], []
    for src in open_oof(run_dir, expected_fingerprint):
        targets, outputs = src.read(slice(None), task)
        bad, reason = task.invalid_targets(targets, outputs)
        finite = np.zeros(len(src.ids), dtype=bool)
        for view in outputs:
            finite |= nonfinite_rows(view)
        if reduce is not None:
            outputs = reduce(outputs)
        if finite.any():
            problems.append(nonfinite_problem(src.path, src.ids[finite]))
        if bad.any():
            problems.append(f"{src.path}: {reason} for ids {report.preview(src.ids[bad])}")
        out.append(FoldOOF(src.fold, src.path, src.ids, targets, outputs, src.tta_names))
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    return out


def has_key(path, key):
    """Whether the prediction file ``path`` holds the array ``key`` (False if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return key in npz.files
    except READ_ERRORS:
        return False


def row_values(runs, weights, split, ids, key, full="no"):
    """{id: value} of the per-row array ``key`` of the runs' ``split`` prediction files: mean over a run's
    folds, weighted mean over runs; None unless every file holds ``key`` and every id has a value."""
    ids = np.asarray(ids).astype(str)
    total, w_sum = np.zeros(len(ids)), float(np.sum(weights))
    for run, w in zip(runs, weights):
        acc, count = np.zeros(len(ids)), np.zeros(len(ids))
        files = prediction_files(run, split, full)
        if not files or not all(has_key(path, key) for _, path in files):
            return None
        for _, path in files:
            file_ids, values = read_arrays(path, ["ids", key])
            pos = {str(i): j for j, i in enumerate(file_ids)}
            rows = np.array([pos.get(i, -1) for i in ids])
            hit = rows >= 0
            acc[hit] += values[rows[hit]]
            count[hit] += 1
        if (count == 0).any():
            return None
        total += float(w) * acc / count
    return dict(zip(ids.tolist(), (total / w_sum).tolist()))


def oof_folds(run_dir):
    """{id: fold} of a run's OOF predictions (headers only)."""
    return {str(i): fold for fold, h in oof_headers(run_dir) for i in h.ids}


def load_oof(run_dir, task, tta="mean", expected_fingerprint=None):
    """All folds' OOF predictions of a run, TTA-reduced: ``(ids, targets, outputs [n, ...])`` in fold order."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    folds = read_oof(run_dir, task, expected_fingerprint, reduce=lambda o: reduce_tta(o, tta))
    return (np.concatenate([f.ids for f in folds]), np.concatenate([f.targets for f in folds]),
            np.concatenate([f.outputs for f in folds]))
