"""Segmentation dataset layouts: Kelp Wanted, On Cloud N, and a generic CSV layout.

* ``kelp`` (Kelp Wanted, DrivenData 2024, as distributed):
  ``train_satellite/<tile>_satellite.tif`` (350x350x7 int16: SWIR, NIR, R, G,
  B, QA cloud mask with 0 = clear, DEM; -32768 = missing),
  ``train_kelp/<tile>_kelp.tif`` (uint8 0/1), ``test_satellite/``, and
  ``metadata_fTq0l2T.csv`` (tile_id, type, filename, in_train; one row per
  file, type "satellite" or "kelp"). Without the metadata file the tiles are
  listed from the directories. No group column: acquisitions of one place are
  grouped by near-duplicate detection on the DEM band (``group_duplicates``).
* ``cloud`` (On Cloud N: Cloud Cover Detection, DrivenData 2022):
  ``train_features/<chip>/{B02,B03,B04,B08}.tif`` (512x512 uint16, 0 =
  missing), ``train_labels/<chip>.tif`` (uint8 0/1), ``train_metadata.csv``
  (chip_id, location, datetime, ...); ``test_features/<chip>/`` with an
  optional ``test_metadata.csv``. Grouped by ``location``.
* ``seg`` (generic): a train CSV (and optional test CSV) with an id column, an
  image column (a multi-band TIFF, or a pattern with ``{band}`` naming one
  single-band TIFF per band of ``bands``), a mask column (train only) and an
  optional group column. Paths are relative to the CSV's directory unless
  absolute.

Every missing file, duplicate id or train/test overlap is collected and
raised as one DataError. Reading the pixels (shapes, band counts, binary
masks) is the converter's second check (foldnet.raster.tiff, in workers).
"""
import os
from dataclasses import dataclass, field

import pandas as pd

from foldnet.core import report
from foldnet.core.errors import DataError
from foldnet.io import tables as csv_tables
from foldnet.io.tables import csv_paths
from foldnet.raster.tiff import Bands
from foldnet.tasks.segmentation import settings

KELP_METADATA = "metadata_fTq0l2T.csv"
KELP_BANDS = Bands(names=("SWIR", "NIR", "R", "G", "B", "QA", "DEM"), missing_value=-32768,
                   valid_bands=(0, 1, 2, 3, 4), qa=5, dem=6, embed_bands=(6,))
CLOUD_BANDS = Bands(names=("B02", "B03", "B04", "B08"), missing_value=0, valid_bands=(0, 1, 2, 3))
LAYOUTS = settings.LAYOUTS
# Per layout: submission file naming (foldnet.raster.submission.NAMING), default grouping.
NAMING = {"kelp": "kelp", "cloud": "cloud", "seg": "generic"}
DEFAULT_GROUP_DUPLICATES = {"kelp": 0.97}
# near-duplicate clusters larger than this are split into singletons (the Kelp Wanted winner's
# IMAGES_PER_GROUP_EXPLODE_THRESHOLD = 100, aoi_grouping.py:24): e.g. the many flat all-water DEMs
MAX_GROUP_SIZE = {"kelp": 100}


@dataclass
class SegDataset:
    """``train``: id, files (tuple of band files), mask, group, source; ``test``: id, files, group, source."""

    layout: str
    bands: Bands
    train: pd.DataFrame
    test: pd.DataFrame
    csv_files: list
    root: str
    naming: str
    skipped: list = field(default_factory=list)


def detect_layout(data_dir):
    """"kelp", "cloud" or None from the directory names of ``data_dir``."""
    if data_dir is None:
        return None
    if os.path.isdir(os.path.join(data_dir, "train_satellite")):
        return "kelp"
    if os.path.isdir(os.path.join(data_dir, "train_features")) and os.path.isdir(os.path.join(data_dir, "train_labels")):
        return "cloud"
    return None


def _table(ids, files, masks, groups, sources):
    return pd.DataFrame({"id": list(ids), "files": list(files), "mask": list(masks), "group": list(groups),
                         "source": list(sources)})


