"""Open-set scores the prediction files do not hold: max logit, energy, nearest training embedding.

For a member trained on held-out folds (``create_tfrecords.py
--holdout_individuals``), reloads every fold's best checkpoint and computes
per image the logits and the features entering the classifier (``logits``
layer input): max logit, energy (log-sum-exp of the logits) and the cosine
similarity to the nearest image the fold trained on. OOF rows use their
fold's model; test rows the mean over folds. Each score's rule is fitted on
the OOF rows (held-out simulation) and applied to the test set, beside the
probability scores of ``openset.SCORES``.

    python bench/bench_openset_scores.py --run RUN_DIR --tfrec_dir DIR --answers data/photos/answers.csv
"""
import argparse
import os

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import pandas as pd
from bench_openset import member_arrays, test_split

from foldnet.core import report
from foldnet.tasks.classification import openset, ranking
from foldnet.tasks.classification.task import TASK as CLASSIFICATION


def fold_features(run, tfrec_dir):
    """Per fold: {"oof": (ids, feats, logits), "test": ..., "train": ...}."""
    import tensorflow as tf

    from foldnet.engine import config, train
    from foldnet.io import records, rundir
    from foldnet.tasks import base as tasks
    from foldnet.tasks.classification import data

    manifest = records.load_manifest(tfrec_dir)
    task = tasks.for_manifest(manifest)
    spec = task.load_spec(manifest)
    cfg = config.make_config(**{**config.load_yaml(os.path.join(run, "config.yaml")), "tfrec_dir": tfrec_dir,
                                "run_dir": run})
    out = {}
    for fold, path in rundir.list_folds(run, rundir.BEST):
        model = train.load_fold_model(cfg, spec, path, task=task)
        head = model.get_layer("logits")
        probe = tf.keras.Model(model.inputs, [head.input, head.output])
        parts = {"oof": records.fold_files(manifest, fold), "test": records.test_files(manifest),
                 "train": records.fold_files(manifest, [f for f in range(manifest["n_folds"]) if f != fold])}
        out[fold] = {}
        for name, files in parts.items():
            ids, labels = data.read_ids_labels(files)
            feats, logits = probe.predict(data.eval_dataset(files, spec.n_classes, cfg["dim"], cfg["batch_size"]),
                                          verbose=0)
            feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            out[fold][name] = (np.asarray(ids).astype(str), feats, logits, labels)
    return out


def scores_of(feats, logits, train_feats):
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return {"max_logit": logits.max(1), "energy": lse, "nearest_train_cosine": (feats @ train_feats.T).max(1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--tfrec_dir", required=True)
    p.add_argument("--answers", required=True)
    a = p.parse_args(argv)
    answers = pd.read_csv(a.answers, dtype=str, keep_default_na=False)
    test_ids = answers.iloc[:, 0].to_numpy()
    label_map, targets, oof, fold = member_arrays(a.run)
    from foldnet.ensemble.averaging import average_test
    from foldnet.io import rundir
    from foldnet.tasks import base as tasks

    oof_ids = np.concatenate([f.ids for f in rundir.read_oof(a.run, tasks.get("classification"))]).astype(str)
    test = average_test([a.run], test_ids, task=CLASSIFICATION)
    feats = fold_features(a.run, a.tfrec_dir)
    names = ["max_logit", "energy", "nearest_train_cosine"]
    oof_vals = {n: np.zeros(len(oof_ids)) for n in names}
    test_vals = {n: np.zeros(len(test_ids)) for n in names}
    for k, parts in feats.items():
        train_feats = parts["train"][1]
        for split, ids_ref, vals in (("oof", oof_ids, oof_vals), ("test", test_ids, test_vals)):
            ids, f, lg, _ = parts[split]
            s = scores_of(f, lg, train_feats)
            pos = pd.Index(ids).get_indexer(ids_ref)
            for n in names:
                if split == "oof":
                    hit = pos >= 0
                    vals[n][hit] = s[n][pos[hit]]
                else:
                    vals[n] += s[n][pos] / len(feats)
    rows = []
    for n in list(openset.SCORES) + names:
        extra = {} if n in openset.SCORES else {"values": oof_vals[n]}
        rule = openset.fit_rule(targets, oof, label_map, fold, score=n if n in openset.SCORES else "max_prob",
                                **extra)
        values = None if n in openset.SCORES else test_vals[n]
        preds = ranking.top_k_labels(test, label_map, new_rank=openset.new_ranks(test, label_map, rule,
                                                                                  values=values))
        truth = answers.iloc[:, 1].astype(str).tolist()
        row = openset.label_row_scores(truth, preds)
        is_new = np.array([t == label_map.new_label for t in truth])
        t = openset.split_map(is_new, row)
        kinds = answers["individual_kind"].to_numpy()
        rows.append({"score": n, "threshold": rule["threshold"], "new_rank": rule["new_rank"] or "natural",
                     "oof_known": rule["oof"]["rule"]["known"], "oof_new": rule["oof"]["rule"]["new"],
                     "test_known": t["known"], "test_new": t["new"], "test_all": t["all"],
                     "test_only": float(row[kinds == "test_only"].mean())})
    natural = test_split(test, label_map, None, answers)
    rows.insert(0, {"score": "natural (today)", "test_known": natural["known"], "test_new": natural["new"],
                    "test_all": natural["all"], "test_only": natural.get("test_only")})
    text = ("# Open-set scores: fitted on held-out OOF rows, applied to the test set (MAP@5)\n\n" +
            report.markdown_table(rows, ["score", "threshold", "new_rank", "oof_known", "oof_new", "test_known",
                                         "test_new", "test_all", "test_only"]))
    common.write_out(text, "openset_scores")


if __name__ == "__main__":
    main()
