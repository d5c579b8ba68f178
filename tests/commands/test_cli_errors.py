"""Every command line answers bad input with exit code 2 and a message, never a traceback.

One driver process calls each entry point's ``main(argv)`` for a list of bad
invocations (TensorFlow is imported once); the root scripts are also run as
real processes. A ``main`` that raises is reported with its traceback and fails.
"""
import json
import os
import subprocess
import sys

import pytest

import foldnet  # noqa: F401
from tests.paths import ROOT

DRIVER = r"""
import contextlib, io, json, sys, traceback
import foldnet
from foldnet.commands import convert
from foldnet.commands import demo_data as demo_cli
from foldnet.ensemble import cli as ensemble
from foldnet.tasks.classification import evaluate
from foldnet.engine import runner
import os
from foldnet.commands import main as foldnet_main
mains = {"convert": convert.main, "run": runner.main, "ensemble": ensemble.main, "evaluate": evaluate.main,
         "demo_data": demo_cli.main, "foldnet": foldnet_main.main}
results = []
for name, argv, env in json.load(open(sys.argv[1])):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = mains[name](argv)
        except SystemExit as e:  # argparse usage errors exit 2 themselves
            rc = e.code
        except BaseException:
            rc = "raised"
            err.write(traceback.format_exc())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    results.append({"cli": name, "argv": argv, "rc": rc, "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def cases(data, tfrec, tmp):
    foreign = os.path.join(tmp, "foreign")
    os.makedirs(foreign)
    open(os.path.join(foreign, "keep.txt"), "w").write("mine")
    bad_npz_run = os.path.join(tmp, "badrun")
    os.makedirs(os.path.join(bad_npz_run, "fold_0"))
    open(os.path.join(bad_npz_run, "fold_0", "oof.npz"), "wb").write(b"garbage")
    import shutil

    shutil.copy(os.path.join(tfrec, "label_map.json"), bad_npz_run)
    not_h5 = os.path.join(tmp, "weights.h5")
    open(not_h5, "w").write("not hdf5")
    run = ["--data_dir", data, "--tfrec_dir", tfrec, "--arch", "tiny_cnn", "--dim", "16"]
    rd = ["--run_dir", os.path.join(tmp, "r")]
    return [
        ("convert", []),
        ("convert", ["--data_dir", os.path.join(tmp, "nowhere")]),
        ("convert", ["--data_dir", data, "--n_folds", "1"]),
        ("convert", ["--data_dir", data, "--shard_size", "lots"]),
        ("convert", ["--data_dir", data, "--train_csv", "train.csv", "--id_col", "image_id", "--label_col",
                     "turtle_id", "--path_pattern", "{name}.JPG"]),
        ("convert", ["--data_dir", data, "--train_csv", "train.csv", "--path_pattern", "{id"]),
        ("convert", ["--data_dir", data, "--out_dir", "/sys/foldnet-no-write", "--workers", "1", "--no_progress"]),
        ("convert", ["--data_dir", data, "--out_dir", foreign, "--workers", "1", "--no_progress"]),
        ("convert", ["--data_dir", data, "--bogus_flag"]),
        ("run", ["--config", os.path.join(tmp, "missing.yaml")]),
        ("run", run + rd + ["--job", "train_dance"]),
        ("run", run + rd + ["--tfrec_dir", os.path.join(tmp, "no_tfrec")]),
        ("run", run + rd + ["--tta_number", "100"]),
        ("run", run + rd + ["--aug_number", "10"]),
        ("run", run + rd + ["--batch_size", "1000000000"]),
        ("run", run + rd + ["--batch_size", "0"]),
        ("run", run + rd + ["--folds", "9"]),
        ("run", run + ["--run_dir", "/sys/foldnet-no-write/run"]),
        ("run", run + rd + ["--weights", not_h5, "--job", "train"]),
        ("run", run + rd + ["--weights", os.path.join(tmp, "absent.h5"), "--job", "train"]),
        ("run", run + rd + ["--job", "predict"]),
        ("run", run + ["--run_dir", bad_npz_run, "--job", "predict", "--images", "a.jpg"]),
        ("run", run + ["--run_dir", bad_npz_run, "--job", "score"]),
        ("run", run + rd + ["--mixed_precision", "fp8"]),
        ("ensemble", ["--runs", os.path.join(tmp, "none"), "--data_dir", data, "--submission",
                      os.path.join(tmp, "s.csv")]),
        ("ensemble", ["--runs", bad_npz_run, "--data_dir", data, "--submission", os.path.join(data, "test.csv")]),
        ("ensemble", ["--runs", bad_npz_run, "--data_dir", data, "--weights", "1,x", "--submission",
                      os.path.join(tmp, "s.csv")]),
        ("ensemble", ["--runs", bad_npz_run, "--data_dir", data, "--submission", os.path.join(tmp, "s.csv")]),
        ("evaluate", ["--submission", os.path.join(tmp, "none.csv"), "--answers", os.path.join(data, "answers.csv")]),
        ("evaluate", ["--submission", os.path.join(data, "train.csv"), "--answers", os.path.join(data, "answers.csv")]),
        ("demo_data", ["--out_dir", foreign]),
        ("demo_data", ["--out_dir", os.path.join(tmp, "d"), "--image_size", "0"]),
        ("demo_data", ["--kind", "photos", "--out_dir", os.path.join(tmp, "p"), "--n_individuals", "1"]),
    ]


def issue21_cases(data, tfrec, kelp, biomass, tmp):
    """Issue 21 item 7: each was a traceback (rc 1) or a hang; and every subcommand of ``foldnet``."""
    from foldnet.commands.main import COMMANDS

    a_file = os.path.join(tmp, "a_file")
    open(a_file, "w").write("x")
    run = ["--data_dir", data, "--tfrec_dir", tfrec, "--arch", "tiny_cnn", "--dim", "16", "--job", "train",
           "--run_dir", os.path.join(tmp, "r")]
    kelp_data, kelp_tfrec = kelp
    seg = ["--data_dir", kelp_data, "--tfrec_dir", kelp_tfrec, "--arch", "tiny", "--job", "train",
           "--run_dir", os.path.join(tmp, "rs")]
    bio_data, bio_tfrec = biomass
    temporal = ["--data_dir", bio_data, "--tfrec_dir", bio_tfrec, "--arch", "tiny", "--job", "train",
                "--run_dir", os.path.join(tmp, "rt")]
    nested = os.path.join(tmp, "nested.yaml")
    open(nested, "w").write("indices: [[NDVI]]\n")
    agbm = os.path.join(tmp, "agbm")
    os.makedirs(agbm)
    open(os.path.join(agbm, "a_agbm.tif"), "wb").write(b"")
    two = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    out = [
        ("run", run + ["--lr", "nan"], {}),
        ("run", run + ["--dropout", "nan"], {}),
        ("run", ["--config", nested] + seg, {}),
        ("run", seg + ["--arch_options", "{decoder_filters: abc}"], {}),
        ("run", seg + ["--arch_options", "{decoder_filters: [-1, 0, 2]}"], {}),
        ("run", seg + ["--loss", "{dice: .nan}"], {}),
        ("run", temporal + ["--arch_options", "{widths: abc}"], {}),
        ("evaluate", ["--submission", os.path.join(data, "answers.csv"), "--answers", os.path.join(data, "answers.csv")],
         {}),
        ("foldnet", ["evaluate", "--submission", os.path.join(tmp, "sub"), "--answers", os.path.join(tmp, "ans"),
                     "--naming", "foo"], {}),
        ("foldnet", ["evaluate", "--submission", os.path.join(tmp, "sub"), "--answers", agbm, "--naming", "foo"], {}),
        ("ensemble", ["--runs", os.path.join(tmp, "badrun"), "--data_dir", data, "--submission",
                      os.path.join(a_file, "sub.csv")], {}),
        ("ensemble", ["--runs", os.path.join(tmp, "badrun"), "--data_dir", data, "--submission",
                      "/proc/foldnet-no-write/sub.csv"], {}),
        ("convert", ["--data_dir", data, "--out_dir", os.path.join(a_file, "tfrec"), "--workers", "1",
                     "--no_progress"], {}),
        ("demo_data", ["--out_dir", os.path.join(a_file, "demo")], {}),
        ("demo_data", ["--out_dir", os.path.join(tmp, "huge"), "--image_size", "100000"], {}),
        ("foldnet", ["baseline", "--data_dir", data, "--out", os.path.join(a_file, "sub.csv")], {}),
        ("foldnet", ["baseline", "--data_dir", kelp_data, "--out", os.path.join(a_file, "sub")], {}),
        ("foldnet", ["baseline", "--data_dir", kelp_data, "--out", os.path.join(kelp_data, "train_kelp")], {}),
        ("run", run, {"TF_CONFIG": json.dumps(two), "FOLDNET_CLUSTER_WAIT": "abc"}),
        ("run", run, {"TF_CONFIG": json.dumps(dict(two, task={"type": "worker", "index": 7}))}),
        ("foldnet", ["config", "--lr", "nan", "--print", "lr"], {}),
        ("foldnet", ["no-such-command"], {}),
    ]
    out += [("foldnet", [command, "--bogus_flag"], {}) for command in COMMANDS]
    return out


@pytest.fixture(scope="module")
def map_records(tmp_path_factory):
    from foldnet.commands import convert
    from foldnet.tasks.segmentation import demo_data as seg_demo_data
    from foldnet.tasks.temporal import demo_data as temporal_demo_data

    root = tmp_path_factory.mktemp("maps")
    kelp, biomass = str(root / "kelp"), str(root / "biomass")
    seg_demo_data.build_kelp_dataset(kelp, n_places=6, acquisitions=2, size=16, seed=1)
    temporal_demo_data.build_biomass_dataset(biomass, n_train=10, n_test=2, size=16, seed=1)
    for d in (kelp, biomass):
        assert convert.main(["--data_dir", d, "--n_folds", "2", "--workers", "1", "--no_progress"]) == 0
    return (kelp, os.path.join(kelp, "tfrec")), (biomass, os.path.join(biomass, "tfrec"))


def test_every_cli_error_path_exits_2_without_traceback(tiny_turtle_dir, tiny_tfrec, map_records, tmp_path):
    kelp, biomass = map_records
    masks_before = sorted(os.listdir(os.path.join(kelp[0], "train_kelp")))
    todo = [(name, argv, {}) for name, argv in cases(tiny_turtle_dir, tiny_tfrec, str(tmp_path))]
    todo += issue21_cases(tiny_turtle_dir, tiny_tfrec, kelp, biomass, str(tmp_path))
    (tmp_path / "cases.json").write_text(json.dumps(todo))
    out = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "cases.json"), str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    bad = [r for r in results if r["rc"] != 2 or "Traceback" in r["stderr"] or not r["stderr"].strip()]
    assert not bad, "\n\n".join(f"{r['cli']} {r['argv']}: rc {r['rc']}\n{r['stderr'][-1500:]}" for r in bad)
    assert len(results) == len(todo)
    assert open(os.path.join(str(tmp_path), "foreign", "keep.txt")).read() == "mine"
    assert not os.path.exists(os.path.join(str(tmp_path), "r", "fold_0"))  # nothing trained on a bad flag
    for r in ("rs", "rt"):
        assert not os.path.exists(os.path.join(str(tmp_path), r))  # refused before the run dir was made
    assert sorted(os.listdir(os.path.join(kelp[0], "train_kelp"))) == masks_before  # baseline --out train_kelp
    assert not os.path.exists(os.path.join(str(tmp_path), "huge"))


def test_root_scripts_exit_2_without_traceback(tiny_turtle_dir, tmp_path):
    for argv in ([os.path.join(ROOT, "create_tfrecords.py"), "--data_dir", str(tmp_path / "nowhere")],
                 [os.path.join(ROOT, "run.py"), "--arch", "tiny_cnn", "--tta_number", "100",
                  "--run_dir", str(tmp_path / "r"), "--data_dir", tiny_turtle_dir]):
        out = subprocess.run([sys.executable] + argv, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr and "\nerror: " in "\n" + out.stderr, out.stderr
