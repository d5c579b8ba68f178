"""The ``foldnet`` console script (also ``python -m foldnet``): one command with subcommands for
every task. The root scripts (``create_tfrecords.py``, ``run.py``, ``run_training.sh``,
``run_inference.sh``) call the same entry points.

    foldnet demo-data --kind kelp --out_dir data/kelp_demo
    foldnet convert --data_dir data/kelp_demo          (= create_tfrecords.py)
    foldnet run --config models/seg_demo.yaml ...      (= run.py)
    foldnet ensemble --runs runs/a runs/b ...          (= run_inference.sh's averaging)
    foldnet evaluate --submission S --answers A        (the task chosen from what it is given)
    foldnet baseline --data_dir D --out O              (the task chosen from the layout of D)
"""
import os
import sys

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
    """The evaluate command of the task a submission belongs to: a CSV is classification; map
    submissions are temporal when named like BioMassters targets (``--naming biomassters``, or
    ``*_agbm.tif`` answers), segmentation otherwise."""
    submission = _value(argv, "--submission") or ""
    if submission.endswith(".csv"):
        return "foldnet.tasks.classification.evaluate"
    naming = _value(argv, "--naming")
    answers = _value(argv, "--answers") or ""
    names = os.listdir(answers) if os.path.isdir(answers) else [os.path.basename(answers)]
    if naming in _TEMPORAL_NAMINGS or (naming is None and any(n.endswith("_agbm.tif") for n in names)):
        return "foldnet.tasks.temporal.evaluate"
    return "foldnet.tasks.segmentation.evaluate"


def baseline_module(argv):
    """The baseline of the task whose layout ``--data_dir`` holds (a map layout: the map baseline)."""
    from foldnet.commands.convert import detect_seg_layout

    data_dir = _value(argv, "--data_dir")
    if data_dir and os.path.isdir(data_dir) and detect_seg_layout(data_dir):
        return "foldnet.tasks.segmentation.baseline"
    return "foldnet.tasks.classification.baseline"


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
