"""Temporal regression submissions: one float32 TIFF map per test chip, as a directory or a tar.

File names follow the competition: The BioMassters ``{chip}_agbm.tif``
(naming ``biomassters``), generic ``{id}.tif``. Built on
``seg_submission.SubmissionWriter`` (streamed, checked as each map arrives:
known chip, once, shape, finite values; the output appears by one rename
only when every test chip is in, and replaces only an earlier submission):
this module changes what a valid map is and how it is encoded.

No TensorFlow here.
"""

import numpy as np

from foldnet.raster import submission as seg_submission


def map_problems(chip_id, array, shape):
    """Messages about one predicted map: shape [H, W], a real dtype, finite values."""
    array = np.asarray(array)
    problems = []
    if shape is not None and tuple(array.shape) != tuple(shape):
        problems.append(f"{chip_id}: map shape {tuple(array.shape)}, expected {tuple(shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        problems.append(f"{chip_id}: map dtype {array.dtype}, expected float32")
    elif array.size and not np.isfinite(array).all():
        problems.append(f"{chip_id}: map has {int((~np.isfinite(array)).sum())} non-finite value(s)")
    return problems


def encode_map(array):
    """Bytes of an uncompressed single-page float32 TIFF of ``array`` [H, W]."""
    return seg_submission.encode_tiff(array, np.float32)


class MapWriter(seg_submission.SubmissionWriter):
    """``SubmissionWriter`` of float32 maps, one per test chip (see module doc)."""

    item, thing = "chip", "map"

    @staticmethod
    def problems(chip_id, array, shape):
        return map_problems(chip_id, array, shape)

    @staticmethod
    def encode(array):
        return encode_map(array)


def write_maps(maps, out, test_ids, naming="biomassters", shape=None, tar=False):
    """Validate all ``maps`` ({id: [H, W]}) against ``test_ids`` and write them as float32 TIFFs; one
    DataError names every problem (missing, unknown, bad shape, non-finite) before anything is written."""
    return seg_submission.write_submission(maps, out, test_ids, naming, shape, tar, writer=MapWriter)


def write_submission(out_path, ids, maps, spec, test_ids=None):
    """The task's submission: ``maps`` [n, H, W(, 1)] of the chips ``ids`` written to ``out_path`` (a tar
    if it ends in .tar, else a directory) named by ``spec.naming``, checked against ``test_ids``
    (default: ``ids``) and ``spec.shape``; see ``write_maps``."""
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if len(maps) != len(ids):
        raise ValueError(f"{len(ids)} ids for {len(maps)} maps")
    out_path = str(out_path)
    return write_maps(dict(zip((str(i) for i in ids), maps)), out_path, list(ids if test_ids is None else test_ids),
                      spec.naming, tuple(spec.shape), tar=out_path.endswith(".tar"))


def read_maps(path, naming="biomassters"):
    """{chip id: array} of a submission (or answers) directory or tar (``seg_submission.read_masks``)."""
    return seg_submission.read_masks(path, naming)
