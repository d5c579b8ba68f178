"""The open-set rule (foldnet.tasks.classification.openset): hand-computed MAP@5 known / new / all, the fit, the held-out simulation."""
import itertools
import os

import numpy as np
import pandas as pd
import pytest

import foldnet  # noqa: F401
from foldnet.io import folds
from foldnet.tasks.classification import evaluate, metrics, openset, ranking
from foldnet.tasks.classification.labels import LabelMap
from foldnet.tasks.classification.task import TASK as CLASSIFICATION

# Classes a..e original, x extra-only (trained on, answered new_turtle).
LM = LabelMap(["a", "b", "c", "d", "e", "x"], original=["a", "b", "c", "d", "e"])
PROBS = np.array([
    [0.80, 0.10, 0.04, 0.03, 0.02, 0.01],  # r0 known a, confident
    [0.30, 0.35, 0.20, 0.05, 0.05, 0.05],  # r1 known b, unsure (max 0.35)
    [0.05, 0.02, 0.02, 0.01, 0.00, 0.90],  # r2 new: the extra-only individual x
    [0.40, 0.30, 0.10, 0.10, 0.05, 0.05],  # r3 new: unseen, unsure
    [0.60, 0.20, 0.10, 0.05, 0.03, 0.02],  # r4 new: unseen, fairly confident
])
TRUTH = ["a", "b", "new_turtle", "new_turtle", "new_turtle"]
IS_NEW = np.array([False, False, True, True, True])


def split(rule):
    rows = openset.top_k_labels(PROBS, LM, rule)
    return rows, openset.split_map(IS_NEW, openset.label_row_scores(TRUTH, rows))


def test_natural_rule_is_todays_ranking():
    rows, s = split(None)
    assert rows == ranking.top_k_labels(PROBS, LM)
    assert rows[0] == ["a", "b", "c", "d", "e"]          # x ranked 6th: no new label
    assert rows[2][0] == "new_turtle"                     # the extra-only class is ranked first
    assert rows[3] == ["a", "b", "c", "d", "e"]          # ties d/e/x at 0.05: x (higher index) after e
    # by hand: known (1 + 1) / 2; new (1 + 0 + 0) / 3; all 3 / 5
    assert s == {"all": pytest.approx(0.6), "known": 1.0, "new": pytest.approx(1 / 3), "n_known": 2, "n_new": 3}
    # rows 0-2 have a class in the label map: the competition metric agrees on them
    assert metrics.map5_new_individual(np.array([0, 1, 5]), PROBS[:3], LM) == pytest.approx(1.0)


def test_threshold_puts_new_first_below_it():
    rule = {"score": "max_prob", "threshold": 0.5, "new_rank": None}
    rows, s = split(rule)
    assert rows[1] == ["new_turtle", "b", "a", "c", "d"]  # 0.35 < 0.5: new first, known b drops to 2nd
    assert rows[3] == ["new_turtle", "a", "b", "c", "d"]
    assert rows[4] == ["a", "b", "c", "d", "e"]          # 0.60 >= 0.5: natural
    # by hand: known (1 + 1/2) / 2 = 0.75; new (1 + 1 + 0) / 3; all 3.5 / 5
    assert s["known"] == pytest.approx(0.75) and s["new"] == pytest.approx(2 / 3) and s["all"] == pytest.approx(0.7)


def test_fallback_rank_caps_the_natural_rank():
    rule = {"score": "max_prob", "threshold": 0.5, "new_rank": 2}
    rows, s = split(rule)
    assert rows[0] == ["a", "new_turtle", "b", "c", "d"]
    assert rows[2] == ["new_turtle", "a", "b", "c", "d"]  # natural rank 1 stays 1
    assert rows[4] == ["a", "new_turtle", "b", "c", "d"]
    # by hand: known (1 + 1/2) / 2; new (1 + 1 + 1/2) / 3; all 4 / 5
    assert s["known"] == pytest.approx(0.75) and s["new"] == pytest.approx(2.5 / 3) and s["all"] == pytest.approx(0.8)


