"""Writing a demo dataset folder: built in a temporary folder that replaces ``out_dir`` when
complete, marked as foldnet's, so a rebuild replaces only a folder foldnet built."""
import contextlib
import os

from foldnet.core import fileio
from foldnet.core.errors import ConfigError

# Written inside every dataset folder this module builds: a folder holding it may be replaced.
MARKER = ".foldnet-demo"


def check_out_dir(out_dir):
    """Refuse (ConfigError) an ``out_dir`` that is a file, or a non-empty folder this module did not build."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out_dir {out_dir} is an existing file, not a folder; choose another --out_dir")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MARKER)):
        raise ConfigError(f"--out_dir {out_dir} is a folder foldnet's demo-data did not build (no {MARKER} in it); "
                          "refusing to replace it: choose another --out_dir or remove it yourself")


@contextlib.contextmanager
def dataset_dir(out_dir, kind, subdirs=("images",)):
    """A temporary folder (holding ``subdirs``) that replaces ``out_dir`` when the build succeeds,
    marked as ours; refuses an ``out_dir`` this module did not build (``check_out_dir``)."""
    from foldnet.core.runlock import sibling_lock

    check_out_dir(out_dir)
    with sibling_lock(out_dir):
        fileio.clean_dir_debris(out_dir)
        check_out_dir(out_dir)
        with fileio.atomic_dir(out_dir) as tmp:
            for d in subdirs:
                os.makedirs(os.path.join(tmp, d))
            yield tmp
            with open(os.path.join(tmp, MARKER), "w") as f:
                f.write(f"{kind} dataset built by foldnet's demo-data; rebuilding replaces this folder\n")
