"""Ensembles of run directories: streaming fold x TTA x member average, OOF weight fitting.

Reads the prediction files of Contract 2 (docs/DESIGN.md): ``RUN_DIR/fold_{K}/
{test,oof}.npz`` with keys ``ids``, ``outputs`` [n_tta, n, n_classes],
``labels``, ``label_map_fingerprint``. Rows are matched by ``ids``, never by
row order.

Test average: ``sum_m w_m * mean_folds(mean_tta(outputs))`` with the member
weights normalised to sum 1. It streams: every file is checked first from its
ids and array header only (all problems reported together), then the files
are read one at a time and added to a float32 running sum in row blocks, so
memory holds the running sum, one prediction array and block-sized
temporaries.

Weight fitting (``fit_weights``): pattern search on the simplex grid with
step 1 / (resolution * n_members), starting from equal weights. Each step
tries moving ``s`` grid units from one member to another for every ordered
pair and takes the best move if it strictly improves the OOF metric; when no
move improves, ``s`` is halved (resolution/2, ..., 1). The result is never
worse than equal weights on OOF. Default metric: all-classes MAP@5
(``map5``): it scores every OOF row's identity, which is what the members are
trained for; the new-individual MAP@5 collapses all non-original rows into
one label and its value depends on how many extra-image rows the OOF set
holds, which differs from the test set. ``--fit_metric map5_new`` fits that
one instead.

Command line (``run_inference.sh``)::

    python -m foldnet.ensemble --runs RUN_DIR [RUN_DIR ...] --data_dir DIR
        [--tfrec_dir DIR] [--template CSV] [--weights 1,2,...] [--fit_weights]
        --submission PATH [--k 5]

No TensorFlow here: this module runs in light processes. Local paths only.
"""
import argparse
import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
import zipfile

import numpy as np
import pandas as pd

from . import fileio, metrics, report, submission
from .errors import ConfigError, DataError
from .labels import LabelMap

TTA_MODES = ("mean", "identity")

# Elements per row block when adding one prediction array to the running sum.
_BLOCK_ELEMENTS = 1 << 18

_FOLD_DIR = re.compile(r"^fold_(\d+)$")

# Errors np.load / zipfile raise on a missing, truncated or foreign file.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


# ---------------------------------------------------------------- reading

def load_fold_predictions(run_dir, split):
    """Yield ``(fold, path)`` for every ``RUN_DIR/fold_{K}/{split}.npz``, by fold number."""
    found = []
    for d in glob.glob(os.path.join(glob.escape(str(run_dir)), "fold_*")):
        m = _FOLD_DIR.match(os.path.basename(d))
        path = os.path.join(d, f"{split}.npz")
        if m and os.path.isfile(path):
            found.append((int(m.group(1)), path))
    yield from sorted(found)


@dataclasses.dataclass
class PredictionHeader:
    """What a prediction file holds, read without its outputs array."""

    path: str
    ids: np.ndarray            # str [n]
    fingerprint: str           # label_map_fingerprint
    weights_fingerprint: str   # "" if absent
    shape: tuple               # outputs shape (n_tta, n, n_classes)


def _scalar_str(npz, key):
    return str(npz[key][()]) if key in npz.files else ""


def _outputs_shape(path):
    with zipfile.ZipFile(path) as z, z.open("outputs.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), dtype


def read_header(path):
    """PredictionHeader of one .npz; DataError naming the file if it breaks Contract 2."""
    problems = []
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("ids", "outputs", "label_map_fingerprint") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: not a prediction file", [f"{path}: missing keys {missing}"])
            ids = npz["ids"].astype(str)
            fp = _scalar_str(npz, "label_map_fingerprint")
            wfp = _scalar_str(npz, "weights_fingerprint")
        shape, dtype = _outputs_shape(path)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: unreadable", [f"{path}: unreadable ({type(e).__name__}: {e})"]) from e
    if len(shape) != 3 or shape[1] != len(ids):
        problems.append(f"{path}: outputs shape {shape}, expected [n_tta, {len(ids)} ids, n_classes]")
    elif shape[0] < 1:
        problems.append(f"{path}: outputs has no TTA view")
    if not np.issubdtype(dtype, np.floating):
        problems.append(f"{path}: outputs dtype {dtype}, expected float")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        problems.append(f"{path}: ids repeated {report.preview(uniq[counts > 1])}")
    if problems:
        raise DataError(f"{path}: invalid prediction file", problems)
    return PredictionHeader(str(path), ids, fp, wfp, shape)


def _read_arrays(path, keys):
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[k] for k in keys]
    except _READ_ERRORS as e:
        raise DataError(f"{path}: unreadable", [f"{path}: unreadable ({type(e).__name__}: {e})"]) from e