def test_scores():
    np.testing.assert_allclose(openset.open_set_score(PROBS, LM, "max_prob"), [0.8, 0.35, 0.9, 0.4, 0.6])
    np.testing.assert_allclose(openset.open_set_score(PROBS, LM, "max_original_prob"), [0.8, 0.35, 0.05, 0.4, 0.6])
    p = np.clip(PROBS[0], 1e-12, 1)
    assert openset.open_set_score(PROBS, LM, "neg_entropy")[0] == pytest.approx(float((p * np.log(p)).sum()))
    with pytest.raises(ValueError, match="unknown open-set score"):
        openset.open_set_score(PROBS, LM, "energy")


def test_unseen_rows_are_classes_of_one_fold():
    targets = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    fold = np.array([0, 1, 0, 1, 2, 2, 2, 1])
    # class 2 only in fold 2, class 3 (one row) only in fold 1: their fold's model never saw them
    assert openset.unseen_rows(targets, fold).tolist() == [False] * 4 + [True] * 4
    assert not openset.unseen_rows(targets, np.zeros(8)).any()  # a single fold simulates nothing


def _brute_force(probs, targets, is_new, rule_grid, known_floor=-1.0):
    """Best MAP@5 over ``rule_grid`` among the rules whose known rows keep MAP@5 >= ``known_floor``."""
    truth = [LM.new_label if n else LM.labels[t] for t, n in zip(targets, is_new)]
    best = None
    for rule in rule_grid:
        row = openset.label_row_scores(truth, openset.top_k_labels(probs, LM, rule))
        if row[~is_new].mean() < known_floor - 1e-12:
            continue
        best = row.mean() if best is None else max(best, row.mean())
    return best


def test_fit_finds_the_best_rule_and_reports_its_split():
    rng = np.random.default_rng(0)
    n = 60
    targets = rng.integers(0, 6, n)
    logits = rng.normal(0, 1, (n, 6))
    logits[np.arange(n), targets] += rng.uniform(0, 4, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fold = rng.integers(0, 3, n)
    fold[targets == 2] = 1  # individual c held out of folds 0 and 2: unseen in fold 1
    rule = openset.fit_rule(targets, probs, LM, fold, max_known_loss=1.0)  # known individuals unprotected
    assert rule["simulation"] == "holdout" and rule["n_simulated_new"] == int((targets == 2).sum())
    is_new = (targets == 2) | (targets == 5)
    s = openset.open_set_score(probs, LM)
    grid = [{"score": "max_prob", "threshold": t, "new_rank": r}
            for t, r in itertools.product([None] + sorted(s + 1e-9), openset.NEW_RANKS)]
    best = _brute_force(probs, targets, is_new, grid)
    assert rule["oof"]["rule"]["all"] == pytest.approx(best)
    # protected (the default): the best rule that costs known rows at most 0.005 MAP@5
    natural_known = rule["oof"]["natural"]["known"]
    assert rule["oof"]["rule"]["known"] < natural_known - openset.MAX_KNOWN_LOSS  # the free fit costs them here
    kept = openset.fit_rule(targets, probs, LM, fold)
    assert kept["oof"]["rule"]["known"] >= natural_known - openset.MAX_KNOWN_LOSS
    assert kept["oof"]["rule"]["all"] == pytest.approx(
        _brute_force(probs, targets, is_new, grid, natural_known - openset.MAX_KNOWN_LOSS))
    assert kept["oof"]["natural"]["all"] <= kept["oof"]["rule"]["all"] < rule["oof"]["rule"]["all"]
    # the curve: no row new first at its lowest threshold, every row at its highest; each point is the
    # ranking's MAP@5 with that threshold
    truth = [LM.new_label if m else LM.labels[t] for t, m in zip(targets, is_new)]
    for point in (kept["curve"][0], kept["curve"][len(kept["curve"]) // 2], kept["curve"][-1]):
        row = openset.label_row_scores(truth, openset.top_k_labels(probs, LM, {**kept, "threshold": point["threshold"]}))
        assert openset.split_map(is_new, row)["known"] == pytest.approx(point["known"])
        assert openset.split_map(is_new, row)["new"] == pytest.approx(point["new"])
    assert kept["curve"][-1]["new"] == 1.0 and kept["curve"][0]["known"] == pytest.approx(
        kept["oof"]["natural"]["known"] if kept["new_rank"] is None else kept["curve"][0]["known"])
    assert [c["threshold"] for c in kept["curve"]] == sorted(c["threshold"] for c in kept["curve"])


def test_proxy_simulation_without_held_out_individuals():
    targets = np.array([0, 0, 1, 1, 5, 5])
    probs = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.02]] * 2 + [[0.02, 0.9, 0.02, 0.02, 0.02, 0.02]] * 2 +
                     [[0.1, 0.05, 0.05, 0.0, 0.0, 0.8], [0.0, 0.1, 0.1, 0.0, 0.0, 0.8]])
    fold = np.array([0, 1, 0, 1, 0, 1])  # every class in both folds: nothing held out
    assert openset.simulate(targets, probs, LM, folds=fold)[3] is None  # proxies are opt-in
    p, t, new, method, n_sim, _ = openset.simulate(targets, probs, LM, folds=fold, proxies=True)
    assert method == "proxy" and n_sim == 2 and len(p) == 8
    assert new.tolist() == [False] * 4 + [True] * 4 and t.tolist() == [0, 0, 1, 1, 5, 5, 5, 5]
    # the copies lost their own class (x) and were renormalised: [0.1, .05, .05] / 0.2
    np.testing.assert_allclose(p[6], [0.5, 0.25, 0.25, 0, 0, 0])
    np.testing.assert_allclose(p[:6], probs)
    # nothing non-original and nothing held out: natural rule
    rule = openset.fit_rule(targets[:4], probs[:4], LM, fold[:4], proxies=True)
    assert rule["simulation"] is None and rule["threshold"] is None and openset.describe(rule).endswith("natural rank")


