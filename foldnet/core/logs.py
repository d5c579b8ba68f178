"""Logging of foldnet: module loggers (``logging.getLogger(__name__)``), configured by the entry points.

Library code only logs; the command lines (``run.py``, ``create_tfrecords.py``,
``python -m foldnet.ensemble.cli``) call ``setup`` once, which sends the records
of the ``foldnet`` loggers as bare messages (the lines look as they always
did) to stdout, or to stderr for tools whose stdout is data. ``--quiet``
shows warnings and errors only, ``--debug`` adds debug lines.

The handler looks up ``sys.stdout`` / ``sys.stderr`` when it writes, so
redirections made after ``setup`` (pytest's capture, notebooks) are honoured.
From Python without ``setup`` the standard rules apply: INFO lines are not
shown unless the application configures logging (e.g. ``logs.setup()``).
"""
import logging
import sys

ROOT = "foldnet"


class _StdStreamHandler(logging.Handler):
    """Writes formatted records to ``sys.<name>`` as it is at the time of writing."""

    def __init__(self, name):
        super().__init__()
        self.stream_name = name

    def emit(self, record):
        try:
            stream = getattr(sys, self.stream_name)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging must never raise: the standard handler contract)
            self.handleError(record)


def setup(verbosity=0, stream="stdout"):
    """Configure the ``foldnet`` loggers: verbosity -1 quiet (warnings), 0 info, 1 debug. Idempotent."""
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if isinstance(h, _StdStreamHandler)]:
        logger.removeHandler(h)
    handler = _StdStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    # Not again through the root logger: libraries loaded later (TensorFlow's absl) give it a handler
    # of their own, which would print every line a second time as "INFO:foldnet...".
    logger.propagate = False
    return logger


def add_flags(parser):
    """--quiet / --debug on an argparse parser."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true", help="Show warnings and errors only")
    g.add_argument("--debug", action="store_true", help="Also show debug lines")


def verbosity(args):
    """-1 / 0 / 1 from the --quiet / --debug flags of ``args`` (a Namespace or a dict)."""
    get = args.get if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    return -1 if get("quiet", False) else 1 if get("debug", False) else 0
