"""Temporal regression layouts: The BioMassters as distributed, and a generic [T, H, W, C] layout.

* ``biomassters`` (The BioMassters, DrivenData 2023): per chip and month
  MM = 00..11 (00 = September, 11 = August) ``train_features/{chip}_S1_{MM}.tif``
  (256x256, 4 float32 bands VV/VH ascending, VV/VH descending, -9999 = no
  data) and ``{chip}_S2_{MM}.tif`` (256x256, 11 uint16 bands B02, B03, B04,
  B05, B06, B07, B08, B8A, B11, B12 and the cloud probability CLP; the file
  is absent for a missing month); ``train_agbm/{chip}_agbm.tif`` (float32
  above-ground biomass, Mg/ha); ``test_features/`` alike. The metadata CSVs
  (``features_metadata*.csv``: filename, chip_id, satellite, split, month,
  ...; ``train_agbm_metadata*.csv``: chip_id, filename, ...) list the files
  when present (a listed file that is not on disk is an error); otherwise the
  folders are listed. Channel order of a month: the 4 S1 bands, then the 11
  S2 bands (15). Default normalisation: the fixed min-max constants of the
  1st place solution (kbrodt/biomassters, src/dataset.py): S1 lo
  (-25, -62, -25, -60), hi (29, 28, 30, 22); S2 lo 0, hi (19616, 18400,
  17536, 17097, 16928, 16768, 16593, 16492, 15401, 15226, 255).
* ``temporal`` (generic): a train CSV (and optional test CSV) with an id
  column, an image column (a TIFF or ``.npy`` holding [T, H, W, C]) and a
  target column (a TIFF [H, W]; train only). ``--bands`` names the channels
  (default b0, b1, ...), ``--missing_value`` marks a missing value (NaN
  always does). Default normalisation: each band's q01 / q99.

Bad file names and unreadable CSVs raise a DataError at once. Every missing
file, duplicate id, train/test overlap and training chip without a target is
collected in ``dataset.problems``; the converter reads the pixels of every
other chip (shapes, band counts, chips without data: foldnet.tasks.temporal.chips,
in workers) and raises all problems together as one DataError.
"""
import collections
import glob
import os
import re
from dataclasses import dataclass, field

import pandas as pd

from foldnet.core import report
from foldnet.core.errors import DataError
from foldnet.io import tables as csv_tables
from foldnet.io.tables import csv_paths
from foldnet.tasks.temporal import settings
from foldnet.tasks.temporal.chips import ChipSpec, Sensor

LAYOUTS = settings.LAYOUTS
NAMING = {"biomassters": "biomassters", "temporal": "generic"}

S1 = Sensor("S1", ("VV_asc", "VH_asc", "VV_desc", "VH_desc"), -9999, "float32")
# CLP (index 10): cloud probability. The 1st place scales it by 255 (src/dataset.py s2_max[10]); the 2nd place
# keeps 0..100 as inliers (libs/process/clean.py INLIERS_PLAIN S2 10: max 100): values from 254 up flag no view.
S2 = Sensor("S2", ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "CLP"), None, "uint16",
            cloud_band=10, cloud_nodata=254.0)
BIOMASSTERS_BANDS = S1.bands + S2.bands
BIOMASSTERS_MONTHS = ("September", "October", "November", "December", "January", "February", "March", "April",
                      "May", "June", "July", "August")
BIOMASSTERS_NORM = dict(zip(BIOMASSTERS_BANDS, (
    [-25.0, 29.0], [-62.0, 28.0], [-25.0, 30.0], [-60.0, 22.0],
    [0.0, 19616.0], [0.0, 18400.0], [0.0, 17536.0], [0.0, 17097.0], [0.0, 16928.0], [0.0, 16768.0],
    [0.0, 16593.0], [0.0, 16492.0], [0.0, 15401.0], [0.0, 15226.0], [0.0, 255.0])))