def test_held_out_individuals_stay_in_one_fold():
    labels = np.repeat([f"t{i}" for i in range(10)], 6)
    held = folds.held_out_individuals(labels, 0.3, n_folds=3, seed=1)
    assert len(held) == 3 and held == sorted(held)
    assert held == folds.held_out_individuals(labels, 0.3, n_folds=3, seed=1)  # deterministic
    fold = folds.assign_folds(labels, 3, seed=1, groups=folds.individual_groups(labels, held))
    for lab in set(labels):
        n_folds_of_label = len(set(fold[labels == lab]))
        assert n_folds_of_label == (1 if lab in held else 3)
    assert folds.held_out_individuals(labels, 0, 3, 1) == []


def test_evaluate_splits_known_and_new(tmp_path):
    pd.DataFrame({"image_id": ["i1", "i2", "i3", "i4"], "turtle_id": ["a", "b", "new_turtle", "new_turtle"],
                  "individual_kind": ["original", "original", "extra_only", "test_only"]}).to_csv(
        tmp_path / "answers.csv", index=False)
    sub = pd.DataFrame([["i1", "a", "b", "c", "d", "new_turtle"], ["i2", "new_turtle", "b", "a", "c", "d"],
                        ["i3", "new_turtle", "a", "b", "c", "d"], ["i4", "a", "b", "c", "d", "e"]],
                       columns=["image_id"] + [f"prediction{k}" for k in range(1, 6)])
    sub.to_csv(tmp_path / "sub.csv", index=False)
    s = evaluate.score_submission(str(tmp_path / "sub.csv"), str(tmp_path / "answers.csv"))
    # by hand: rows score 1, 1/2, 1, 0
    assert s["map5"] == pytest.approx(2.5 / 4) and s["top1"] == pytest.approx(0.5)
    assert s["known"] == {"n": 2, "map5": pytest.approx(0.75), "top1": pytest.approx(0.5)}
    assert s["new"] == {"n": 2, "map5": pytest.approx(0.5), "top1": pytest.approx(0.5)}
    assert s["by_kind"]["test_only"] == {"n": 1, "map5": 0.0, "top1": 0.0}
    assert evaluate.main(["--submission", str(tmp_path / "sub.csv"), "--answers", str(tmp_path / "answers.csv")]) == 0