def reduce_tta(outputs, tta="mean"):
    """[n_tta, n, C] -> [n, C]: mean over the views, or the identity view (index 0)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if tta == "identity" or outputs.shape[0] == 1:
        return outputs[0]
    return outputs.mean(axis=0, dtype=np.float32)


def _nonfinite_problem(path, bad_ids):
    return f"{path}: NaN or inf probabilities for ids {report.preview(bad_ids)}"


def _add_scaled(total, outputs, rows, scale, tta):
    """total += scale * reduce_tta(outputs[:, rows]) in row blocks (block-sized temporaries).

    Returns a bool [len(rows)] mask of rows with non-finite values.
    """
    n_tta, _, n_classes = outputs.shape
    step = max(1, _BLOCK_ELEMENTS // (n_tta * n_classes))
    bad = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), step):
        block = reduce_tta(outputs[:, rows[start:start + step], :], tta)  # a copy: fancy index
        bad[start:start + step] = ~np.isfinite(block).all(axis=1)
        block *= scale
        total[start:start + step] += block
        del block  # else the next block is allocated while this one is still held
    return bad


# ---------------------------------------------------------------- test average

def normalise_weights(weights, n_members):
    """Member weights as float64 summing to 1; None -> equal. ValueError on bad values."""
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != n_members:
        raise ValueError(f"{len(w)} weights for {n_members} members")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("weights sum to 0")
    return w / w.sum()


def scan_members(members, split, ids, expected_fingerprint=None):
    """Check every member's ``split`` files against ``ids`` and one label map fingerprint.

    Returns ``[(member, [PredictionHeader, ...]), ...]``. The reference
    fingerprint is ``expected_fingerprint`` or else the first member's first
    file's. Raises one DataError listing every member without files, every
    file with another fingerprint or class count, and every file whose ids
    are not exactly ``ids`` (missing / extra ids, truncated list + count).
    """
    ids = np.asarray(ids).astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError("the ids to align on are not unique", [f"repeated ids {report.preview(uniq[counts > 1])}"])
    id_set = set(ids)
    ref_fp, ref_src = expected_fingerprint, "the expected label map"
    ref_classes = None
    problems, plans = [], []
    for member in members:
        headers = []
        files = list(load_fold_predictions(member, split))
        if not files:
            problems.append(f"member {member}: no {split} predictions (no fold_*/{split}.npz)")
        for fold, path in files:
            try:
                head = read_header(path)
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
            if ref_classes is None:
                ref_classes = head.shape[2]
            elif head.shape[2] != ref_classes:
                problems.append(f"{where}: {head.shape[2]} classes, others have {ref_classes}")
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


def average_test(members, ids, weights=None, tta="mean", expected_fingerprint=None):
    """Weighted fold x TTA x member average of test predictions, rows in ``ids`` order.

    members: run directories. Returns float32 [len(ids), n_classes]. Each
    member contributes ``w_m * outputs / n_folds_of_member`` per fold file
    (after the TTA reduction), with ``w`` normalised to sum 1. Streaming (see
    module doc); every file is validated before any is read (``scan_members``).
    """
    ids = np.asarray(ids).astype(str)
    w = normalise_weights(weights, len(members))
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    plans = scan_members(members, "test", ids, expected_fingerprint)
    n_classes = plans[0][1][0].shape[2]
    total = np.zeros((len(ids), n_classes), dtype=np.float32)
    problems = []
    for (member, headers), wm in zip(plans, w):
        if wm == 0:
            continue
        for head in headers:
            file_ids, outputs = _read_arrays(head.path, ["ids", "outputs"])
            file_ids = file_ids.astype(str)
            if outputs.shape != head.shape or not np.array_equal(file_ids, head.ids):
                raise DataError(f"{head.path}: changed while ensembling", [f"{head.path}: re-run the ensemble"])
            rows = pd.Index(file_ids).get_indexer(ids)
            bad = _add_scaled(total, outputs, rows, wm / len(headers), tta)
            if bad.any():
                problems.append(_nonfinite_problem(head.path, ids[bad]))
            del outputs
    if problems:
        raise DataError("test predictions hold NaN or inf", problems)
    return total


# ---------------------------------------------------------------- OOF

def load_oof(run_dir, tta="mean"):
    """All folds' OOF predictions of a run: ``(ids, labels, probs)``, probs float32 [n, C].

    Rows are the folds' rows in fold order. One DataError listing every
    problem if the run has no oof.npz, an id appears in more than one fold,
    folds disagree on the label map fingerprint or class count, or rows have
    no valid label or non-finite probabilities.
    """
    files = list(load_fold_predictions(run_dir, "oof"))
    if not files:
        raise DataError(f"{run_dir}: no out-of-fold predictions", [f"{run_dir}: no fold_*/oof.npz"])
    problems, headers = [], []
    for _, path in files:
        try:
            headers.append(read_header(path))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    fps = {h.fingerprint for h in headers}
    if len(fps) > 1:
        problems.append(f"{run_dir}: folds have different label_map_fingerprint: "
                        + ", ".join(f"{h.path}={h.fingerprint}" for h in headers))
    if len({h.shape[2] for h in headers}) > 1:
        problems.append(f"{run_dir}: folds have different class counts: "
                        + ", ".join(f"{h.path}={h.shape[2]}" for h in headers))
    all_ids = np.concatenate([h.ids for h in headers])
    uniq, counts = np.unique(all_ids, return_counts=True)
    for dup in uniq[counts > 1][:20]:
        problems.append(f"{run_dir}: id {str(dup)!r} in several folds: "
                        + ", ".join(h.path for h in headers if dup in set(h.ids)))
    if (counts > 1).sum() > 20:
        problems.append(f"{run_dir}: ... {(counts > 1).sum()} ids in several folds in all")
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    n_classes = headers[0].shape[2]
    probs = np.empty((len(all_ids), n_classes), dtype=np.float32)
    labels = np.empty(len(all_ids), dtype=np.int64)
    start = 0
    for h in headers:
        lab, outputs = _read_arrays(h.path, ["labels", "outputs"])
        n = len(h.ids)
        if outputs.shape != h.shape or lab.shape != (n,):
            problems.append(f"{h.path}: outputs {outputs.shape}, labels {lab.shape} for {n} ids")
            continue
        block = probs[start:start + n]
        block[:] = reduce_tta(outputs, tta)
        labels[start:start + n] = lab
        del outputs
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            problems.append(_nonfinite_problem(h.path, h.ids[bad]))
        bad = (lab < 0) | (lab >= n_classes)
        if bad.any():
            problems.append(f"{h.path}: labels missing or outside [0, {n_classes}) for ids {report.preview(h.ids[bad])}")
        start += n
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    return all_ids, labels, probs


def align_oof(oofs, names):
    """Restrict several ``(ids, labels, probs)`` to their common ids, in the first one's order.

    Returns ``(ids, labels, [probs, ...])``. DataError if members disagree on
    an id's label or share no id.
    """
    common = set(oofs[0][0])
    for ids, _, _ in oofs[1:]:
        common &= set(ids)
    ids = np.array([i for i in oofs[0][0] if i in common])
    if not len(ids):
        raise DataError("the members' out-of-fold predictions share no id", [str(n) for n in names])
    labels, probs_list, problems = None, [], []
    for (m_ids, m_labels, m_probs), name in zip(oofs, names):
        rows = pd.Index(m_ids).get_indexer(ids)
        if labels is None:
            labels = m_labels[rows]
        else:
            bad = ids[m_labels[rows] != labels]
            if len(bad):
                problems.append(f"{name}: labels differ from {names[0]} for ids {report.preview(bad)}")
        probs_list.append(m_probs[rows])
    if problems:
        raise DataError("members disagree on out-of-fold labels", problems)
    return ids, labels, probs_list


def blend(probs_list, weights):
    """sum_i weights[i] * probs_list[i] (float32)."""
    out = np.zeros_like(probs_list[0], dtype=np.float32)
    for p, w in zip(probs_list, weights):
        if w:
            out += np.float32(w) * p
    return out


@dataclasses.dataclass
class WeightFit:
    """Result of ``fit_weights``: weights (sum 1) and the OOF metric before/after."""

    weights: np.ndarray
    metric: str
    before: float   # equal weights
    after: float    # fitted weights (>= before)
    steps: int      # accepted moves


def fit_weights(oof_list, labels, label_map, metric="map5", resolution=8, max_steps=200):
    """Non-negative member weights summing to 1 that maximise an OOF metric.

    oof_list: aligned [n, C] OOF probabilities of each member (``align_oof``);
    labels: [n] true class indices. ``metric`` is a key of
    ``metrics.METRICS`` (default ``map5``, see module doc). Pattern search on
    the simplex grid (module doc); strict improvements only, so ``after >=
    before`` (equal weights).
    """
    if metric not in metrics.METRICS:
        raise ValueError(f"metric must be one of {sorted(metrics.METRICS)}, got {metric!r}")
    score_fn = metrics.METRICS[metric]
    n = len(oof_list)
    if n == 0:
        raise ValueError("no members to weight")
    units = resolution * n
    cache = {}

    def score(counts):
        key = tuple(counts)
        if key not in cache:
            cache[key] = score_fn(labels, blend(oof_list, np.asarray(counts) / units), label_map)
        return cache[key]

    counts = [resolution] * n
    before = best = score(counts)
    step, accepted = max(1, resolution // 2), 0
    while n > 1 and step >= 1 and accepted < max_steps:
        move, move_score = None, best
        for i in range(n):
            for j in range(n):
                if i == j or counts[j] < step:
                    continue
                cand = list(counts)
                cand[i] += step
                cand[j] -= step
                s = score(cand)
                if s > move_score:
                    move, move_score = cand, s
        if move is None:
            step //= 2
        else:
            counts, best, accepted = move, move_score, accepted + 1
    return WeightFit(np.asarray(counts, dtype=np.float64) / units, metric, before, best, accepted)


# ---------------------------------------------------------------- command line

def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m foldnet.ensemble",
        description="Average the test predictions of run directories (folds x TTA x members) "
                    "into a submission; score the ensemble out of fold.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", nargs="+", required=True, help="run directories (members)")
    p.add_argument("--data_dir", help="dataset directory holding sample_submission.csv")
    p.add_argument("--tfrec_dir", help="TFRecord directory; its label_map.json must match the runs'")
    p.add_argument("--template", help="submission template CSV (default DATA_DIR/sample_submission.csv)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="comma-separated member weights, e.g. 1,2,1 (default equal)")
    g.add_argument("--fit_weights", action="store_true", help="fit member weights on OOF predictions")
    p.add_argument("--fit_metric", default="map5", choices=["map5", "map5_new"], help="OOF metric to fit")
    p.add_argument("--tta", default="mean", choices=TTA_MODES, help="TTA reduction")
    p.add_argument("--submission", required=True, help="output CSV path")
    p.add_argument("--k", type=int, default=5, help="predictions per row")
    args = p.parse_args(argv)
    if not args.template and not args.data_dir:
        p.error("give --data_dir (for DATA_DIR/sample_submission.csv) or --template")
    return args


def _parse_weights(text, n_members):
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
        return normalise_weights(values, n_members)
    except ValueError as e:
        raise ConfigError(f"--weights {text!r}: {e}") from e


def read_label_maps(runs, tfrec_dir=None):
    """The label map shared by all runs (and ``tfrec_dir`` if given); DataError naming mismatches."""
    sources = [os.path.join(r, "label_map.json") for r in runs]
    if tfrec_dir:
        sources.append(os.path.join(tfrec_dir, "label_map.json"))
    maps, problems = [], []
    for path in sources:
        try:
            maps.append((path, LabelMap.load(path)))
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{path}: cannot read label map ({type(e).__name__}: {e})")
    if problems:
        raise DataError("cannot read the label maps", problems)
    ref_path, ref = maps[0]
    for path, lm in maps[1:]:
        if lm != ref:
            problems.append(f"{path}: fingerprint {lm.fingerprint()} differs from {ref.fingerprint()} of {ref_path}")
    if problems:
        raise DataError("the runs were trained with different label maps", problems)
    return ref


def read_template(path):
    """Submission template with every cell as a string (ids like '001' stay as written)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the submission template {path}", [f"{path}: {e}"]) from e


