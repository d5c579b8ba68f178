"""The ``foldnet`` console script (also ``python -m foldnet``): one command with subcommands for
every task. The root scripts (``create_tfrecords.py``, ``run.py``, ``run_training.sh``,
``run_inference.sh``) call the same entry points.

    foldnet demo-data --kind kelp --out_dir data/kelp_demo
    foldnet convert --data_dir data/kelp_demo          (= create_tfrecords.py)
    foldnet run --config models/seg_demo.yaml ...      (= run.py)
    foldnet ensemble --runs runs/a runs/b ...          (= run_inference.sh's averaging)
    foldnet evaluate --submission S --answers A        (the task chosen from what it is given)
    foldnet baseline --data_dir D --out O              (the task chosen from the layout of D)
    foldnet baseline --method gbm --data_dir D --run_dir R   (map tasks: a per-pixel GBM member)
"""
import os
import sys

from foldnet.tasks import base as tasks

USAGE = __doc__.split("\n\n")[1]
# names of map submissions that are temporal-regression maps (tasks.temporal.evaluate's namings)
_TEMPORAL_NAMINGS = ("biomassters",)


def _value(argv, flag):
    """The value of ``--flag X`` or ``--flag=X`` in ``argv`` (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def evaluate_module(argv):
    """The evaluate command of the task a submission belongs to: a CSV is classification's; map
    submissions are temporal regression's when named like BioMassters targets (``--naming
    biomassters``, or ``*_agbm.tif`` answers), segmentation's otherwise."""
    submission = _value(argv, "--submission") or ""
    if submission.endswith(".csv"):
        task = "classification"
    else:
        naming = _value(argv, "--naming")
        answers = _value(argv, "--answers") or ""
        names = os.listdir(answers) if os.path.isdir(answers) else [os.path.basename(answers)]
        temporal = naming in _TEMPORAL_NAMINGS or (naming is None and any(n.endswith("_agbm.tif") for n in names))
        task = "temporal_regression" if temporal else "segmentation"
    return tasks.settings_module(task).EVALUATE


def baseline_module(argv):
    """The baseline of the task whose layout ``--data_dir`` holds (the default task's when none is recognised)."""
    from foldnet.commands.convert import detect_layout, task_of_layout

    data_dir = _value(argv, "--data_dir")
    layout = detect_layout(data_dir) if data_dir and os.path.isdir(data_dir) else None
    module = tasks.settings_module(task_of_layout(layout)).BASELINE
    if module is None:
        raise SystemExit(f"foldnet baseline: no baseline for the {layout} layout yet")
    return module


COMMANDS = {
    "demo-data": lambda argv: "foldnet.commands.demo_data",
    "convert": lambda argv: "foldnet.commands.convert",
    "run": lambda argv: "foldnet.engine.runner",
    "ensemble": lambda argv: "foldnet.ensemble.cli",
    "evaluate": evaluate_module,
    "baseline": baseline_module,
    "config": lambda argv: "foldnet.engine.config",
}


def main(argv=None):
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"foldnet: unknown command {argv[0]!r}", file=stream)
        print(f"usage: foldnet {{{','.join(COMMANDS)}}} [options]\n\n{USAGE}", file=stream)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command](rest))
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