BIOMASSTERS_TARGET = {"name": "agbm", "units": "Mg/ha"}
FEATURE_NAME = re.compile(r"^(?P<chip>.+)_(?P<sensor>S[12])_(?P<month>\d{2})\.tif$")


@dataclass
class TemporalDataset:
    """``train``/``test``: DataFrames with columns id, spec (a ChipSpec), source."""

    layout: str
    bands: tuple
    n_months: int
    train: pd.DataFrame
    test: pd.DataFrame
    csv_files: list
    root: str
    naming: str
    norm: dict = None  # {band: [lo, hi]}; None: q01 / q99 of the data
    month_names: list = field(default_factory=list)
    target: dict = field(default_factory=lambda: {"name": "target", "units": ""})
    problems: list = field(default_factory=list)  # file-level problems (check_chips), raised with the pixel checks
    bad_ids: set = field(default_factory=set)  # chips those problems name (not read again)

    def paths(self):
        """(id, path) of every existing input and target file of every chip (missing ones are problems)."""
        out = []
        for table in (self.train, self.test):
            for chip_id, spec in zip(table["id"], table["spec"]):
                files = [p for month in spec.files for p in (month if isinstance(month, tuple) else (month,))]
                out += [(chip_id, p) for p in files + [spec.target] if p is not None and os.path.isfile(p)]
        return out


def detect_layout(data_dir):
    """"biomassters" when ``data_dir`` holds train_features/ and train_agbm/, else None."""
    if data_dir and os.path.isdir(os.path.join(data_dir, "train_features")) \
            and os.path.isdir(os.path.join(data_dir, "train_agbm")):
        return "biomassters"
    return None


def _frame(rows):
    return pd.DataFrame(rows, columns=["id", "spec", "source"])


def check_chips(train, test, root):
    """(problems, ids of the chips they name): every duplicate id, missing file, training chip without a
    target, and id in both train and test. The converter raises them together with the problems it finds
    in the pixels of the other chips (one DataError); ``raise_problems`` raises them alone."""
    problems, bad = [], set()
    for name, df in (("train", train), ("test", test)):
        for chip_id, rows in df[df["id"].duplicated(keep=False)].groupby("id", sort=True):
            problems.append(f"{name} chip {chip_id} appears {len(rows)} times ({', '.join(rows['source'])})")
            bad.add(chip_id)
        for chip_id, spec, source in df.itertuples(index=False):
            before = len(problems)
            files = [p for m in spec.files for p in (m if isinstance(m, tuple) else (m,)) if p is not None]
            lost = [p for p in files if not os.path.isfile(p)]
            if lost:
                problems.append(f"{source}: {name} chip {chip_id}: file(s) not found: "
                                + ", ".join(os.path.relpath(p, root) for p in lost))
            if not files:
                problems.append(f"{source}: {name} chip {chip_id}: no month has a file")
            if name == "train" and (spec.target is None or not os.path.isfile(spec.target)):
                what = "no target given" if spec.target is None else \
                    f"target not found: {os.path.relpath(spec.target, root)}"
                problems.append(f"{source}: train chip {chip_id}: {what}")
            if len(problems) > before:
                bad.add(chip_id)
    both = sorted(set(train["id"]) & set(test["id"]))
    if both:
        problems.append(f"chips both in train and test {report.preview(both)}")
        bad.update(both)
    if train.empty:
        problems.append("no training chips")
    return problems, bad


def raise_problems(dataset, extra=()):
    """One DataError with the dataset's file-level problems and ``extra`` ones (if any)."""
    problems = list(dataset.problems) + list(extra)
    if problems:
        raise DataError(f"bad {dataset.layout} dataset under {dataset.root}: {len(problems)} problem(s); "
                        "nothing was written", problems)


# ---------------------------------------------------------------- The BioMassters


def _metadata(data_dir, stem):
    found = sorted(glob.glob(os.path.join(data_dir, f"{stem}*.csv")))
    return found[0] if found else None


