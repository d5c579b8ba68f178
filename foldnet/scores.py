"""The `score` job: out-of-fold scores of one member, per fold, per TTA variant and TTA mean.

No TensorFlow here. Reads ``fold_K/oof.npz`` files (Contract 2), aligned by
their ids, and writes ``scores.json`` and ``scores.md`` in the run dir.
"""
import os

import numpy as np

from . import fileio, metrics, report
from .errors import DataError

COLUMNS = ["fold", "tta", "n", "top1", "top5", "map5", "map5_new"]


def _rows_for(name, labels, outputs, tta_names, label_map):
    rows = []
    for t, tta in enumerate(tta_names):
        rows.append({"fold": name, "tta": str(tta), "n": len(labels), **metrics.score_all(labels, outputs[t], label_map)})
    if len(tta_names) > 1:
        rows.append({"fold": name, "tta": "mean", "n": len(labels),
                     **metrics.score_all(labels, outputs.mean(axis=0), label_map)})
    return rows


def score_run(run_dir, label_map, log=print):
    """Score every fold of ``run_dir`` that has OOF predictions. Returns the rows."""
    fold_files = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name, "oof.npz")
        if name.startswith("fold_") and name[5:].isdigit() and os.path.exists(path):
            fold_files.append((int(name[5:]), path))
    if not fold_files:
        raise DataError(f"{run_dir}: no out-of-fold predictions to score", ["run with --job val first"])
    rows, all_ids, all_labels, all_outputs, tta_ref = [], [], [], [], None
    fp = label_map.fingerprint()
    for fold, path in sorted(fold_files):
        with np.load(path, allow_pickle=False) as z:
            ids, labels, outputs, tta = z["ids"], z["labels"], z["outputs"], list(z["tta_names"])
            if str(z["label_map_fingerprint"]) != fp:
                raise DataError(f"{path}: predicted with another label map", [f"expected {fp}, found {z['label_map_fingerprint']}"])
        rows += _rows_for(str(fold), labels, outputs, tta, label_map)
        if tta_ref is None:
            tta_ref = tta
        elif tta != tta_ref:
            tta_ref = tta[:min(len(tta), len(tta_ref))] if tta[:1] == tta_ref[:1] else None
        all_ids.append(ids), all_labels.append(labels), all_outputs.append(outputs)
    ids = np.concatenate(all_ids)
    if len(set(ids.tolist())) != len(ids):
        raise DataError(f"{run_dir}: an image id appears in the OOF predictions of two folds")
    if tta_ref:
        n = len(tta_ref)
        outputs = np.concatenate([o[:n] for o in all_outputs], axis=1)
        rows += _rows_for("all", np.concatenate(all_labels), outputs, tta_ref, label_map)
    result = {"folds": [f for f, _ in fold_files], "rows": rows}
    fileio.atomic_write_json(os.path.join(run_dir, "scores.json"), result)
    table = report.markdown_table(rows, COLUMNS)
    title = f"# Out-of-fold scores: {os.path.basename(os.path.normpath(run_dir))}\n\n"
    note = ("\ntop1/top5: accuracy over all classes; map5: MAP@5 over all classes; "
            "map5_new: MAP@5 after mapping non-original labels to the new-individual label.\n")
    fileio.atomic_write_text(os.path.join(run_dir, "scores.md"), title + table + note)
    log(table)
    return rows
