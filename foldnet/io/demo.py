"""Writing a demo dataset folder: built in a temporary folder that replaces ``out_dir`` when
complete, with foldnet's owner record (``fileio.check_owned_output``), so a rebuild replaces only
a folder foldnet built and nobody added files to."""
import contextlib
import os

from foldnet.core import fileio

# Written inside every dataset folder this module builds: a folder holding it may be replaced.
MARKER = ".foldnet-demo"


def built_before_records(out_dir):
    """A demo folder of a version before owner records: it holds ``MARKER``."""
    return os.path.isfile(os.path.join(out_dir, MARKER))


def check_out_dir(out_dir):
    """Refuse (ConfigError) an ``out_dir`` that is a file, or a non-empty folder foldnet did not build
    (no owner record, or files added since: ``fileio.check_owned_output``)."""
    fileio.check_owned_output(out_dir, flag="--out_dir", kind="dir", legacy=built_before_records)


@contextlib.contextmanager
def dataset_dir(out_dir, kind, subdirs=("images",)):
    """A temporary folder (holding ``subdirs``) that replaces ``out_dir`` when the build succeeds,
    marked as ours; refuses an ``out_dir`` this module did not build (``check_out_dir``)."""
    from foldnet.core.runlock import sibling_lock

    check_out_dir(out_dir)
    with sibling_lock(out_dir):
        fileio.clean_dir_debris(out_dir)
        check_out_dir(out_dir)
        with fileio.atomic_dir(out_dir, owned=True) as tmp:
            for d in subdirs:
                os.makedirs(os.path.join(tmp, d))
            yield tmp
            with open(os.path.join(tmp, MARKER), "w") as f:
                f.write(f"{kind} dataset built by foldnet's demo-data; rebuilding replaces this folder\n")
