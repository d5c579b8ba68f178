"""Ensembles of run directories: Python API and command line (``run_inference.sh``).

``make_ensemble`` reads the members' label maps (task specs), checks every
test prediction file first, scores members and ensemble out of fold (and fits
member weights on OOF if asked: ``weightfit``), averages the test predictions
fold x TTA x member streaming (``averaging``), and has the task write the
submission. Besides the submission it writes ``<stem>.probs.npz`` (the
averaged outputs as a Contract 2 prediction file; ``<stem>.maps.npz`` for
temporal regression: ``Task.averaged_name``) and ``<stem>.scores.md``.

Command line::

    python -m foldnet.ensemble.cli --runs RUN_DIR [RUN_DIR ...] --data_dir DIR
        [--tfrec_dir DIR] [--template CSV] [--weights 1,2,...] [--fit_weights]
        --submission PATH [--k 5] [--openset fitted|natural]

No TensorFlow here: this module runs in light processes. Local paths only.
"""
import argparse
import hashlib
import json
import logging
import os
import sys

import numpy as np

from foldnet.core import fileio, logs, report
from foldnet.core.errors import ConfigError, DataError
from foldnet.ensemble.averaging import TTA_MODES, average_test, normalise_weights, scan_members
from foldnet.ensemble.weightfit import oof_report
from foldnet.io import rundir
from foldnet.tasks import base as tasks

# By name, not __name__: run as ``python -m foldnet.ensemble.cli`` this module is __main__, outside "foldnet".
log = logging.getLogger("foldnet.ensemble.cli")
OPENSET_CHOICES = ("fitted", "natural")


def make_ensemble(runs, out_path, template, tfrec_dir=None, weights=None, fit=False, fit_metric=None,
                  tta="mean", k=5, task=None, threshold=None, openset="fitted", full="with"):
    """Ensemble ``runs`` into the submission ``out_path``; returns the paths written.

    template: the submission template (classification: sample submission CSV
    whose first column lists the test ids). weights: member weights (None =
    equal). fit: fit the weights on OOF with ``fit_metric`` (default: the
    task's ``default_fit_metric``). DataError / ConfigError on bad input,
    before anything is written. threshold: write the submission at this fixed threshold instead of
    the one fitted on the OOF blend (tasks whose post-processing is a threshold: segmentation); the
    scores report names both and the OOF Dice at each. openset (classification): ``fitted``
    = the open-set rule refitted on the OOF blend (``openset``), ``natural``
    = only the plain new-label rule (``ranking.top_k_labels``: the new label
    at the rank of the first non-original class), as the Turtle Recall
    original's ensemble.py did. full: how each member's full-data model
    (``fold_all/``, run.py job ``full``) joins its fold models (``rundir.FULL_MODES``:
    ``with`` = one more fold, ``only`` = instead of them, ``no`` = left out; a member without
    one is averaged over its folds under ``with``).
    """
    runs = [str(r) for r in runs]
    task = task or tasks.get(rundir.runs_task(runs))
    fit_metric = fit_metric or task.default_fit_metric
    if openset not in OPENSET_CHOICES:
        raise ConfigError(f"--openset {openset!r}: choose one of {', '.join(OPENSET_CHOICES)}")
    if openset == "natural" and task.row_value_key is None:
        raise ConfigError(f"--openset natural applies to classification members, not {task.name}")
    if full not in rundir.FULL_MODES:
        raise ConfigError(f"--full {full!r}: choose one of {', '.join(rundir.FULL_MODES)}")
    if fit and fit_metric not in task.fit_metrics:
        raise ConfigError(f"--fit_metric {fit_metric!r}: choose one of {', '.join(sorted(task.fit_metrics))}")
    spec = read_specs(runs, tfrec_dir, task=task)
    check_ensemble(out_path, template, os.path.dirname(str(template)), spec, k)
    ids = task.test_ids(template)
    try:
        weights = normalise_weights(weights, len(runs))
    except ValueError as e:
        raise ConfigError(f"--weights {weights}: {e}") from e
    # Fail early (before OOF work) if the test predictions cannot be ensembled.
    plans = scan_members(runs, "test", ids, spec.fingerprint(), full)

    rows, notes, weights, post, oof = oof_report(runs, weights, spec, fit_metric, fit, tta, task=task,
                                                 groups=task.groups(tfrec_dir))
    if threshold is not None:
        post, line = fixed_threshold(post, float(threshold), oof)
        notes = list(notes) + [line]
    if openset == "natural" and post:
        notes.append("--openset natural: the open-set rule fitted on the OOF blend is not applied "
                     f"({task.describe_post(post)}); the plain new-label rule is")
        post = None
    outputs = average_test(runs, ids, weights, tta, spec.fingerprint(), task=task, full=full)
    values = None
    if post and task.row_value_key:  # the rule may use a per-row value the test files store
        test_values = rundir.row_values(runs, weights, "test", ids, task.row_value_key, full)
        values = None if test_values is None else np.array([test_values[str(i)] for i in ids])
    what = task.write_submission(ids, outputs, spec, template, out_path, k, post, values=values)

    stem = _stem(out_path)
    if post and task.post_plot_name:
        task.post_plot(post, f"{stem}.{task.post_plot_name}")
    if oof is not None:  # e.g. segmentation: Dice vs threshold of the blend the threshold was fitted on
        oof.report(stem, f"Ensemble of {len(runs)} member(s): out-of-fold blend")
    probs_path = save_probs(f"{stem}.{task.averaged_name}.npz", ids, task.encode_outputs(outputs[None]), spec.fingerprint(),
                            runs, weights, plans)
    members = [{"model": r, "weight": float(w), "n_folds": len(hs),
                "full_data": "yes" if any(h.path == full_path(r) for h in hs) else "no"}
               for (r, hs), w in zip(plans, weights)]
    columns = ["model", "weight", "n_folds"] + (["full_data"] if any(m["full_data"] == "yes" for m in members) else [])
    text = "# Ensemble\n\n" + report.markdown_table(members, columns)
    text += f"\nTTA: {tta}. Submission: {out_path} ({what}).\n"
    if full == "only":
        text += ("Test predictions of the full-data models (fold_all/) only; the out-of-fold scores below are "
                 "the fold models' (a full-data model has no held-out rows).\n")
    text += "\n## Out-of-fold scores\n\n"
    text += report.markdown_table(rows, ["model", "weight", "n_oof", *task.score_keys]) if rows else "(none)\n"
    if notes:
        text += "\n" + "".join(f"- {n}\n" for n in notes)
    section = task.post_markdown(post) if post else ""
    if section:
        text += "\n" + section
    scores_path = fileio.atomic_write_owned_text(f"{stem}.scores.md", text)
    log.info(text)
    return out_path, probs_path, scores_path


