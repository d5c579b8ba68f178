"""Submission tables: top-k labels in the template's order, validation, atomic writing.

The labels of a row come from ``ranking.top_k_labels`` (the new-individual
rule); ``top_k_labels`` and ``descending_order`` are re-exported here.

No TensorFlow here: this module runs in light processes.
"""
import numpy as np
import pandas as pd

from foldnet.core import fileio, report
from foldnet.core.errors import DataError
from foldnet.tasks.classification import openset
from foldnet.tasks.classification.ranking import descending_order, top_k_labels  # noqa: F401  (part of this module's API)


def _template_columns(template, k):
    cols = [str(c) for c in template.columns]
    if len(cols) != k + 1:
        raise DataError(
            f"submission template has {len(cols)} columns, expected 1 id column + {k} prediction columns",
            [f"template columns: {cols}"],
        )
    return cols


def make_submission(ids, probs, label_map, template, k=5, rule=None, values=None):
    """Submission table in the template's row order and column names.

    rule: the open-set rule (``openset``; None: the natural new-individual rule).
    values: [n] the rows' stored open-set score (``openset.STORED_SCORE``), or None.

    ids: [n] row keys of ``probs``. template: the sample submission; its first
    column holds the ids, the next k columns name the predictions. Every
    template id must be in ``ids`` and every id in the template (else
    DataError listing them).
    """
    cols = _template_columns(template, k)
    ids = np.asarray(ids).astype(str)
    probs = np.asarray(probs)
    if len(ids) != probs.shape[0]:
        raise ValueError(f"{len(ids)} ids for {probs.shape[0]} rows of probs")
    template_ids = template.iloc[:, 0].astype(str).to_numpy()
    problems = []
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(dup):
        problems.append(f"ids repeated in the predictions {report.preview(dup)}")
    dup_t = pd.Series(template_ids)[pd.Series(template_ids).duplicated()].unique()
    if len(dup_t):
        problems.append(f"ids repeated in the template {report.preview(dup_t)}")
    extra = sorted(set(ids) - set(template_ids))
    missing = sorted(set(template_ids) - set(ids))
    if extra:
        problems.append(f"predicted ids not in the template {report.preview(extra)}")
    if missing:
        problems.append(f"template ids without predictions {report.preview(missing)}")
    if problems:
        raise DataError("predictions do not match the submission template", problems)
    pos = pd.Index(ids).get_indexer(template_ids)
    rows = openset.top_k_labels(probs[pos], label_map, rule, k, None if values is None else np.asarray(values)[pos])
    df = pd.DataFrame(rows, columns=cols[1:])
    df.insert(0, cols[0], template_ids)
    return df


def _is_empty(value):
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def validate_submission(df, template, label_map=None):
    """Check a submission table against its template; DataError naming every bad row.

    Checks: columns equal the template's; every template id exactly once and
    no other id; per row, as many distinct non-empty predictions as the
    template has prediction columns; with ``label_map``, every prediction an
    original label or ``label_map.new_label``. Rows are named by their
    0-based position in ``df`` and their id.
    """
    problems = []
    cols = [str(c) for c in df.columns]
    t_cols = [str(c) for c in template.columns]
    if cols != t_cols:
        problems.append(
            f"columns {cols} differ from the template's {t_cols}"
            f" ({len(cols) - 1} prediction columns, expected {len(t_cols) - 1})"
        )
    if df.shape[1] < 2:
        raise DataError("submission is invalid: it needs an id column and prediction columns", problems)
    ids = df.iloc[:, 0].astype(str).to_numpy()
    template_ids = set(template.iloc[:, 0].astype(str))
    counts = pd.Series(ids).value_counts()
    for i in counts[counts > 1].index:
        problems.append(f"id {i!r} appears {counts[i]} times (rows {np.flatnonzero(ids == i).tolist()})")
    extra = sorted(set(ids) - template_ids)
    if extra:
        problems.append(f"ids not in the template {report.preview(extra)}")
    missing = sorted(template_ids - set(ids))
    if missing:
        problems.append(f"template ids missing {report.preview(missing)}")
    allowed = None
    if label_map is not None:
        allowed = set(label_map.original) | {label_map.new_label}
    preds = df.iloc[:, 1:].to_numpy(dtype=object)
    for r in range(len(df)):
        row = preds[r]
        where = f"row {r} (id {ids[r]!r})"
        empty = [j + 1 for j, v in enumerate(row) if _is_empty(v)]
        if empty:
            problems.append(f"{where}: empty prediction in column(s) {[cols[j] for j in empty]}")
        values = [str(v).strip() for v in row if not _is_empty(v)]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            problems.append(f"{where}: repeated prediction(s) {repeated}")
        if allowed is not None:
            unknown = sorted({v for v in values if v not in allowed})
            if unknown:
                problems.append(f"{where}: prediction(s) neither original nor {label_map.new_label!r}: {unknown}")
    if problems:
        raise DataError(f"submission is invalid ({len(problems)} problems)", problems)


def write_submission(df, path, template=None, label_map=None):
    """Validate ``df`` and write it as CSV atomically.

    Validated against ``template`` (and ``label_map``) when given; without a
    template only the table's own structure is checked (unique ids, distinct
    non-empty predictions), using ``df`` as its own template.
    """
    validate_submission(df, df if template is None else template, label_map)
    fileio.atomic_write_owned_text(path, df.to_csv(index=False))  # marked as foldnet's: a rerun may replace it
    return path
