"""A run dir changes only after every check of its run has passed, and run.py writes only into a run
dir it made (issue 21 items 1 and 4); the ensemble's side files are refused unless foldnet's."""
import os
import shutil

import pytest

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.core import fileio
from foldnet.engine import runner
from foldnet.ensemble import cli as ensemble
from foldnet.io import rundir
from foldnet.tasks.segmentation import demo_data as seg_demo_data


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def kelp_tfrec(tmp_path_factory):
    data = tmp_path_factory.mktemp("kelp") / "kelp"
    seg_demo_data.build_kelp_dataset(str(data), n_places=6, acquisitions=2, size=16, seed=1)
    assert convert.main(["--data_dir", str(data), "--n_folds", "2", "--workers", "1", "--no_progress"]) == 0
    return str(data), str(data / "tfrec")


def test_run_dir_holding_the_users_config_is_never_written(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    """``--run_dir`` = the folder holding the recipe: config.yaml (comments) and scores.md were rewritten."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "config.yaml").write_text("# my recipe, with comments\narch: tiny_cnn\ndim: 16\n")
    (models / "scores.md").write_text("my notes\n")
    before = snapshot(models)
    rc = runner.main(["--config", str(models / "config.yaml"), "--run_dir", str(models), "--data_dir",
                      tiny_turtle_dir, "--tfrec_dir", tiny_tfrec, "--job", "train", "--n_epochs", "1", "--folds", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--run_dir" in err and "not written by foldnet" in err and "config.yaml" in err
    assert snapshot(models) == before and sorted(os.listdir(tmp_path)) == ["models"]


def test_a_refused_run_leaves_no_run_dir(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    run_dir = tmp_path / "r"
    rc = runner.main(["--arch", "tiny_cnn", "--dim", "16", "--data_dir", tiny_turtle_dir, "--tfrec_dir", tiny_tfrec,
                      "--run_dir", str(run_dir), "--job", "train", "--weights", str(tmp_path / "absent.h5")])
    assert rc == 2 and "absent.h5" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no run dir, no owner record, no lock


def test_test_job_with_another_tasks_records_changes_nothing(kelp_tfrec, tiny_tfrec, tmp_path, capsys):
    """``run.py --job test`` with another task's --tfrec_dir rewrote task.json and config.yaml and added
    seg_spec.json before it failed."""
    data, tfrec = kelp_tfrec
    member = tmp_path / "member"
    member.mkdir()
    rundir.write_task(str(member), "classification")
    shutil.copy(os.path.join(tiny_tfrec, "label_map.json"), member / "label_map.json")
    (member / "config.yaml").write_text("arch: tiny_cnn\n")
    before = snapshot(member)
    rc = runner.main(["--arch", "tiny", "--data_dir", data, "--tfrec_dir", tfrec, "--run_dir", str(member),
                      "--job", "test"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "classification member" in err and "segmentation records" in err
    assert snapshot(member) == before and sorted(os.listdir(tmp_path)) == ["member"]


def test_ensemble_refuses_a_users_side_file_and_rewrites_its_own(tiny_turtle_dir, tiny_tfrec, tmp_path, capsys):
    """Only the CSV was ownership-checked: a user's ``<stem>.scores.md`` beside it was overwritten."""
    run = tmp_path / "m"
    run.mkdir()
    shutil.copy(os.path.join(tiny_tfrec, "label_map.json"), run / "label_map.json")
    sub = tmp_path / "out" / "sub.csv"
    sub.parent.mkdir()
    (tmp_path / "out" / "sub.scores.md").write_text("my scores\n")
    rc = ensemble.main(["--runs", str(run), "--data_dir", tiny_turtle_dir, "--submission", str(sub)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sub.scores.md" in err and "not written by foldnet" in err
    assert (tmp_path / "out" / "sub.scores.md").read_text() == "my scores\n" and not sub.exists()
    # a side file foldnet wrote may be replaced
    fileio.atomic_write_owned_text(str(tmp_path / "out" / "sub.scores.md"), "# Ensemble\n")
    ensemble.check_ensemble(str(sub), os.path.join(tiny_turtle_dir, "sample_submission.csv"), tiny_turtle_dir,
                            object(), 5)


def test_output_path_under_a_regular_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    from foldnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="is a file, not a folder"):
        fileio.check_owned_output(str(tmp_path / "f" / "sub.csv"), flag="--submission")
