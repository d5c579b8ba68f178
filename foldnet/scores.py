"""The `score` job: out-of-fold scores of one member, per fold, per TTA variant and TTA mean.

No TensorFlow here. Reads the run's OOF predictions through
``rundir.read_oof`` (aligned by their ids), scores them with the task's
``score`` and writes ``scores.json`` and ``scores.md`` in the run dir.
"""
import logging
import os

import numpy as np

from . import fileio, report, rundir, tasks

log = logging.getLogger(__name__)


def _rows_for(name, targets, outputs, tta_names, task, spec):
    rows = []
    for t, tta in enumerate(tta_names):
        rows.append({"fold": name, "tta": str(tta), "n": len(targets), **task.score(targets, outputs[t], spec)})
    if len(tta_names) > 1:
        rows.append({"fold": name, "tta": "mean", "n": len(targets),
                     **task.score(targets, outputs.mean(axis=0), spec)})
    return rows


def score_run(run_dir, spec, task=None):
    """Score every fold of ``run_dir`` that has OOF predictions. Returns the rows."""
    task = task or tasks.get(tasks.DEFAULT_TASK)
    folds = rundir.read_oof(run_dir, task, expected_fingerprint=spec.fingerprint())
    rows, tta_ref = [], None
    for f in folds:
        tta = f.tta_names or [f"view{t}" for t in range(len(f.outputs))]
        rows += _rows_for(str(f.fold), f.targets, f.outputs, tta, task, spec)
        if tta_ref is None:
            tta_ref = tta
        elif tta != tta_ref:
            tta_ref = tta[:min(len(tta), len(tta_ref))] if tta[:1] == tta_ref[:1] else None
    if tta_ref:
        n = len(tta_ref)
        outputs = np.concatenate([f.outputs[:n] for f in folds], axis=1)
        targets = np.concatenate([f.targets for f in folds])
        rows += _rows_for("all", targets, outputs, tta_ref, task, spec)
        task.report(os.path.join(run_dir, "oof"), targets, outputs.mean(axis=0),
                    f"{os.path.basename(os.path.normpath(run_dir))}: out-of-fold, all folds")
    result = {"folds": [f.fold for f in folds], "rows": rows}
    fileio.atomic_write_json(os.path.join(run_dir, "scores.json"), result)
    table = report.markdown_table(rows, ["fold", "tta", "n", *task.score_keys])
    title = f"# Out-of-fold scores: {os.path.basename(os.path.normpath(run_dir))}\n\n"
    fileio.atomic_write_text(os.path.join(run_dir, "scores.md"), title + table + "\n" + task.score_note + "\n")
    log.info(table)
    return rows