def test_held_out_run_fits_saves_and_reuses_the_rule(tiny_turtle_dir, tmp_path, log_lines):
    """create_tfrecords --holdout_individuals -> run.py (train, val, test, score, subm) -> openset_rule.json
    fitted on the held-out OOF rows; the submission, the ensemble and the predict job use it."""
    import json
    import os

    from foldnet.engine import runner
    from foldnet.ensemble import cli as ensemble
    from foldnet.ensemble.averaging import average_test
    from foldnet.io import records, rundir
    from foldnet.tasks import base as tasks
    from foldnet.tasks.classification import data
    from foldnet.tasks.classification.convert import create_tfrecords
    from tests.engine.test_training import tiny_cfg

    tfrec = str(tmp_path / "tfrec")
    manifest = create_tfrecords(data_dir=tiny_turtle_dir, out_dir=tfrec, n_folds=3, workers=1, progress=False,
                                holdout_individuals=0.34)
    assert manifest["flags"]["holdout_individuals"] == 0.34
    table = pd.read_csv(os.path.join(tfrec, "folds.csv"), dtype=str)
    held = folds.held_out_individuals(table["label"], 0.34, 3, manifest["flags"]["seed"])  # 33: Turtle layout
    assert len(held) == 2
    for lab in held:  # each held-out individual sits in one fold and no other fold's shards hold it
        (k,) = set(table.loc[table["label"] == lab, "fold"].astype(int))
        others = [f for f in range(3) if f != k]
        _, trained = data.read_ids_labels(records.fold_files(manifest, others))
        lm = LabelMap.load(os.path.join(tfrec, "label_map.json"))
        assert lm.encode([lab])[0] not in set(trained.tolist())

    run_dir = tmp_path / "member"
    cfg = tiny_cfg(tiny_turtle_dir, tfrec, run_dir, n_epochs=2, tta_number=0, job="train_val_test_score_subm",
                   openset_features=False)  # (auto: on, since this data has extra-only individuals)
    assert runner.run(cfg) == 0
    rule = json.load(open(run_dir / openset.RULE_FILE))
    assert rule["simulation"] == "holdout"
    assert rule["n_simulated_new"] == int(table["label"].isin(held).sum())
    # the saved rule is what fit_rule gives on the stored OOF predictions
    fs = rundir.read_oof(str(run_dir), tasks.get("classification"), reduce=lambda o: o.mean(axis=0))
    refit = openset.fit_rule(np.concatenate([f.targets for f in fs]), np.concatenate([f.outputs for f in fs]), lm,
                             np.concatenate([np.full(len(f.ids), f.fold) for f in fs]))
    assert json.loads(json.dumps(refit)) == rule
    scores = json.load(open(run_dir / "scores.json"))
    assert scores["post"]["threshold"] == rule["threshold"]
    assert "Open-set rule" in (run_dir / "scores.md").read_text()
    # the member's submission applies the rule to the averaged test predictions
    template = os.path.join(tiny_turtle_dir, "sample_submission.csv")
    ids = pd.read_csv(template, dtype=str)["image_id"].to_numpy()
    expected = openset.top_k_labels(average_test([str(run_dir)], ids, task=CLASSIFICATION), lm, rule)
    sub = pd.read_csv(run_dir / "submission.csv", dtype=str)
    assert sub.iloc[:, 1:].values.tolist() == expected
    # the ensemble refits it on its OOF blend and says so; without the rule file: the natural rule
    out = tmp_path / "ens" / "submission.csv"
    os.makedirs(out.parent)
    assert ensemble.main(["--runs", str(run_dir), str(run_dir), "--template", template,
                          "--submission", str(out)]) == 0
    assert pd.read_csv(out, dtype=str).values.tolist() == sub.values.tolist()
    assert "Open-set rule" in (tmp_path / "ens" / "submission.scores.md").read_text()
    os.remove(run_dir / openset.RULE_FILE)
    assert ensemble.main(["--runs", str(run_dir), "--template", template, "--submission", str(out)]) == 0
    natural = ranking.top_k_labels(average_test([str(run_dir)], ids, task=CLASSIFICATION), lm)
    assert pd.read_csv(out, dtype=str).iloc[:, 1:].values.tolist() == natural
    # the predict job reads the member's rule: a threshold above every score puts the new label first
    json.dump({**rule, "threshold": 2.0}, open(run_dir / openset.RULE_FILE, "w"))
    images = [os.path.join(tiny_turtle_dir, "images", f"{i}.JPG") for i in ids[:2]]
    log_lines.clear()
    assert runner.run(dict(cfg, job="predict", images=images)) == 0
    firsts = [line.split()[1] for line in log_lines if line.strip().startswith("1.")]
    assert firsts == [lm.new_label] * 2 and "new label first when max_prob < 2.0000" in log_lines[0]

    # --openset_features (auto, the default, on this data): val/test predicted again, each row with its similarity
    # to the fold's training images, and to those of other individuals; the score job fits the rule on them
    # (the embedding simulation: no held-out fold needed; max_prob rule as fallback) and the submission applies it
    assert runner.run(dict(cfg, job="val_test_score_subm", openset_features="auto")) == 0
    key = openset.STORED_SCORE
    for fold in range(3):
        for split in ("oof", "test"):
            with np.load(run_dir / f"fold_{fold}" / f"{split}.npz") as z:
                v, other = z[key], z[openset.OTHER_SCORE]
                assert v.shape == z["ids"].shape and (v <= 1 + 1e-5).all() and (v >= -1 - 1e-5).all()
                assert (other <= v + 1e-6).all()  # leaving images out never brings the nearest one closer
                if split == "oof":
                    assert (other < v - 1e-6).any()
    rule = json.load(open(run_dir / openset.RULE_FILE))
    values = rundir.row_values([str(run_dir)], [1.0], "test", ids, key)
    expected = openset.top_k_labels(average_test([str(run_dir)], ids, task=CLASSIFICATION), lm, rule, values=np.array([values[i] for i in ids]))
    assert pd.read_csv(run_dir / "submission.csv", dtype=str).iloc[:, 1:].values.tolist() == expected
    assert rule["simulation"] == "embedding" and rule["score"] == key and rule["fallback"]["score"] == "max_prob"
    assert rule["oof"]["rule"]["known"] >= rule["oof"]["natural"]["known"] - openset.MAX_KNOWN_LOSS
    assert (run_dir / "openset_curve.png").stat().st_size > 1000
    # --openset natural: the ensemble keeps the plain new-label rule even though a rule was fitted
    assert ensemble.main(["--runs", str(run_dir), "--template", template, "--submission", str(out),
                          "--openset", "natural"]) == 0
    assert pd.read_csv(out, dtype=str).iloc[:, 1:].values.tolist() == natural
    assert "--openset natural" in (tmp_path / "ens" / "submission.scores.md").read_text()