def _stem(path):
    root, ext = os.path.splitext(path)
    return root if ext else path


def save_probs(path, ids, probs, fingerprint, members, weights, headers):
    """Averaged probabilities as a Contract 2 prediction file (outputs [1, n, C], one 'ensemble' view)."""
    source = [[m, float(w), [h.weights_fingerprint for h in hs]] for (m, hs), w in zip(headers, weights)]
    wfp = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:16]
    with fileio.atomic_path(path) as tmp:
        np.savez(
            tmp,
            ids=np.asarray(ids).astype(str),
            outputs=probs[None].astype(np.float32, copy=False),
            labels=np.full(len(ids), -1, dtype=np.int64),
            tta_names=np.array(["ensemble"]),
            label_map_fingerprint=np.array(fingerprint),
            weights_fingerprint=np.array(wfp),
            members=np.array([str(m) for m in members]),
            member_weights=np.asarray(weights, dtype=np.float64),
        )
    return path


SCORE_COLUMNS = ["model", "weight", "n_oof", *metrics.SCORE_KEYS]


def oof_report(runs, weights, label_map, fit_metric, fit, tta="mean"):
    """OOF scores of each member and of the ensemble; returns ``(rows, notes, final_weights)``.

    Members without (valid) OOF predictions are named in ``notes`` and left
    out; the ensemble rows blend the scored members only. With ``fit`` and at
    least 2 scored members, the scored members' weights are fitted (their
    total share kept); the others keep theirs. A member row's ``weight`` is
    its final weight in the test average.
    """
    rows, notes, oofs, scored = [], [], [], []
    for idx, run in enumerate(runs):
        try:
            ids, labels, probs = load_oof(run, tta)
        except DataError as e:
            notes.append(f"OOF scoring skipped for {run}: " + "; ".join(e.problems[:5] or [e.summary]))
            continue
        oofs.append((ids, labels, probs))
        scored.append(idx)
        rows.append({"model": run, "n_oof": len(ids), **metrics.score_all(labels, probs, label_map)})
    final = np.asarray(weights, dtype=np.float64)
    share = final[scored].sum()
    if not oofs or share == 0:
        notes.append("no weighted member has OOF predictions: ensemble not scored")
    else:
        if len(oofs) < len(runs):
            notes.append(f"ensemble rows blend the {len(oofs)} members with OOF predictions")
        ids, labels, probs_list = align_oof(oofs, [runs[i] for i in scored])
        if any(len(ids) < len(o[0]) for o in oofs):
            notes.append(f"ensemble OOF scored on the {len(ids)} ids all scored members share")
        label = "ensemble (equal weights)" if np.allclose(final, final[0]) else "ensemble (given weights)"
        rows.append({"model": label, "n_oof": len(ids),
                     **metrics.score_all(labels, blend(probs_list, final[scored] / share), label_map)})
        if fit and len(oofs) >= 2:
            result = fit_weights(probs_list, labels, label_map, metric=fit_metric)
            final = final.copy()
            final[scored] = result.weights * share
            rows.append({"model": "ensemble (fitted weights)", "n_oof": len(ids),
                         **metrics.score_all(labels, blend(probs_list, result.weights), label_map)})
            notes.append(f"fitted on OOF {result.metric}: {result.before:.4f} (equal) -> {result.after:.4f} "
                         f"in {result.steps} moves")
    if fit and (len(oofs) < 2 or share == 0):
        notes.append("--fit_weights: fewer than 2 members with OOF predictions, weights unchanged")
    for row, idx in zip(rows, scored):
        row["weight"] = float(final[idx])
    return rows, notes, final