def fixed_threshold(post, threshold, oof):
    """(post with ``threshold`` in place of the fitted one, a report line comparing the two on the OOF
    blend's score-vs-threshold curve)."""
    fitted = (post or {}).get("threshold")
    curve = getattr(getattr(oof, "acc", None), "curve", None)
    if fitted is None or curve is None:
        return dict(post or {}, threshold=threshold), f"threshold: fixed {threshold:g} (--threshold)"
    rows = curve.table()

    def dice_at(t):
        return min(rows, key=lambda r: abs(r["threshold"] - t))["dice"]

    line = (f"threshold: fixed {threshold:g} (--threshold): OOF blend Dice {dice_at(threshold):.4f}; at the threshold "
            f"fitted on the OOF blend, {fitted:g}: {dice_at(fitted):.4f} (difference "
            f"{dice_at(fitted) - dice_at(threshold):+.4f})")
    return dict(post, threshold=threshold), line


def full_path(run):
    """The test predictions of ``run``'s full-data model (job ``full``)."""
    return os.path.join(rundir.fold_dir(run, rundir.FULL_FOLD), "test.npz")


def read_specs(runs, tfrec_dir=None, *, task):
    """The spec (label map) shared by all runs (and ``tfrec_dir`` if given); DataError naming mismatches."""
    sources = [os.path.join(r, task.spec_file) for r in runs]
    if tfrec_dir:
        sources.append(os.path.join(tfrec_dir, task.spec_file))
    maps, problems = [], []
    for path in sources:
        try:
            maps.append((path, task.read_spec(path)))
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


# Files written beside the submission <stem>.<ext>: averaged outputs, scores, threshold table and curve.
SIDE_FILES = (".probs.npz", ".scores.md", ".threshold.md", ".threshold.png")


def _stem(path):
    root, ext = os.path.splitext(path)
    return root if ext else path