def test_best_rule_takes_the_stored_score_when_stored():
    rng = np.random.default_rng(1)
    n = 80
    targets = rng.integers(0, 6, n)
    probs = np.full((n, 6), 0.02)
    probs[np.arange(n), targets] = 0.9
    fold = rng.integers(0, 4, n)
    fold[targets == 3] = 2  # individual d held out: unseen in fold 2 ...
    probs[targets == 3] = np.roll(probs[targets == 3], 1, axis=1)  # ... and confidently taken for e
    values = np.where(targets == 3, 0.2, 0.9)  # but far from every training image
    plain = openset.fit_best_rule(targets, probs, LM, fold)
    best = openset.fit_best_rule(targets, probs, LM, fold, values=values)
    assert plain["score"] == "max_prob" and plain["oof"]["rule"]["new"] < 1.0
    assert best["score"] == openset.STORED_SCORE and 0.2 < best["threshold"] < 0.9
    assert best["oof"]["rule"]["new"] == 1.0 and best["oof"]["rule"]["known"] == 1.0
    assert best["fallback"] == plain
    # applied with the stored values; without them (e.g. --job predict on image files) the fallback
    rows = openset.top_k_labels(probs, LM, best, values=values)
    assert all(r[0] == "new_turtle" for r, t in zip(rows, targets) if t == 3)
    assert openset.top_k_labels(probs, LM, best) == openset.top_k_labels(probs, LM, plain)


