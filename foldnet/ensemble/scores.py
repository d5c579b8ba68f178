"""The `score` job: out-of-fold scores of one member, per fold, per TTA variant and TTA mean.

No TensorFlow here. Streams the run's OOF predictions (``rundir.open_oof``:
memory-mapped files, decoded a block of rows at a time) into the task's
scorers (``task.scorer``), so memory does not grow with the number or size
of the tiles; writes ``scores.json`` and ``scores.md`` in the run dir (and
the task's report of all folds' TTA-mean OOF outputs, stem ``RUN_DIR/oof``).
When the task saves a post-processing fitted on OOF (``task.post_file``,
classification: the open-set rule), it is fitted on all folds' TTA-mean OOF
outputs, saved there and added to both (``post``, a Markdown section).
"""
import logging
import os

from foldnet.core import fileio, report
from foldnet.core.errors import DataError
from foldnet.io import rundir

log = logging.getLogger(__name__)


def _scorers(task, spec, groups, n_views):
    """One scorer per TTA view, plus one for the TTA mean when there are several views."""
    return [task.scorer(spec, groups) for _ in range(n_views + (n_views > 1))]


def _add(scorers, ids, targets, outputs, n_views):
    for t in range(n_views):
        scorers[t].add(targets, outputs[t], ids)
    if n_views > 1:
        scorers[n_views].add(targets, outputs[:n_views].mean(axis=0), ids)


def _rows(name, n, scorers, tta_names):
    names = list(tta_names) + (["mean"] if len(tta_names) > 1 else [])
    return [{"fold": name, "tta": str(tta), "n": n, **s.scores()} for tta, s in zip(names, scorers)]


def score_run(run_dir, spec, *, task, groups=None, block_elements=None):
    """Score every fold of ``run_dir`` that has OOF predictions. Returns the rows.

    groups: {id: group} for group scores (segmentation: location IoU), or None.
    block_elements: decoded output elements per block (default ``rundir.OOF_BLOCK_ELEMENTS``).
    """
    sources = rundir.open_oof(run_dir, expected_fingerprint=spec.fingerprint())
    tta_ref = None
    for src in sources:
        tta = src.tta_names or [f"view{t}" for t in range(src.stored.shape[0])]
        if tta_ref is None:
            tta_ref = tta
        elif tta != tta_ref:
            tta_ref = tta[:min(len(tta), len(tta_ref))] if tta[:1] == tta_ref[:1] else None
    pooled = _scorers(task, spec, groups, len(tta_ref)) if tta_ref else None
    rows, problems, n_all = [], [], 0
    n_ref = len(tta_ref) if tta_ref else 0
    for src in sources:
        tta = src.tta_names or [f"view{t}" for t in range(src.stored.shape[0])]
        fold_scorers = _scorers(task, spec, groups, len(tta))
        # the pooled scorers take the fold's (merge), except a TTA mean over fewer views than the fold's
        own_mean = pooled is not None and len(pooled) > n_ref and len(tta) != n_ref
        for ids, targets, outputs in src.blocks(task, problems, block_elements):
            if problems:
                continue  # keep checking the other blocks and files; nothing is scored
            _add(fold_scorers, ids, targets, outputs, len(tta))
            if own_mean:
                pooled[n_ref].add(targets, outputs[:n_ref].mean(axis=0), ids)
        if not problems:
            rows += _rows(str(src.fold), len(src.ids), fold_scorers, tta)
            if pooled:
                for t in range(n_ref):
                    pooled[t].merge(fold_scorers[t])
                if len(pooled) > n_ref and not own_mean:
                    pooled[n_ref].merge(fold_scorers[n_ref])
        n_all += len(src.ids)
    if problems:
        raise DataError(f"{run_dir}: invalid out-of-fold predictions", problems)
    post = None
    if pooled:
        rows += _rows("all", n_all, pooled, tta_ref)
        pooled[-1].report(os.path.join(run_dir, "oof"),
                          f"{os.path.basename(os.path.normpath(run_dir))}: out-of-fold, all folds")
        post = save_post(run_dir, task, pooled[-1], {str(i): s.fold for s in sources for i in s.ids})
    result = {"folds": [s.fold for s in sources], "rows": rows}
    if post is not None:
        result["post"] = post
    fileio.atomic_write_json(os.path.join(run_dir, "scores.json"), result)
    table = report.markdown_table(rows, ["fold", "tta", "n", *task.score_keys])
    title = f"# Out-of-fold scores: {os.path.basename(os.path.normpath(run_dir))}\n\n"
    section = ("\n" + task.post_markdown(post)) if post is not None else ""
    fileio.atomic_write_text(os.path.join(run_dir, "scores.md"),
                             title + table + "\n" + task.score_note + "\n" + section)
    log.info(table + section)
    return rows


def save_post(run_dir, task, scorer, folds):
    """Fit the task's post-processing on a member's OOF (all folds, TTA mean: ``scorer``) and save it in
    ``RUN_DIR/<task.post_file>`` (atomic); returns it (None if the task saves none). folds: {id: fold}."""
    if not task.post_file:
        return None
    values, others = (rundir.row_values([run_dir], [1.0], "oof", list(folds), key) if key else None
                      for key in (task.row_value_key, task.sim_value_key))
    post = scorer.post(folds=folds, values=values, others=others)
    fileio.atomic_write_json(os.path.join(run_dir, task.post_file), post)
    if task.post_plot_name:
        task.post_plot(post, os.path.join(run_dir, task.post_plot_name))
    return post
