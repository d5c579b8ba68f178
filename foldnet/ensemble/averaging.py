"""Streaming fold x TTA x member average of test predictions, and streamed OOF reads of members by id.

Reads the prediction files of Contract 2 through ``rundir``; rows are matched
by ``ids``, never by row order.

Test average: ``sum_m w_m * mean_folds(mean_tta(outputs))`` with the member
weights normalised to sum 1. It streams: every file is checked first from its
ids and array header only (all problems reported together), then the files
are read one at a time (memory-mapped), decoded by the task, and added to a
float32 running sum in row blocks, so memory holds the running sum and
block-sized temporaries. Outputs may have any item shape (``[n_tta, n,
...]``: class probabilities, probability maps).

No TensorFlow here: this module runs in light processes.
"""
import numpy as np
import pandas as pd

from foldnet.core import report
from foldnet.core.errors import DataError
from foldnet.io import rundir
from foldnet.io.rundir import TTA_MODES, reduce_tta  # noqa: F401  (part of this module's API)

# Elements per row block when adding one prediction array to the running sum.
_BLOCK_ELEMENTS = 1 << 18


def normalise_weights(weights, n_members):
    """Member weights as float64 summing to 1; None -> equal. ValueError on bad values."""
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != n_members:
        raise ValueError(f"{len(w)} weights for {n_members} members")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if w.max() <= 0:
        raise ValueError("weights sum to 0")
    if not np.isfinite(w.sum()):  # 1e308 + 1e308 overflows to inf: scale first
        w = w / w.max()
    return w / w.sum()


def _add_scaled(total, outputs, rows, scale, tta, decode):
    """total += scale * reduce_tta(decode(outputs[:, rows])) in row blocks (block-sized temporaries).

    Returns a bool [len(rows)] mask of rows with non-finite values.
    """
    item = int(np.prod(outputs.shape[2:], dtype=np.int64))
    step = max(1, _BLOCK_ELEMENTS // (outputs.shape[0] * item))
    bad = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), step):
        block = reduce_tta(decode(outputs[:, rows[start:start + step]]), tta)  # a copy: fancy index
        bad[start:start + step] = rundir.nonfinite_rows(block)
        block *= scale
        total[start:start + step] += block
        del block  # else the next block is allocated while this one is still held
    return bad


def scan_members(members, split, ids, expected_fingerprint=None, full="no"):
    """Check every member's ``split`` files against ``ids`` and one spec (label map) fingerprint.

    Returns ``[(member, [PredictionHeader, ...]), ...]``. The reference
    fingerprint is ``expected_fingerprint`` or else the first member's first
    file's. Raises one DataError listing every member without files, every
    file with another fingerprint or output shape, and every file whose ids
    are not exactly ``ids`` (missing / extra ids, truncated list + count).
    ``full``: how a member's full-data model (fold_all/) joins its folds (``rundir.FULL_MODES``).
    """
    ids = np.asarray(ids).astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError("the ids to align on are not unique", [f"repeated ids {report.preview(uniq[counts > 1])}"])
    id_set = set(ids)
    ref_fp, ref_src = expected_fingerprint, "the expected label map"
    ref_item = None
    problems, plans = [], []
    for member in members:
        headers = []
        files = rundir.prediction_files(member, split, full)
        if not files:
            where = f"fold_{rundir.FULL_FOLD}" if full == "only" else "fold_*"
            problems.append(f"member {member}: no {split} predictions (no {where}/{split}.npz)")
        for fold, path in files:
            try:
                head = rundir.read_header(path)
            except DataError as e:
                problems.extend(e.problems)
                continue
            where = f"member {member} fold {fold} ({path})"
            if ref_fp is None:
                ref_fp, ref_src = head.fingerprint, path
            if head.fingerprint != ref_fp:
                problems.append(
                    f"{where}: label_map_fingerprint {head.fingerprint!r} differs from {ref_fp!r} of {ref_src}"
                )
            item = head.shape[2:]
            if ref_item is None:
                ref_item = item
            elif item != ref_item:
                what = "classes" if len(item) == 1 else "output shape"
                problems.append(f"{where}: {_item_text(item)} {what}, others have {_item_text(ref_item)}")
            have = set(head.ids)
            missing, extra = sorted(id_set - have), sorted(have - id_set)
            if missing:
                problems.append(f"{where}: missing ids {report.preview(missing)}")
            if extra:
                problems.append(f"{where}: extra ids {report.preview(extra)}")
            headers.append(head)
        plans.append((member, headers))
    if problems:
        raise DataError(f"cannot ensemble the {split} predictions of {len(members)} member(s)", problems)
    return plans