def test_nearest_cosine_and_stored_row_values(tmp_path):
    from foldnet.io import rundir
    from foldnet.tasks.classification import task as classification

    feats = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    ref = np.array([[0.0, 1.0], [0.8, 0.6]], np.float32)
    np.testing.assert_allclose(classification.nearest_cosine(feats, ref, block=1), [0.8, 0.96], rtol=1e-6)
    # two folds of one run, one id in both (test-like): mean over folds; a second run weighted 3:1
    for run, vals in (("r0", ([0.2, 0.4], [0.6])), ("r1", ([1.0, 1.0], [1.0]))):
        for fold, (ids, v) in enumerate(((["a", "b"], vals[0]), (["a"], vals[1]))):
            path = tmp_path / run / f"fold_{fold}" / "test.npz"
            os.makedirs(path.parent)
            rundir.save_predictions(str(path), np.array(ids), np.zeros((1, len(ids), 2), np.float32),
                                    np.full(len(ids), -1), ["identity"], "fp", "w",
                                    nearest_train_cosine=np.array(v, np.float32))
    runs = [str(tmp_path / "r0"), str(tmp_path / "r1")]
    got = rundir.row_values(runs, [3.0, 1.0], "test", ["a", "b"], "nearest_train_cosine")
    # a: r0 mean(0.2, 0.6) = 0.4, r1 1.0 -> (3 * 0.4 + 1) / 4; b: r0 0.4 (fold 0 only), r1 1.0
    assert got == pytest.approx({"a": 0.55, "b": 0.55})
    assert rundir.row_values(runs, [1, 1], "test", ["a"], "missing_key") is None
    assert rundir.row_values(runs, [1, 1], "test", ["zzz"], "nearest_train_cosine") is None