def save_probs(path, ids, outputs, fingerprint, members, weights, headers):
    """Averaged outputs (encoded, [1, n, ...]) as a Contract 2 prediction file with one 'ensemble' view."""
    source = [[m, float(w), [h.weights_fingerprint for h in hs]] for (m, hs), w in zip(headers, weights)]
    wfp = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:16]
    return rundir.save_predictions(path, ids, outputs, np.full(len(ids), -1, dtype=np.int64), ["ensemble"],
                                   fingerprint, wfp, members=np.array([str(m) for m in members]),
                                   member_weights=np.asarray(weights, dtype=np.float64), owned=True)


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m foldnet.ensemble.cli",
        description="Average the test predictions of run directories (folds x TTA x members) "
                    "into a submission; score the ensemble out of fold.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", nargs="+", required=True, help="run directories (members)")
    p.add_argument("--data_dir", help="dataset directory holding sample_submission.csv")
    p.add_argument("--tfrec_dir", help="TFRecord directory; its label_map.json must match the runs'")
    p.add_argument("--template", help="submission template (default: the task's; classification "
                   "DATA_DIR/sample_submission.csv, segmentation TFREC_DIR/tiles.csv)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="comma-separated member weights, e.g. 1,2,1 (default equal)")
    g.add_argument("--fit_weights", action="store_true", help="fit member weights on OOF predictions")
    p.add_argument("--fit_metric", default=None,
                   help="OOF metric to fit (default: the task's; classification: map5, or map5_new)")
    p.add_argument("--tta", default="mean", choices=TTA_MODES, help="TTA reduction")
    p.add_argument("--full", default="with", choices=rundir.FULL_MODES,
                   help="a member's full-data model (fold_all/, run.py job full): averaged as one more "
                        "fold (with), instead of the fold models (only), or left out (no)")
    p.add_argument("--submission", required=True,
                   help="output: CSV (classification); directory or .tar of TIFFs (segmentation)")
    p.add_argument("--k", type=int, default=5, help="predictions per row")
    p.add_argument("--threshold", type=float, default=None,
                   help="segmentation: write the submission at this threshold (e.g. 0.5, the On Cloud N 3rd "
                        "place's) instead of the one fitted on the OOF blend; both are reported")
    p.add_argument("--openset", default="fitted", choices=OPENSET_CHOICES,
                   help="classification: fitted = the open-set rule fitted on the OOF blend (new label first "
                        "for rows that look unseen); natural = the plain rule only (new label at the rank of "
                        "the first non-original class), as the Turtle Recall original")
    logs.add_flags(p)
    args = p.parse_args(argv)
    if not args.template and not args.data_dir:
        p.error("give --data_dir (for DATA_DIR/sample_submission.csv) or --template")
    return args


def parse_weights(text):
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"--weights {text!r}: {e}") from e


def main(argv=None):
    from foldnet.core.cli import run_main

    args = _parse_args(argv)
    logs.setup(logs.verbosity(args))
    paths = []

    def work():
        task = tasks.get(rundir.runs_task(args.runs))
        template = args.template or task.default_template(args.data_dir, args.tfrec_dir)
        paths.extend(make_ensemble(args.runs, args.submission, template, args.tfrec_dir,
                                   parse_weights(args.weights), args.fit_weights, args.fit_metric,
                                   args.tta, args.k, task=task, threshold=args.threshold, openset=args.openset,
                                   full=args.full))

    rc = run_main(work)
    if not rc:
        log.info("wrote " + ", ".join(paths))
    return rc




def check_ensemble(submission_path, template_path, data_dir, spec, k):
    """Before any averaging: the submission may be written there and (classification) the label
    map ``spec`` can fill ``k`` predictions per row."""
    from foldnet.tasks.classification.ranking import n_submission_labels

    inputs = [template_path]
    if data_dir:
        inputs += [os.path.join(data_dir, n) for n in ("test.csv", "train.csv", "extra_images.csv",
                                                        "sample_submission.csv")]
    # the submission (a CSV file; a folder or tar of maps) and its side files: new, or foldnet's
    fileio.check_owned_output(submission_path, inputs, flag="--submission",
                              kind="file" if hasattr(spec, "original_mask") else None)
    stem = _stem(str(submission_path))
    for side in SIDE_FILES:
        fileio.check_owned_output(f"{stem}{side}", inputs, flag="--submission's side file")
    if not hasattr(spec, "original_mask"):  # not a classification label map
        return
    n = n_submission_labels(spec)
    if n < k:
        raise DataError(f"a submission with {k} predictions per row is impossible: the label map gives "
                        f"{n} distinct labels", [f"original labels: {sorted(spec.original)}",
                                                 f"use --k {n} or fewer"])


if __name__ == "__main__":
    sys.exit(main())