def check_tables(train, test, root):
    """One DataError naming every missing file, duplicate id, and id in both train and test."""
    problems = []
    for name, df in (("train", train), ("test", test)):
        for tile_id, rows in df[df["id"].duplicated(keep=False)].groupby("id", sort=True):
            problems.append(f"{name} tile {tile_id} appears {len(rows)} times ({', '.join(rows['source'])})")
        for row in df.itertuples():
            lost = [f for f in row.files if not os.path.isfile(f)]
            if lost:
                problems.append(f"{row.source}: {name} tile {row.id}: band file(s) not found: "
                                + ", ".join(os.path.relpath(f, root) for f in lost))
            if name == "train" and (row.mask is None or not os.path.isfile(row.mask)):
                what = "no mask given" if row.mask is None else f"mask not found: {os.path.relpath(row.mask, root)}"
                problems.append(f"{row.source}: train tile {row.id}: {what}")
    both = sorted(set(train["id"]) & set(test["id"]))
    if both:
        problems.append(f"tiles both in train and test {report.preview(both)}")
    if train.empty:
        problems.append("no training tiles")
    if problems:
        raise DataError(f"bad segmentation dataset under {root}: {len(problems)} problem(s)", problems)


# ---------------------------------------------------------------- Kelp Wanted


def _true(value):
    return str(value).strip().lower() in ("true", "1", "yes", "t", "y")


def read_kelp(data_dir):
    """The Kelp Wanted layout of ``data_dir`` as a SegDataset."""
    meta = os.path.join(data_dir, KELP_METADATA)
    csv_files = []
    if os.path.isfile(meta):
        df = csv_tables.read_tables({"meta": (meta, ["tile_id", "type", "filename", "in_train"])})["meta"]
        csv_files.append(meta)
        sat = df[df["type"].str.lower() == "satellite"]
        kelp = df[df["type"].str.lower() == "kelp"]
        mask_names = dict(zip(kelp["tile_id"], kelp["filename"]))
        is_train = sat["in_train"].map(_true).to_numpy()
        train_rows, test_rows = sat[is_train], sat[~is_train]
        train = _table(train_rows["tile_id"],
                       [(os.path.join(data_dir, "train_satellite", f),) for f in train_rows["filename"]],
                       [os.path.join(data_dir, "train_kelp", mask_names.get(t, f"{t}_kelp.tif"))
                        for t in train_rows["tile_id"]], [""] * len(train_rows), train_rows["source"])
        test = _table(test_rows["tile_id"],
                      [(os.path.join(data_dir, "test_satellite", f),) for f in test_rows["filename"]],
                      [None] * len(test_rows), [""] * len(test_rows), test_rows["source"])
    else:
        train, test = (_listed_kelp(data_dir, split) for split in ("train", "test"))
    check_tables(train, test, data_dir)
    return SegDataset("kelp", KELP_BANDS, train, test, csv_files, data_dir, NAMING["kelp"])


def _listed_kelp(data_dir, split):
    folder = os.path.join(data_dir, f"{split}_satellite")
    names = sorted(n for n in os.listdir(folder) if n.endswith("_satellite.tif")) if os.path.isdir(folder) else []
    ids = [n[:-len("_satellite.tif")] for n in names]
    masks = ([os.path.join(data_dir, "train_kelp", f"{t}_kelp.tif") for t in ids] if split == "train"
             else [None] * len(ids))
    return _table(ids, [(os.path.join(folder, n),) for n in names], masks, [""] * len(ids),
                  [f"{split}_satellite/{n}" for n in names])


# ---------------------------------------------------------------- On Cloud N


def read_cloud(data_dir):
    """The On Cloud N layout of ``data_dir`` as a SegDataset (groups: location)."""
    specs = {"train": (os.path.join(data_dir, "train_metadata.csv"), ["chip_id", "location"])}
    test_meta = os.path.join(data_dir, "test_metadata.csv")
    if os.path.isfile(test_meta):
        specs["test"] = (test_meta, ["chip_id"])
    t = csv_tables.read_tables(specs)

    def files(split, chip):
        return tuple(os.path.join(data_dir, f"{split}_features", chip, f"{b}.tif") for b in CLOUD_BANDS.names)

    tr = t["train"]
    train = _table(tr["chip_id"], [files("train", c) for c in tr["chip_id"]],
                   [os.path.join(data_dir, "train_labels", f"{c}.tif") for c in tr["chip_id"]],
                   tr["location"], tr["source"])
    if "test" in t:
        te = t["test"]
        ids, groups, sources = te["chip_id"], te["location"] if "location" in te else [""] * len(te), te["source"]
    else:
        folder = os.path.join(data_dir, "test_features")
        ids = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))) \
            if os.path.isdir(folder) else []
        groups, sources = [""] * len(ids), [f"test_features/{c}" for c in ids]
    test = _table(ids, [files("test", c) for c in ids], [None] * len(ids), groups, sources)
    check_tables(train, test, data_dir)
    return SegDataset("cloud", CLOUD_BANDS, train, test, [s[0] for s in specs.values()], data_dir, NAMING["cloud"])