def test_embedding_simulation_fits_without_held_out_folds():
    # Every class in every fold (no held-out individual). Known rows sit close to a training image of their
    # own individual (0.9); with that individual's images left out, the nearest image is another's (0.5):
    # the fit learns a threshold between, from copies of the rows standing for unseen individuals.
    rng = np.random.default_rng(3)
    n = 90
    targets = np.repeat([0, 1, 2, 3, 4, 5], 15)
    probs = np.full((n, 6), 0.02)
    probs[np.arange(n), targets] = 0.9
    fold = np.tile([0, 1, 2], 30)
    values = rng.uniform(0.85, 0.95, n)
    others = rng.uniform(0.45, 0.55, n)
    assert openset.fit_best_rule(targets, probs, LM, fold, values=values)["simulation"] is None  # before
    closed = LabelMap(["a", "b", "c", "d", "e", "x"])  # no class answers the new label: nothing to simulate
    assert openset.fit_best_rule(targets, probs, closed, fold, values=values, others=others)["simulation"] is None
    rule = openset.fit_best_rule(targets, probs, LM, fold, values=values, others=others)
    assert rule["simulation"] == "embedding" and rule["score"] == openset.STORED_SCORE
    assert rule["n_simulated_new"] == n and rule["n_rows"] == 2 * n
    assert 0.55 < rule["threshold"] < 0.85
    assert rule["oof"]["rule"]["known"] == rule["oof"]["natural"]["known"] == 1.0
    assert rule["oof"]["rule"]["new"] == 1.0 and rule["oof"]["natural"]["new"] < 1.0
    assert rule["fallback"]["score"] == "max_prob" and rule["fallback"]["simulation"] == "embedding"
    # the copies: probabilities without their own class, renormalised; the fallback may not cost known rows
    p, t, new, method, n_sim, s = openset.simulate(targets, probs, LM, fold, values=values, others=others)
    np.testing.assert_allclose(p[n], [0.0, 0.2, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(s, np.concatenate([values, others]))
    assert new.tolist() == [False] * 75 + [True] * 15 + [True] * n and t.tolist() == targets.tolist() * 2
    assert rule["fallback"]["oof"]["rule"]["known"] >= rule["fallback"]["oof"]["natural"]["known"] - 0.005
    # applied: a test row far from every training image gets the new label first
    rows = openset.top_k_labels(probs[:2], LM, rule, values=np.array([0.9, 0.5]))
    assert rows[0][0] == "a" and rows[1][0] == "new_turtle"
    assert "every OOF row again" in openset.rule_markdown(rule) and "Known vs new MAP@5" in openset.rule_markdown(rule)


def test_nearest_cosine_of_another_individual():
    from foldnet.tasks.classification import task as classification

    feats = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    ref = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    ref_labels = np.array([0, 1, 1])
    # row 0 (label 0): own image 1.0 left out -> 0.8; row 1 (label 1): 0.6 (label 0's image);
    # row 2 (label 2, not in the reference): nothing left out -> 1.0
    np.testing.assert_allclose(classification.nearest_cosine(feats, ref, np.array([0, 1, 2]), ref_labels, block=2),
                               [0.8, 0.6, 1.0], rtol=1e-6)
    # only its own individual in the reference: -1
    assert classification.nearest_cosine(feats[:1], ref[:1], np.array([0]), np.array([0]))[0] == -1.0


def test_openset_features_auto_follows_the_new_label():
    import argparse

    from foldnet.engine import config
    from foldnet.engine.runner import row_values_on
    from foldnet.tasks.classification.settings import auto_or_bool

    closed = LabelMap(["a", "b", "c", "d", "e", "f"])  # every label original: no new label
    assert row_values_on({"openset_features": "auto"}, CLASSIFICATION, LM)
    assert not row_values_on({"openset_features": "auto"}, CLASSIFICATION, closed)
    assert row_values_on({"openset_features": True}, CLASSIFICATION, closed)
    assert not row_values_on({"openset_features": False}, CLASSIFICATION, LM)
    assert auto_or_bool(" AUTO ") == "auto" and auto_or_bool("yes") is True and auto_or_bool(False) is False
    with pytest.raises(argparse.ArgumentTypeError):
        auto_or_bool("maybe")
    assert config.make_config()["openset_features"] == "auto"
    assert config.make_config(openset_features="false")["openset_features"] is False


def test_prototype_cosine_by_hand():
    from foldnet.tasks.classification import task as classification

    # training images (unit rows): individual 0 at (1, 0) and (0, 1), individual 1 at (-1, 0) and (-0.6, -0.8)
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-0.6, -0.8]], np.float32)
    ref_labels = np.array([0, 0, 1, 1])
    protos, labels = classification.prototypes(ref, ref_labels)
    # prototype 0: mean (0.5, 0.5) -> (1, 1) / sqrt 2; prototype 1: mean (-0.8, -0.4) -> (-2, -1) / sqrt 5
    r2, r5 = np.sqrt(2), np.sqrt(5)
    np.testing.assert_allclose(protos, [[1 / r2, 1 / r2], [-2 / r5, -1 / r5]], rtol=1e-6)
    assert labels.tolist() == [0, 1]
    feats = np.array([[1.0, 0.0], [0.6, -0.8], [0.0, -1.0]], np.float32)
    row_labels = np.array([0, 1, -1])  # the last row: a test image (no label)
    best = classification.nearest_cosine(feats, protos)
    other = classification.nearest_cosine(feats, protos, row_labels, labels)
    # row 0: cos to p0 = 1/sqrt2 = 0.7071, to p1 = -2/sqrt5 = -0.894 -> best 0.7071; without its own p0: -0.894
    # row 1: p0 (0.6 - 0.8)/sqrt2 = -0.1414, p1 (-1.2 + 0.8)/sqrt5 = -0.1789 -> best -0.1414; without p1: -0.1414
    # row 2: p0 -1/sqrt2 = -0.7071, p1 1/sqrt5 = 0.4472 -> 0.4472; no label: nothing left out
    np.testing.assert_allclose(best, [1 / r2, -0.2 / r2, 1 / r5], rtol=1e-5)
    np.testing.assert_allclose(other, [-2 / r5, -0.2 / r2, 1 / r5], rtol=1e-5)
    # nearest image instead (the previous default): row 0 touches its own image (1.0)
    np.testing.assert_allclose(classification.nearest_cosine(feats, ref)[0], 1.0)
    # a prototype that cancels out stays zero (cosine 0 with everything)
    zero, _ = classification.prototypes(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([3, 3]))
    np.testing.assert_allclose(zero, [[0.0, 0.0]])