def _feature_files(names, problems, where):
    """{chip: {(sensor, month): name}} of feature file names; bad names go to ``problems``."""
    chips = {}
    for name in names:
        m = FEATURE_NAME.match(name)
        if not m or int(m.group("month")) >= len(BIOMASSTERS_MONTHS):
            problems.append(f"{where}: {name}: not a feature file name {{chip}}_S1|S2_{{MM}}.tif with MM 00..11")
            continue
        chips.setdefault(m.group("chip"), {})[(m.group("sensor"), int(m.group("month")))] = name
    return chips


def _chip_spec(chip_id, split, data_dir, names, target, seed):
    folder = os.path.join(data_dir, f"{split}_features")
    files = tuple(tuple(os.path.join(folder, names[(s.name, m)]) if (s.name, m) in names else None
                        for s in (S1, S2)) for m in range(len(BIOMASSTERS_MONTHS)))
    return ChipSpec(str(chip_id), "biomassters", files, target, (S1, S2), len(BIOMASSTERS_MONTHS), seed)


def read_biomassters(data_dir):
    """The BioMassters layout of ``data_dir`` as a TemporalDataset."""
    problems, csv_files = [], []
    meta = _metadata(data_dir, "features_metadata")
    agbm_meta = _metadata(data_dir, "train_agbm_metadata")
    listed = {"train": {}, "test": {}}
    sources = {}
    if meta:
        df = csv_tables.read_tables({"meta": (meta, ["filename", "chip_id", "split"])})["meta"]
        csv_files.append(meta)
        for split in listed:
            rows = df[df["split"].str.lower() == split]
            listed[split] = _feature_files(rows["filename"], problems, os.path.basename(meta))
            for chip, source in zip(rows["chip_id"], rows["source"]):
                sources.setdefault((split, chip), source)
        unknown = sorted(set(df["split"].str.lower()) - set(listed))
        if unknown:
            problems.append(f"{os.path.basename(meta)}: unknown split value(s) {unknown} (train or test)")
    else:
        for split in listed:
            folder = os.path.join(data_dir, f"{split}_features")
            names = sorted(n for n in os.listdir(folder) if n.endswith(".tif")) if os.path.isdir(folder) else []
            listed[split] = _feature_files(names, problems, f"{split}_features")
    targets = {}
    if agbm_meta:
        t = csv_tables.read_tables({"agbm": (agbm_meta, ["chip_id", "filename"])})["agbm"]
        csv_files.append(agbm_meta)
        targets = {c: os.path.join(data_dir, "train_agbm", f) for c, f in zip(t["chip_id"], t["filename"])}
    agbm_dir = os.path.join(data_dir, "train_agbm")
    with_target = set(targets) | {n[:-len("_agbm.tif")] for n in (os.listdir(agbm_dir) if os.path.isdir(agbm_dir)
                                                                   else []) if n.endswith("_agbm.tif")}
    # a training chip with a target but no feature file was silently dropped
    problems += [f"train_agbm: chip {chip} has a target but no feature file in train_features (or the metadata)"
                 for chip in sorted(with_target - set(listed["train"]))]
    if problems:
        raise DataError(f"bad BioMassters layout under {data_dir}: {len(problems)} problem(s)", problems)
    tables = {}
    for k, split in enumerate(("train", "test")):
        rows = []
        for i, chip in enumerate(sorted(listed[split])):
            target = None
            if split == "train":
                target = targets.get(chip, os.path.join(data_dir, "train_agbm", f"{chip}_agbm.tif"))
            spec = _chip_spec(chip, split, data_dir, listed[split][chip], target, seed=k * 1_000_000 + i)
            rows.append((chip, spec, sources.get((split, chip), f"{split}_features/{chip}_*")))
        tables[split] = _frame(rows)
    problems, bad = check_chips(tables["train"], tables["test"], data_dir)
    return TemporalDataset("biomassters", BIOMASSTERS_BANDS, len(BIOMASSTERS_MONTHS), tables["train"],
                           tables["test"], csv_files, data_dir, NAMING["biomassters"], dict(BIOMASSTERS_NORM),
                           list(BIOMASSTERS_MONTHS), dict(BIOMASSTERS_TARGET), problems, bad)


