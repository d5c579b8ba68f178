"""Segmentation submissions: one uint8 0/1 TIFF per test tile, as a directory or a tar.

File names follow the competition (``NAMING``): Kelp Wanted ``<tile>_kelp.tif``,
On Cloud N ``<chip>.tif``. ``SubmissionWriter`` streams masks tile by tile
into a temporary sibling of the output; each mask is checked as it arrives
(known tile, once, shape, dtype, 0/1) and the output appears only when every
test tile has been added (``close``), by one rename. A failed or incomplete
submission leaves nothing behind, and an existing output is replaced only if
it carries foldnet's owner record (``fileio.check_owned_output``), never anything else.

No TensorFlow here: this module runs in light processes.
"""
import collections
import io
import os
import shutil
import tarfile
import tempfile

import numpy as np

from foldnet.core import fileio, report
from foldnet.core.errors import ConfigError, DataError

NAMING = {"kelp": "{id}_kelp.tif", "cloud": "{id}.tif", "generic": "{id}.tif", "biomassters": "{id}_agbm.tif"}
MASK_DTYPES = (np.uint8, np.bool_)


def file_name(tile_id, naming):
    return naming_pattern(naming).format(id=tile_id)


def naming_pattern(naming):
    """The file-name pattern of ``naming`` (a NAMING key or a pattern containing "{id}")."""
    pattern = NAMING.get(naming, naming)
    if "{id}" not in pattern:
        raise ValueError(f"naming must be one of {sorted(NAMING)} or a pattern with {{id}}, got {naming!r}")
    return pattern