def test_rules_of_the_previous_stored_score_still_apply():
    # a rule written by the previous default (nearest-image score) loads; given prototype scores it applies its
    # max_prob fallback, given its own score (values_score) it applies itself
    old = {"score": openset.NEAREST_SCORE, "threshold": 0.5, "new_rank": None,
           "fallback": {"score": "max_prob", "threshold": 0.7, "new_rank": None}}
    assert openset.usable(old, np.array([0.1] * 5)) == old["fallback"]
    assert openset.usable(old, None) == old["fallback"]
    assert openset.usable(old, np.zeros(5), values_score=openset.NEAREST_SCORE) == old
    values = np.array([0.9, 0.9, 0.9, 0.1, 0.9])
    rows = openset.top_k_labels(PROBS, LM, old, values=values)
    assert rows == openset.top_k_labels(PROBS, LM, old["fallback"])  # max_prob < 0.7: rows 1, 3, 4 new first
    assert [r[0] for r in rows] == ["a", "new_turtle", "new_turtle", "new_turtle", "new_turtle"]
    rows = openset.top_k_labels(PROBS, LM, old, values=values, values_score=openset.NEAREST_SCORE)
    assert [r[0] for r in rows] == ["a", "b", "new_turtle", "new_turtle", "a"]
    new = {**old, "score": openset.STORED_SCORE}
    assert openset.top_k_labels(PROBS, LM, new, values=values) == rows


def test_noise_matched_cap_is_recorded_not_applied():
    assert openset.known_noise([1.0, 0.5, 1.0, 0.0]) == pytest.approx(np.sqrt(0.6875 / 3) / 2)
    assert openset.known_noise([1.0]) == 0.0
    # known rows often unsure (natural MAP varies: noise well above 0.005); unseen copies far from the others
    rng = np.random.default_rng(5)
    n = 60
    targets = np.repeat([0, 1, 2, 3, 4, 5], 10)
    probs = np.full((n, 6), 0.05)
    probs[np.arange(n), targets] = 0.75
    wrong = rng.random(n) < 0.3
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)
    fold = np.tile([0, 1, 2], 20)
    values = np.where(wrong, rng.uniform(0.5, 0.7, n), rng.uniform(0.8, 0.95, n))
    others = rng.uniform(0.4, 0.75, n)
    rule = openset.fit_best_rule(targets, probs, LM, fold, values=values, others=others)
    matched = rule["noise_matched"]
    assert matched["applied"] is False and matched["max_known_loss"] == pytest.approx(rule["known_noise"])
    assert matched["max_known_loss"] > openset.MAX_KNOWN_LOSS
    assert rule["oof"]["rule"]["known"] >= rule["oof"]["natural"]["known"] - openset.MAX_KNOWN_LOSS
    assert matched["oof"]["all"] >= rule["oof"]["rule"]["all"]  # a looser cap fits at least as well on OOF
    assert "not applied" in openset.rule_markdown(rule)
    # applied: the capped rule's threshold, whatever the noise-matched one
    applied = openset.top_k_labels(probs, LM, rule, values=values)
    assert applied == openset.top_k_labels(probs, LM, {k: rule[k] for k in ("score", "threshold", "new_rank")},
                                           values=values)