def run(args):
    """The command line's work; returns the paths written."""
    runs = [str(r) for r in args.runs]
    label_map = read_label_maps(runs, args.tfrec_dir)
    template_path = args.template or os.path.join(args.data_dir, "sample_submission.csv")
    template = read_template(template_path)
    if template.shape[1] < 2:
        raise DataError(f"{template_path}: needs an id column and prediction columns",
                        [f"columns: {list(template.columns)}"])
    ids = template.iloc[:, 0].to_numpy().astype(str)
    weights = normalise_weights(_parse_weights(args.weights, len(runs)), len(runs))
    # Fail early (before OOF work) if the test predictions cannot be ensembled.
    plans = scan_members(runs, "test", ids, label_map.fingerprint())

    rows, notes, weights = oof_report(runs, weights, label_map, args.fit_metric, args.fit_weights, args.tta)
    probs = average_test(runs, ids, weights, args.tta, label_map.fingerprint())
    df = submission.make_submission(ids, probs, label_map, template, args.k)
    submission.write_submission(df, args.submission, template, label_map)

    stem = _stem(args.submission)
    probs_path = save_probs(f"{stem}.probs.npz", ids, probs, label_map.fingerprint(), runs, weights, plans)
    members = [{"model": r, "weight": float(w), "n_folds": len(hs)} for (r, hs), w in zip(plans, weights)]
    text = "# Ensemble\n\n" + report.markdown_table(members, ["model", "weight", "n_folds"])
    text += f"\nTTA: {args.tta}. Submission: {args.submission} ({len(df)} rows, k={args.k}).\n"
    text += "\n## Out-of-fold scores\n\n"
    text += report.markdown_table(rows, SCORE_COLUMNS) if rows else "(none)\n"
    if notes:
        text += "\n" + "".join(f"- {n}\n" for n in notes)
    scores_path = fileio.atomic_write_text(f"{stem}.scores.md", text)
    print(text)
    return args.submission, probs_path, scores_path


def main(argv=None):
    args = _parse_args(argv)
    try:
        paths = run(args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
