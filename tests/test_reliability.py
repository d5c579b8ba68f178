"""Issue 13: nothing the user owns is overwritten or deleted, one writer per output directory,
every bad input one clear exit-2 error found before any model is built, debris of kills cleaned."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.commands import demo_data as demo_cli
from foldnet.core import fileio, runlock
from foldnet.core.errors import ConfigError, DataError
from foldnet.engine import config, runner
from foldnet.ensemble import cli as ensemble
from foldnet.io import convert as io_convert
from foldnet.io import demo as demo_io
from foldnet.io import records, splits
from foldnet.tasks.classification.labels import LabelMap
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def convert_to(data_dir, out_dir, **kw):
    kw.setdefault("n_folds", 3)
    return convert.create_tfrecords(data_dir=data_dir, out_dir=str(out_dir), workers=1, progress=False, **kw)


def cfg_for(data_dir, tfrec, run_dir, **kw):
    base = dict(arch="tiny_cnn", dim=16, batch_size=8, lr=3e-3, n_epochs=1, data_dir=data_dir, tfrec_dir=str(tfrec),
                run_dir=str(run_dir), job="train_val_score", folds="0", tta_number=0, aug_number=0, verbose=0,
                early_stop_patience=0, seed=1)
    base.update(kw)
    return config.make_config(**base)


def edit_csv(path, fn):
    fn(pd.read_csv(path, dtype=str)).to_csv(path, index=False)


def tree(path):
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


# ---------------------------------------------------------------- 1. data loss


def fake_member(tiny_tfrec, run_dir):
    os.makedirs(run_dir)
    shutil.copy(os.path.join(tiny_tfrec, "label_map.json"), os.path.join(run_dir, "label_map.json"))
    return str(run_dir)


@pytest.mark.parametrize("target", ["test.csv", "sample_submission.csv", "mine.csv"])
def test_ensemble_refuses_to_overwrite_an_input_or_a_foreign_file(turtle_copy, tiny_tfrec, tmp_path, capsys, target):
    run = fake_member(tiny_tfrec, tmp_path / "m")
    path = os.path.join(turtle_copy, target)
    if target == "mine.csv":
        with open(path, "w") as f:
            f.write("my own notes\n")
    before = open(path, "rb").read()
    rc = ensemble.main(["--runs", run, "--data_dir", turtle_copy, "--submission", path])
    assert rc == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and path in err
    assert open(path, "rb").read() == before


def test_a_submission_written_by_foldnet_may_be_replaced_and_a_changed_one_not(tmp_path):
    path = str(tmp_path / "sub.csv")
    fileio.atomic_write_owned_text(path, "image_id,prediction1\na,b\n")
    fileio.check_owned_output(path)  # ours: no error
    fileio.atomic_write_owned_text(path, "image_id,prediction1\na,c\n")
    fileio.check_owned_output(path)
    with open(path, "a") as f:
        f.write("x,y\n")  # edited by the user since
    with pytest.raises(ConfigError, match="not written by foldnet"):
        fileio.check_owned_output(path)


def test_demo_data_never_replaces_a_folder_it_did_not_build(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    assert demo_cli.main(["--out_dir", str(mine), "--image_size", "8"]) == 2
    assert "not written by foldnet" in capsys.readouterr().err
    assert tree(mine) == {"thesis.txt": b"years of work"}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert demo_cli.main(["--out_dir", str(a_file), "--image_size", "8"]) == 2
    assert a_file.read_text() == "x"
    built = tmp_path / "demo"
    assert demo_cli.main(["--out_dir", str(built), "--image_size", "8"]) == 0
    assert (built / demo_io.MARKER).is_file()
    fileio.atomic_write_owned_text(str(built / "submission.csv"), "from a previous demo run")
    assert demo_cli.main(["--out_dir", str(built), "--image_size", "8"]) == 0  # its own folder: rebuilt
    assert not (built / "submission.csv").exists() and (built / "train.csv").is_file()
    # only the folder and its owner record: no lock or temporary folder left
    assert sorted(os.listdir(tmp_path)) == [".demo.foldnet", "demo", "file", "mine"]
    (built / "notes.txt").write_text("a user's file added to the demo folder")
    assert demo_cli.main(["--out_dir", str(built), "--image_size", "8"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (built / "notes.txt").is_file()


def test_conversion_refuses_an_out_dir_that_is_a_file_or_holds_a_foreign_shard(turtle_copy, tmp_path):
    a_file = tmp_path / "out"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match="existing file"):
        convert_to(turtle_copy, a_file)
    assert a_file.read_text() == "not a folder"
    out = tmp_path / "tfrec"
    out.mkdir()
    (out / "folds.csv").write_text("id,label,fold\n")
    (out / "mydata.tfrec").write_bytes(b"the user's own records")
    with pytest.raises(ConfigError, match="mydata.tfrec"):
        convert_to(turtle_copy, out)
    assert (out / "mydata.tfrec").read_bytes() == b"the user's own records"
    assert convert.main(["--data_dir", turtle_copy, "--out_dir", str(out), "--n_folds", "3", "--workers", "1",
                         "--no_progress"]) == 2


def test_conversion_replaces_its_own_output_and_only_the_shards_its_manifest_lists(turtle_copy, tmp_path):
    out = tmp_path / "tfrec"
    convert_to(turtle_copy, out)
    m = convert_to(turtle_copy, out, seed=7)  # another split: replaced
    assert m["flags"]["seed"] == 7
    assert io_convert.listed_outputs(str(out / "manifest.json")) == set(
        f for part in m["folds"] + [m["test"]] for f in part["files"])


# ---------------------------------------------------------------- 2. silent leakage


def test_a_fold_trained_on_another_split_is_refused_not_scored(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert runner.run(cfg_for(tiny_turtle_dir, tiny_tfrec, run_dir)) == 0
    manifest = records.load_manifest(tiny_tfrec)
    done = json.load(open(run_dir / "fold_0" / "done.json"))
    assert done["settings"]["split"] == splits.fold_split(manifest, 0)

    other = tmp_path / "tfrec7"
    convert_to(tiny_turtle_dir, other, seed=7)  # the same images, another fold assignment
    assert splits.fold_split(records.load_manifest(str(other)), 0) != done["settings"]["split"]
    argv = ["--arch", "tiny_cnn", "--dim", "16", "--batch_size", "8", "--n_epochs", "1", "--folds", "0",
            "--data_dir", tiny_turtle_dir, "--tfrec_dir", str(other), "--run_dir", str(run_dir), "--verbose", "0",
            "--tta_number", "0", "--aug_number", "0"]
    for job in ("train_val_score", "score", "val"):
        capsys.readouterr()
        assert runner.main(argv + ["--job", job]) == 2
        err = capsys.readouterr().err
        assert "another fold split" in err and "fold 0" in err and "--overwrite" in err
    oof = run_dir / "fold_0" / "oof.npz"
    before = oof.read_bytes()
    assert runner.main(argv + ["--job", "train_val_score", "--overwrite", "true"]) == 0
    after = json.load(open(run_dir / "fold_0" / "done.json"))
    assert after["settings"]["split"] == splits.fold_split(records.load_manifest(str(other)), 0)
    held_out = set(pd.read_csv(other / "folds.csv", dtype={"id": str}).query("fold == 0")["id"])
    with np.load(oof) as z:
        assert set(z["ids"].tolist()) == held_out
    assert oof.read_bytes() != before


def test_an_interrupted_fold_does_not_resume_on_another_split(tiny_turtle_dir, tiny_tfrec, tmp_path):
    from tests.engine.test_training import KillAfterEpoch, Killer

    run_dir = tmp_path / "run"
    with pytest.raises(KillAfterEpoch):
        runner.run(cfg_for(tiny_turtle_dir, tiny_tfrec, run_dir, n_epochs=2, job="train"), extra_callbacks=[Killer(1)])
    state = json.load(open(run_dir / "fold_0" / "state" / "state.json"))
    assert state["settings"]["split"] == splits.fold_split(records.load_manifest(tiny_tfrec), 0)
    other = tmp_path / "tfrec7"
    convert_to(tiny_turtle_dir, other, seed=7)
    with pytest.raises(ConfigError, match="split"):
        runner.run(cfg_for(tiny_turtle_dir, other, run_dir, n_epochs=2, job="train"))


# ---------------------------------------------------------------- 3. ids ignoring case


def test_duplicate_and_test_in_train_ids_are_compared_ignoring_case(turtle_copy):
    train_csv = os.path.join(turtle_copy, "train.csv")
    test_csv = os.path.join(turtle_copy, "test.csv")
    first_train = pd.read_csv(train_csv, dtype=str)["image_id"][0]
    first_test = pd.read_csv(test_csv, dtype=str)["image_id"][0]

    def add_rows(df):
        extra = pd.DataFrame({"image_id": [first_train.lower(), first_test.lower()],
                              "turtle_id": ["t_id_0005aa", "t_id_0004aa"]})
        return pd.concat([df, extra], ignore_index=True)

    edit_csv(os.path.join(turtle_copy, "extra_images.csv"), add_rows)
    with pytest.raises(DataError) as e:
        convert_to(turtle_copy, os.path.join(turtle_copy, "tfrec"))
    text = str(e.value)
    assert f"{first_train} / {first_train.lower()}" in text or f"{first_train.lower()} / {first_train}" in text
    assert "labels" in text  # two labels for one photo
    assert f"test image_id {first_test}" in text and f"as {first_test.lower()}" in text


# ---------------------------------------------------------------- 4. locks


def test_run_dir_lock_names_the_holder_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    with runlock.run_dir_lock(run_dir):
        info = runlock.read_holder(os.path.join(run_dir, runlock.RUN_LOCK_NAME))
        assert info["pid"] == os.getpid() and info["host"] and info["started"]
        code = ("import sys; from foldnet.core import runlock\n"
                "try:\n    runlock.run_dir_lock(sys.argv[1]).acquire()\n"
                "except runlock.LockedError as e:\n    print(e); sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code, run_dir], capture_output=True, text=True, timeout=60)
        assert out.returncode == 3 and f"pid {os.getpid()}" in out.stdout and "in use" in out.stdout
    assert not os.path.exists(os.path.join(run_dir, runlock.RUN_LOCK_NAME))  # a clean end leaves no lock file
    # A run killed with -9 leaves its lock file but not the lock.
    with open(os.path.join(run_dir, runlock.RUN_LOCK_NAME), "w") as f:
        json.dump({"pid": 999999, "host": "elsewhere", "started": "2020-01-01T00:00:00+00:00", "command": "run.py"}, f)
    with caplog.at_level("INFO", logger="foldnet"):
        lock = runlock.run_dir_lock(run_dir).acquire()
    assert lock.previous["pid"] == 999999 and "999999" in caplog.text and "interrupted" in caplog.text
    lock.release()


def test_two_run_py_on_one_run_dir_the_second_is_refused(tiny_turtle_dir, tiny_tfrec, tmp_path):
    run_dir = str(tmp_path / "run")
    held = runlock.run_dir_lock(run_dir).acquire()  # stands for a first run.py that is still training
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--arch", "tiny_cnn", "--dim", "16",
                              "--data_dir", tiny_turtle_dir, "--tfrec_dir", tiny_tfrec, "--run_dir", run_dir,
                              "--job", "train", "--folds", "0", "--n_epochs", "1"],
                             capture_output=True, text=True, timeout=300)
    finally:
        held.release()
    assert out.returncode == 2, out.stderr[-2000:]
    assert "in use by pid" in out.stderr and "Traceback" not in out.stderr
    assert sorted(os.listdir(run_dir)) == []  # the second run wrote nothing


def test_conversion_locks_its_out_dir(turtle_copy, tmp_path):
    out = tmp_path / "tfrec"
    with runlock.sibling_lock(str(out)):
        with pytest.raises(runlock.LockedError, match="in use"):
            convert_to(turtle_copy, out)
    assert not out.exists()


# ---------------------------------------------------------------- 5. late failures found first


def test_known_labels_leaving_fewer_than_5_submission_labels_fail_at_conversion(tmp_path):
    from tests.tasks.classification.test_layouts import write_generic

    root = write_generic(str(tmp_path))  # cat, dog known; owl maps to the new label: 3 submission labels
    with pytest.raises(DataError, match="top-5 predictions are impossible"):
        convert.create_tfrecords(data_dir=root, train_csv="tr.csv", images_dir="pics", id_col="name",
                                 label_col="species", path_pattern="{id}.png", known_labels_csv="known.csv",
                                 n_folds=3, workers=1, progress=False)
    assert not os.path.exists(os.path.join(root, "tfrec"))


@pytest.mark.parametrize("flag", [{"tta_number": 100}, {"aug_number": 10}, {"batch_size": 10 ** 9}])
def test_bad_numbers_fail_before_a_model_is_built(tiny_turtle_dir, tiny_tfrec, tmp_path, flag, monkeypatch):
    from foldnet.models import backbones as models

    def no_build(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(models, "build_model", no_build)
    with pytest.raises(ConfigError, match=list(flag)[0]):
        runner.run(cfg_for(tiny_turtle_dir, tiny_tfrec, tmp_path / "run", **flag))


# ---------------------------------------------------------------- 6. one error for every offender


def test_missing_and_corrupt_images_are_named_in_one_error(turtle_copy):
    images = os.path.join(turtle_copy, "images")
    os.remove(os.path.join(images, "ID_000003.JPG"))
    with open(os.path.join(images, "ID_000005.JPG"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(DataError) as e:
        convert_to(turtle_copy, os.path.join(turtle_copy, "tfrec"))
    text = str(e.value)
    assert "ID_000003" in text and "not found" in text
    assert "ID_000005" in text and "cannot decode" in text


# ---------------------------------------------------------------- 7. clear errors instead of tracebacks


def test_dangling_symlink_in_images_is_a_named_bad_image(turtle_copy):
    path = os.path.join(turtle_copy, "images", "ID_000004.JPG")
    os.remove(path)
    os.symlink(os.path.join(turtle_copy, "gone.jpg"), path)
    with pytest.raises(DataError) as e:
        convert_to(turtle_copy, os.path.join(turtle_copy, "tfrec"))
    assert "ID_000004" in str(e.value) and "dangling symlink" in str(e.value)


def test_full_disk_during_conversion_is_a_clear_error(turtle_copy, monkeypatch, capsys):
    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/tfrec/train-fold0-000.tfrec")

    monkeypatch.setattr(records.ShardWriter, "write", full)
    rc = convert.main(["--data_dir", turtle_copy, "--n_folds", "3", "--workers", "1", "--no_progress"])
    assert rc == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not [n for n in os.listdir(turtle_copy) if "tfrec" in n]  # nothing half-written, no lock left


def test_full_disk_during_training_is_a_clear_error(tiny_turtle_dir, tiny_tfrec, tmp_path, monkeypatch, capsys):
    from foldnet.engine import train

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "save_best", full)
    rc = runner.main(["--arch", "tiny_cnn", "--dim", "16", "--batch_size", "8", "--n_epochs", "1", "--folds", "0",
                      "--data_dir", tiny_turtle_dir, "--tfrec_dir", tiny_tfrec, "--run_dir", str(tmp_path / "r"),
                      "--job", "train", "--verbose", "0"])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err


def test_weights_of_another_architecture_are_a_clear_error(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    from foldnet.models import backbones as models

    path = str(tmp_path / "tiny.h5")
    models.build_model("tiny_cnn", n_classes=6, dim=16, weights=None).save_weights(path)
    image = os.path.join(tiny_turtle_dir, "images", "ID_000000.JPG")
    rc = runner.main(["--arch", "small_cnn", "--dim", "16", "--run_dir", str(tmp_path / "r"), "--job", "predict",
                      "--images", image, "--checkpoints", path])
    # predict needs the member's label map
    assert rc == 2
    run_dir = fake_member(tiny_tfrec, tmp_path / "m")
    capsys.readouterr()
    rc = runner.main(["--arch", "small_cnn", "--dim", "16", "--run_dir", run_dir, "--job", "predict",
                      "--images", image, "--checkpoints", path])
    assert rc == 2
    assert "tiny.h5 is not a checkpoint of small_cnn" in capsys.readouterr().err
    with pytest.raises(DataError, match="no weights in"):
        models.build_model("small_cnn", n_classes=6, dim=16, weights=path)


@pytest.mark.parametrize("kind", ["garbage", "nan"])
def test_score_on_unreadable_or_non_finite_predictions(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys, kind):
    run_dir = fake_member(tiny_tfrec, tmp_path / "m")
    os.makedirs(os.path.join(run_dir, "fold_0"))
    path = os.path.join(run_dir, "fold_0", "oof.npz")
    if kind == "garbage":
        open(path, "wb").write(b"PK\x03\x04 not really a zip")
    else:
        outputs = np.full((1, 2, 6), 1 / 6, np.float32)
        outputs[0, 1, 2] = np.nan
        np.savez(path, ids=np.array(["a", "b"]), outputs=outputs, labels=np.array([0, 1]),
                 tta_names=np.array(["identity"]), label_map_fingerprint=np.array(
                     LabelMap.load(os.path.join(run_dir, "label_map.json")).fingerprint()))
    rc = runner.main(["--data_dir", tiny_turtle_dir, "--tfrec_dir", tiny_tfrec, "--run_dir", run_dir,
                      "--job", "score"])
    err = capsys.readouterr().err
    assert rc == 2 and path in err
    assert ("unreadable" in err) if kind == "garbage" else ("NaN or inf" in err)


# ---------------------------------------------------------------- 8. debris of kill -9


def test_debris_of_interrupted_runs_is_cleaned_by_the_next_owner(tiny_turtle_dir, tiny_tfrec, tmp_path):
    run_dir = tmp_path / "run"
    state = run_dir / "fold_0" / "state"
    state.mkdir(parents=True)
    debris = [run_dir / "fold_0" / ".tmp-0123abcd-best.h5", state / "state.json.tmp-89abcdef",
              run_dir / "config.yaml.tmp-00ff00ff"]
    for p in debris:
        p.write_bytes(b"torn")
    (state / "ckpt-3_temp").mkdir()
    keep = [run_dir / "fold_0" / "notes.tmp", run_dir / "fold_0" / ".tmp-mine.txt", run_dir / "my.tmp-backup"]
    for p in keep:
        p.write_bytes(b"the user's")
    assert runner.run(cfg_for(tiny_turtle_dir, tiny_tfrec, run_dir, job="train")) == 0
    assert not any(p.exists() for p in debris) and not (state / "ckpt-3_temp").exists()
    assert all(p.read_bytes() == b"the user's" for p in keep)

    out = tmp_path / "tfrec"
    left = [tmp_path / ".tfrec.tmp-ab12cd_3", tmp_path / "tfrec.old-0123abcd"]
    for d in left:
        d.mkdir()
        (d / "train-fold0-000.tfrec").write_bytes(b"x" * 100)
    mine = tmp_path / ".tfrec.tmp-mine"
    mine.mkdir()
    convert_to(tiny_turtle_dir, out)
    assert not any(d.exists() for d in left) and mine.is_dir()


# ---------------------------------------------------------------- 9. untrusted paths and huge images


def write_path_layout(root, paths):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = []
    for i, rel in enumerate(paths):
        rows.append((f"i{i}", f"c{i % 5}", rel))
    pd.DataFrame(rows, columns=["image_id", "label", "file"]).to_csv(os.path.join(root, "train.csv"), index=False)


def test_csv_paths_must_stay_inside_the_data_folder(tmp_path):
    rng = np.random.default_rng(0)
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(secret_dir / "secret.png")
    root = tmp_path / "data"
    paths = []
    for i in range(10):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        paths.append(f"{i}.png")
    os.symlink(secret_dir / "secret.png", root / "images" / "link.png")
    write_path_layout(str(root), paths + ["../../elsewhere/secret.png", str(secret_dir / "secret.png"), "link.png"])
    kw = dict(data_dir=str(root), train_csv="train.csv", path_col="file", n_folds=2, workers=1, progress=False)
    with pytest.raises(DataError) as e:
        convert.create_tfrecords(**kw)
    assert [p for p in e.value.problems if "outside the data folder" in p and "--allow_outside" in p].__len__() == 3
    m = convert.create_tfrecords(allow_outside=True, **kw)
    assert m["n_examples"] == 13


def test_pixel_cap_is_a_named_bad_image(turtle_copy):
    with pytest.raises(DataError) as e:
        convert_to(turtle_copy, os.path.join(turtle_copy, "tfrec"), max_pixels=100)  # the images are 16x16
    assert "max_pixels" in str(e.value) and "ID_000000" in str(e.value)