def _item_text(item):
    return str(item[0]) if len(item) == 1 else str(tuple(item))


def average_test(members, ids, weights=None, tta="mean", expected_fingerprint=None, *, task, full="no"):
    """Weighted fold x TTA x member average of test predictions, rows in ``ids`` order.

    members: run directories. Returns float32 [len(ids), ...]. Each member
    contributes ``w_m * outputs / n_folds_of_member`` per fold file (after the
    task's decoding and the TTA reduction), with ``w`` normalised to sum 1.
    ``full``: ``with`` counts a member's fold_all model as one more fold, ``only`` uses it alone.
    Streaming (see module doc); every file is validated before any is read
    (``scan_members``).
    """
    ids = np.asarray(ids).astype(str)
    w = normalise_weights(weights, len(members))
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    plans = scan_members(members, "test", ids, expected_fingerprint, full)
    total = np.zeros((len(ids), *plans[0][1][0].shape[2:]), dtype=np.float32)
    problems = []
    for (member, headers), wm in zip(plans, w):
        if wm == 0:
            continue
        for head in headers:
            file_ids, = rundir.read_arrays(head.path, ["ids"])
            outputs = rundir.open_array(head.path, "outputs")  # memory-mapped: rows read block by block
            file_ids = file_ids.astype(str)
            if outputs.shape != head.shape or not np.array_equal(file_ids, head.ids):
                raise DataError(f"{head.path}: changed while ensembling", [f"{head.path}: re-run the ensemble"])
            rows = pd.Index(file_ids).get_indexer(ids)
            bad = _add_scaled(total, outputs, rows, wm / len(headers), tta, task.decode_outputs)
            if bad.any():
                problems.append(rundir.nonfinite_problem(head.path, ids[bad]))
            del outputs
    if problems:
        raise DataError("test predictions hold NaN or inf", problems)
    return total


class MemberOOF:
    """One member's OOF predictions opened for streaming (``rundir.open_oof``), read by id.

    ``ids``: every OOF id of the member, in fold order. ``read(ids, task,
    tta)`` returns ``(targets, TTA-reduced float32 outputs)`` of those ids in
    that order, decoding only their rows (the files are memory-mapped).
    """

    def __init__(self, run, sources):
        self.run, self.sources = run, sources
        self.ids = np.concatenate([s.ids for s in sources]) if sources else np.array([], str)
        self._source = np.concatenate([np.full(len(s.ids), k) for k, s in enumerate(sources)])
        self._row = np.concatenate([np.arange(len(s.ids)) for s in sources])
        self._index = pd.Index(self.ids)

    def read(self, ids, task, tta):
        pos = self._index.get_indexer(np.asarray(ids))
        if (pos < 0).any():
            raise KeyError(f"{self.run}: no OOF prediction for ids {report.preview(np.asarray(ids)[pos < 0])}")
        targets = outputs = None
        for k, src in enumerate(self.sources):
            take = np.flatnonzero(self._source[pos] == k)
            if not len(take):
                continue
            rows = self._row[pos[take]]
            order = np.argsort(rows, kind="stable")
            t, o = src.read(rows[order], task)
            o = reduce_tta(o, tta)
            if targets is None:
                targets = np.empty((len(pos), *t.shape[1:]), t.dtype)
                outputs = np.empty((len(pos), *o.shape[1:]), o.dtype)
            targets[take[order]] = t
            outputs[take[order]] = o
        return targets, outputs


def common_oof_ids(members):
    """The ids every member has OOF predictions for, in the first member's order; DataError if none."""
    common = set(members[0].ids)
    for m in members[1:]:
        common &= set(m.ids)
    ids = np.array([i for i in members[0].ids if i in common])
    if not len(ids):
        raise DataError("the members' out-of-fold predictions share no id", [m.run for m in members])
    return ids


def blend(probs_list, weights):
    """sum_i weights[i] * probs_list[i] (float32)."""
    out = np.zeros_like(probs_list[0], dtype=np.float32)
    for p, w in zip(probs_list, weights):
        if w:
            out += np.float32(w) * p
    return out