# ---------------------------------------------------------------- generic


def read_seg_generic(train_csv, test_csv=None, id_col="id", image_col="image", mask_col="mask", group_col=None,
                     bands=None, missing_value=None, root=None):
    """The generic segmentation layout as a SegDataset.

    ``bands``: band names (required when the image column holds a ``{band}``
    pattern; otherwise default b0, b1, ... from the first training tile).
    ``missing_value``: the value of a missing pixel (default: none missing).
    """
    root = root or os.path.dirname(os.path.abspath(train_csv))
    specs = {"train": (train_csv, [id_col, image_col, mask_col] + ([group_col] if group_col else []))}
    if test_csv is not None:
        specs["test"] = (test_csv, [id_col, image_col])
    t = csv_tables.read_tables(specs)
    patterned = any("{band}" in p for name in t for p in t[name][image_col])
    if patterned and not bands:
        raise DataError(f"{train_csv}: column {image_col} holds {{band}} patterns: give the band names (--bands)")

    def files(path):
        path = path if os.path.isabs(path) else os.path.join(root, path)
        return tuple(path.format(band=b) for b in bands) if "{band}" in path else (path,)

    def group(df):
        if not group_col or group_col not in df:
            return [""] * len(df)
        return [g if g != "" else f"id:{i}" for g, i in zip(df[group_col], df[id_col])]

    tr = t["train"]
    masks = [None if m == "" else (m if os.path.isabs(m) else os.path.join(root, m)) for m in tr[mask_col]]
    train = _table(tr[id_col], [files(p) for p in tr[image_col]], masks, group(tr), tr["source"])
    te = t.get("test")
    test = (_table(te[id_col], [files(p) for p in te[image_col]], [None] * len(te), group(te), te["source"])
            if te is not None else _table([], [], [], [], []))
    check_tables(train, test, root)
    if not bands:
        bands = _band_names_of(train["files"].iloc[0])
    n = len(bands)
    spec = Bands(names=tuple(bands), missing_value=missing_value, valid_bands=tuple(range(n)))
    return SegDataset("seg", spec, train, test, [s[0] for s in specs.values()], root, NAMING["seg"])


def _band_names_of(files):
    """b0, b1, ... for the band count of a tile's files (read the TIFF header only)."""
    import tifffile

    if len(files) > 1:
        return [f"b{i}" for i in range(len(files))]
    try:
        with tifffile.TiffFile(files[0]) as tif:
            shape = tif.series[0].shape
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise DataError(f"cannot read TIFF {files[0]} to count its bands ({type(e).__name__}: {e})") from e
    n = 1 if len(shape) == 2 else min(shape[0], shape[-1])
    return [f"b{i}" for i in range(n)]


def read_layout(layout, data_dir=None, train_csv=None, test_csv=None, id_col="id", image_col="image",
                mask_col="mask", group_col=None, bands=None, missing_value=None):
    """Read any segmentation layout."""
    if layout == "kelp":
        return read_kelp(data_dir)
    if layout == "cloud":
        return read_cloud(data_dir)
    if layout == "seg":
        if train_csv is None:
            raise DataError("the generic segmentation layout needs --train_csv")
        train_csv, test_csv, root = csv_paths(data_dir, train_csv, test_csv)
        return read_seg_generic(train_csv, test_csv, id_col, image_col, mask_col, group_col, bands, missing_value,
                                root)
    raise ValueError(f"unknown segmentation layout {layout!r} (one of {LAYOUTS})")
