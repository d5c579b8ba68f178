"""Which split a fold was trained on, so a changed split is never silently reused.

Rebuilding the TFRecords with another fold assignment (another ``--seed``,
more data) under a trained run would make its finished folds' out-of-fold
predictions score images the model trained on. The fingerprint of fold K's
split (which ids are held out, which are trained on, from the TFRecord
directory's folds.csv) is stored in the fold's resume state and in its
done.json (``settings.split``); a fold whose split differs from the current
one is refused (retrain it with ``--overwrite``).

No TensorFlow here.
"""
import hashlib
import logging
import os

import pandas as pd

from foldnet.core import fileio
from foldnet.core.errors import DataError

log = logging.getLogger(__name__)


def _fold_table(manifest):
    """The id/fold table of the TFRecord directory, or None if it has none."""
    path = fileio.join(manifest["dir"], manifest.get("folds_csv") or "folds.csv")
    if not fileio.exists(path):
        return None
    try:
        table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, usecols=["id", "fold"])
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the fold assignment {path}", [f"{path}: {e}"]) from e
    return table


def split_fingerprints(manifest):
    """{fold: fingerprint of the ids held out by that fold vs the ids trained on} for every fold
    (None for every fold if the TFRecord directory lists no fold assignment)."""
    table = _fold_table(manifest)
    if table is None:
        return {k: None for k in range(int(manifest["n_folds"]))}
    ids = table["id"].astype(str).to_numpy()
    fold = table["fold"].astype(int).to_numpy()
    order = ids.argsort(kind="stable")
    ids, fold = ids[order], fold[order]
    out = {}
    for k in range(int(manifest["n_folds"])):
        h = hashlib.sha256()
        for i, held in zip(ids, fold == k):
            h.update(f"{i}\t{int(held)}\n".encode())
        out[k] = h.hexdigest()[:16]
    return out


def fold_split(manifest, fold):
    """The fingerprint of fold ``fold``'s split (see module doc)."""
    return split_fingerprints(manifest)[int(fold)]


def check_run_splits(run_dir, manifest, exempt=()):
    """DataError naming every finished fold of ``run_dir`` trained on another split than ``manifest``'s.

    ``exempt``: folds about to be retrained (``--overwrite``). Folds finished
    before splits were recorded are reported once as unverifiable.
    """
    if not os.path.isdir(run_dir):
        return
    current = split_fingerprints(manifest)
    problems, unknown = [], []
    for k in range(int(manifest["n_folds"])):
        done = os.path.join(run_dir, f"fold_{k}", "done.json")
        if k in exempt or current[k] is None or not os.path.exists(done):
            continue
        try:
            saved = (fileio.read_json(done).get("settings") or {}).get("split")
        except (OSError, ValueError, AttributeError):
            continue  # an unreadable done.json means "not done": the fold is trained again
        if saved is None:
            unknown.append(k)
            continue
        if saved != current[k]:
            problems.append(f"fold {k}: trained on split {saved}, the TFRecords in {manifest['dir']} now hold "
                            f"split {current[k]} (folds.csv changed: another --seed, --n_folds or data)")
    if unknown:
        log.warning(f"warning: fold(s) {unknown} of {run_dir} do not record the split they were trained on; "
            "if the TFRecords were rebuilt since, retrain them with --overwrite")
    if problems:
        raise DataError(f"{run_dir}: finished folds were trained on another fold split; their out-of-fold "
                        "predictions would score images the model trained on",
                        problems + ["retrain them with --overwrite (or use another --run_dir, or the "
                                    "TFRecords they were trained on)"])