def naming_arg(text):
    """``--naming`` of a command line: a NAMING key or a pattern with {id} (argparse's usage error otherwise)."""
    import argparse

    try:
        naming_pattern(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def id_of(name, naming):
    """The tile id of a submission file name, or None if the name does not follow ``naming``."""
    prefix, suffix = naming_pattern(naming).split("{id}")
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
        return name[len(prefix):len(name) - len(suffix)]
    return None


def mask_problems(tile_id, mask, shape):
    """Messages about one mask: shape, dtype (uint8 or bool), values other than 0/1."""
    mask = np.asarray(mask)
    problems = []
    if shape is not None and tuple(mask.shape) != tuple(shape):
        problems.append(f"{tile_id}: mask shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dtype not in MASK_DTYPES:
        problems.append(f"{tile_id}: mask dtype {mask.dtype}, expected uint8 (0/1)")
    elif mask.dtype == np.uint8 and mask.size and mask.max() > 1:
        values = np.unique(mask)
        problems.append(f"{tile_id}: mask has values other than 0/1: {values[values > 1][:5].tolist()}")
    return problems


def encode_tiff(mask, dtype=np.uint8):
    """Bytes of an uncompressed single-page TIFF of ``mask`` as ``dtype`` (uint8 masks by default)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(np.asarray(mask, dtype)))
    return buf.getvalue()


def check_replaceable(out, tar=False):
    """Raise ConfigError unless ``out`` is absent or a submission foldnet wrote (it carries its owner
    record, ``fileio.check_owned_output``; names alone prove nothing: a folder of training masks is
    named like a submission)."""
    fileio.check_owned_output(out, flag="the submission", kind="file" if tar else "dir")


def clean_debris(out):
    """Remove what an interrupted writer of ``out`` (killed before ``close``) left beside it."""
    fileio.clean_dir_debris(out)
    parent, pattern = os.path.dirname(out), fileio.dir_debris_names(os.path.basename(out))
    if os.path.isdir(parent):
        for name in os.listdir(parent):
            if name.endswith(".tar") and pattern.match(name[:-4]) and os.path.isfile(os.path.join(parent, name)):
                os.remove(os.path.join(parent, name))


class SubmissionWriter:
    """Write one mask per test tile to ``out`` (a directory, or a tar file if ``tar``).

    Use as a context manager or call ``close()``: the output appears only if
    every id of ``test_ids`` was added exactly once with a valid mask. A mask
    that is bad is reported at once (DataError) and nothing is written.
    ``shape``: the expected [H, W] (None: any, but the same for all tiles).

    Other kinds of maps: a subclass overrides ``problems`` (checks of one map), ``encode`` (its TIFF
    bytes) and the words ``item`` / ``thing`` of its messages (foldnet.tasks.temporal.submission).
    """

    item, thing = "tile", "mask"

    @staticmethod
    def problems(tile_id, mask, shape):
        return mask_problems(tile_id, mask, shape)

    @staticmethod
    def encode(mask):
        return encode_tiff(mask)

    def __init__(self, out, test_ids, naming="kelp", shape=None, tar=False):
        self.out = os.path.abspath(str(out))
        self.naming = naming
        naming_pattern(naming)
        self.test_ids = [str(i) for i in test_ids]
        self._known = set(self.test_ids)
        dup = sorted(i for i, n in collections.Counter(self.test_ids).items() if n > 1)
        if dup:
            raise DataError(f"the test {self.item} list repeats ids", [report.preview(dup)])
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.tar = bool(tar)
        self.done = set()
        check_replaceable(self.out, self.tar)
        clean_debris(self.out)
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.tmp-", dir=parent)
        self._closed = False

    def add(self, tile_id, mask):
        tile_id = str(tile_id)
        mask = np.asarray(mask)
        problems = []
        if tile_id not in self._known:
            problems.append(f"{tile_id}: not a test {self.item}")
        elif tile_id in self.done:
            problems.append(f"{tile_id}: {self.thing} given twice")
        problems += self.problems(tile_id, mask, self.shape)
        if problems:
            self.abort()
            raise DataError(f"bad submission {self.thing}", problems)
        if self.shape is None:
            self.shape = tuple(mask.shape)
        with open(os.path.join(self._tmp, file_name(tile_id, self.naming)), "wb") as f:
            f.write(self.encode(mask))
        self.done.add(tile_id)

    def close(self):
        """Check completeness, then move the result into place; returns the output path."""
        if self._closed:
            return self.out
        missing = [i for i in self.test_ids if i not in self.done]
        if missing:
            self.abort()
            raise DataError(f"submission incomplete: {len(missing)} of {len(self.test_ids)} test {self.item}s have "
                            f"no {self.thing}",
                            [report.preview(missing)])
        try:
            if self.tar:
                tar_tmp = self._tmp + ".tar"
                with tarfile.open(tar_tmp, "w") as tar:
                    for tile_id in self.test_ids:
                        name = file_name(tile_id, self.naming)
                        tar.add(os.path.join(self._tmp, name), arcname=name)
                fileio.replace_owned(tar_tmp, self.out)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self._tmp, 0o777 & ~umask)
                fileio.replace_owned(self._tmp, self.out)
        finally:
            self.abort()
        return self.out

    def abort(self):
        """Drop everything written so far (the output is untouched)."""
        self._closed = True
        for p in (self._tmp, self._tmp + ".tar"):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def id_problems(given, expected, missing_text, extra_text):
    """Messages naming the ``expected`` ids absent from ``given`` and the ``given`` ids not expected."""
    missing = [i for i in expected if i not in given]
    extra = sorted(set(given) - set(expected))
    return ([f"{missing_text} {report.preview(missing)}"] if missing else []) + (
        [f"{extra_text} {report.preview(extra)}"] if extra else [])


def write_submission(masks, out, test_ids, naming="kelp", shape=None, tar=False, writer=None):
    """Validate all ``masks`` ({id: [H, W] 0/1}) against ``test_ids`` and write them; one DataError
    names every problem (missing, unknown, bad shape/dtype/values) before anything is written.
    ``writer``: the SubmissionWriter class (a subclass for other kinds of maps)."""
    writer = writer or SubmissionWriter
    item, thing = writer.item, writer.thing
    test_ids = [str(i) for i in test_ids]
    masks = {str(k): np.asarray(v) for k, v in masks.items()}
    problems = id_problems(masks, test_ids, f"test {item}s without a {thing}",
                           f"{thing}s of {item}s not in the test list")
    if shape is None and masks:
        shapes = {m.shape for m in masks.values()}
        if len(shapes) > 1:
            problems.append(f"{thing}s have {len(shapes)} different shapes: {report.preview(sorted(shapes), 5)}")
    for tile_id in test_ids:
        if tile_id in masks:
            problems += writer.problems(tile_id, masks[tile_id], shape)
    if problems:
        raise DataError(f"submission is invalid ({len(problems)} problems); nothing written", problems)
    with writer(out, test_ids, naming=naming, shape=shape, tar=tar) as w:
        for tile_id in test_ids:
            w.add(tile_id, masks[tile_id])
    return w.out


# ---------------------------------------------------------------- reading


def read_tiff_bytes(data):
    import tifffile

    return tifffile.imread(io.BytesIO(data))


def read_masks(path, naming="kelp"):
    """{tile id: mask array} of a submission (or answers) directory or tar.

    Files whose names do not follow ``naming`` are reported, not skipped:
    DataError names every such file and every unreadable TIFF.
    """
    problems, masks = [], {}
    if os.path.isdir(path):
        entries = [(n, lambda n=n: open(os.path.join(path, n), "rb").read()) for n in sorted(os.listdir(path))]
        tar = None
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
        tar = tarfile.open(path)
        entries = [(m.name, lambda m=m: tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    else:
        raise DataError(f"{path}: not a directory or a tar file")
    try:
        for name, read in entries:
            tile_id = id_of(os.path.basename(name), naming)
            if tile_id is None:
                problems.append(f"{name}: name does not match {naming_pattern(naming)!r}")
                continue
            try:
                masks[tile_id] = read_tiff_bytes(read())
            except (OSError, ValueError, KeyError, IndexError) as e:  # tifffile's errors on bad data
                problems.append(f"{name}: cannot read TIFF ({type(e).__name__}: {e})")
    finally:
        if tar is not None:
            tar.close()
    if problems:
        raise DataError(f"{path}: {len(problems)} bad file(s)", problems)
    return masks


def refuse_csv(out_path, task_name):
    """ConfigError when a map submission (directory of TIFFs or .tar) is asked for as a CSV file."""
    if str(out_path).endswith(".csv"):
        raise ConfigError(f"{out_path}: a {task_name} submission is a directory of TIFFs or a .tar; "
                          "give a directory name or a path ending in .tar")


def read_test_ids(template_path):
    """Ids a map submission must cover: the ``id`` of the rows whose ``split`` is ``test`` of a tiles/chips
    table (``tiles.csv``, ``chips.csv``), or the first column of any other CSV."""
    import pandas as pd

    try:
        table = pd.read_csv(template_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the test tile list {template_path}", [f"{template_path}: {e}"]) from e
    if "split" in table.columns and "id" in table.columns:
        return table.loc[table["split"] == "test", "id"].to_numpy().astype(str)
    if table.shape[1] < 1:
        raise DataError(f"{template_path}: no id column")
    return table.iloc[:, 0].to_numpy().astype(str)