# ---------------------------------------------------------------- generic [T, H, W, C]


def _stack_shape(path):
    """Shape of the [T, H, W, C] array in ``path`` (header only)."""
    import numpy as np
    import tifffile

    try:
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r").shape
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].shape
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise DataError(f"cannot read {path} to find its months and bands ({type(e).__name__}: {e})") from e


def read_temporal_generic(train_csv, test_csv=None, id_col="id", image_col="image", target_col="target",
                          bands=None, missing_value=None, root=None, target_name="target", target_units=""):
    """The generic temporal layout as a TemporalDataset (see module doc)."""
    root = root or os.path.dirname(os.path.abspath(train_csv))
    specs = {"train": (train_csv, [id_col, image_col, target_col])}
    if test_csv is not None:
        specs["test"] = (test_csv, [id_col, image_col])
    t = csv_tables.read_tables(specs)

    def path(p):
        return None if p == "" else (p if os.path.isabs(p) else os.path.join(root, p))

    # months and bands: those most training chips hold (read from the headers), so that one bad chip is
    # the one blamed, not every chip that differs from the first
    counts = collections.Counter()
    for p in t["train"][image_col]:
        file = path(p)
        try:
            shape = _stack_shape(file) if file and os.path.isfile(file) else None
        except DataError:
            shape = None  # named by the chip checks
        if shape is not None and len(shape) in (3, 4):
            counts[(int(shape[0]), int(shape[3]) if len(shape) == 4 else 1)] += 1
    if not counts:
        raise DataError(f"{train_csv}: no training chip holds a readable [T, H, W, C] array")
    n_months, n_bands = counts.most_common(1)[0][0]
    bands = tuple(bands) if bands else tuple(f"b{i}" for i in range(n_bands))
    sensor = Sensor("stack", bands, missing_value)
    tables = {}
    for k, split in enumerate(("train", "test")):
        df = t.get(split)
        rows = []
        for i, r in enumerate([] if df is None else df.to_dict("records")):
            target = path(r[target_col]) if split == "train" else None
            spec = ChipSpec(str(r[id_col]), "stack", (path(r[image_col]),), target, (sensor,), n_months,
                            k * 1_000_000 + i)
            rows.append((str(r[id_col]), spec, r["source"]))
        tables[split] = _frame(rows)
    problems, bad = check_chips(tables["train"], tables["test"], root)
    return TemporalDataset("temporal", bands, n_months, tables["train"], tables["test"],
                           [s[0] for s in specs.values()], root, NAMING["temporal"], None,
                           [f"t{m}" for m in range(n_months)], {"name": target_name, "units": target_units},
                           problems, bad)


def read_layout(layout, data_dir=None, train_csv=None, test_csv=None, id_col="id", image_col="image",
                target_col="target", bands=None, missing_value=None):
    """Read any temporal layout."""
    if layout == "biomassters":
        if not data_dir or not os.path.isdir(data_dir):
            raise DataError(f"the BioMassters layout needs --data_dir with train_features/ (got {data_dir!r})")
        return read_biomassters(data_dir)
    if layout == "temporal":
        if train_csv is None:
            raise DataError("the generic temporal layout needs --train_csv")
        train_csv, test_csv, root = csv_paths(data_dir, train_csv, test_csv)
        return read_temporal_generic(train_csv, test_csv, id_col, image_col, target_col, bands, missing_value, root)
    raise ValueError(f"unknown temporal layout {layout!r} (one of {LAYOUTS})")
