"""Read a dataset layout into tables of (id, label, image path) and validate it.

Two layouts:

* Turtle Recall: ``DIR/train.csv`` (image_id,image_location,turtle_id),
  ``DIR/extra_images.csv`` (image_id,turtle_id; optional), ``DIR/test.csv``
  (image_id,image_location), images ``DIR/images/<image_id>.JPG``. Train and
  extra are merged; the labels of train.csv are the "original" ones.
* Generic: a train CSV and an optional test CSV with configurable column names,
  image paths from a column, from a pattern like ``"{id}.png"``, or found as
  ``<id>.*`` in the images directory.

Every problem of the input is collected before one DataError is raised (or,
with ``skip_bad``, the offending rows are dropped and reported as skipped).
Missing columns and empty CSVs are always errors. Ids are compared ignoring
case (image files are found ignoring case, so ``ID_ab`` and ``id_AB`` would
be one photo under two ids).

Paths from the CSVs are untrusted: an image path (from a column, a pattern,
or a symlink in the images folder) must resolve inside one of
``allowed_roots`` (the data folder and the images folder) unless
``allow_outside``.
"""
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from foldnet.core.errors import DataError
from foldnet.io.tables import read_tables
from foldnet.tasks.classification.labels import DEFAULT_NEW_LABEL

# Preferred extensions when several files match <id>.*; others follow, sorted.
_EXT_ORDER = [".JPG", ".jpg", ".jpeg", ".JPEG", ".png", ".PNG"]


@dataclass
class Dataset:
    """Validated tables. ``train``: id, label, path, source[, group, image_location];
    ``test``: id, path, source[, image_location]. ``source`` is "file.csv line N"."""

    train: pd.DataFrame
    test: pd.DataFrame
    original: list  # labels that may appear in a submission as themselves
    new_label: str
    csv_files: list  # every CSV read (for the input fingerprint)
    root: str  # image paths are reported relative to this directory
    skipped: list = field(default_factory=list)  # {"id", "source", "reason"} dropped rows


class Issue(NamedTuple):
    table: str  # "train" or "test"
    rows: tuple  # index labels of the rows to drop with skip_bad
    id: str
    message: str


# ---------------------------------------------------------------- CSV reading


# ---------------------------------------------------------------- image files


class ImageIndex:
    """Finds ``<id>.<ext>`` in one directory (listed once, not globbed per id)."""

    def __init__(self, images_dir):
        self.images_dir = images_dir
        self._by_stem = {}
        self.dangling = {}  # stem (and lower-case stem) -> path of a symlink to nothing
        names = sorted(os.listdir(images_dir)) if os.path.isdir(images_dir) else []
        for name in names:
            stem, ext = os.path.splitext(name)
            if not os.path.isfile(os.path.join(images_dir, name)):
                if os.path.islink(os.path.join(images_dir, name)):
                    self.dangling.setdefault(stem, os.path.join(images_dir, name))
                    self.dangling.setdefault(stem.lower(), os.path.join(images_dir, name))
                continue
            self._by_stem.setdefault(stem, []).append(name)
            self._by_stem.setdefault(stem.lower(), []).append(name)

    def find(self, image_id, preferred=".JPG"):
        """Path of ``<id><preferred>``, else of another ``<id>.*`` (stem matched
        exactly, then case-insensitively); None if there is none."""
        names = self._by_stem.get(image_id) or self._by_stem.get(image_id.lower()) or []
        if not names:
            return None
        order = [preferred] + _EXT_ORDER
        best = min(names, key=lambda n: (_rank(os.path.splitext(n)[1], order), n))
        return os.path.join(self.images_dir, best)


def _rank(ext, order):
    return order.index(ext) if ext in order else len(order)


def resolve_paths(df, images_dir, rel_col=None, path_pattern=None, allowed_roots=None):
    """Add ``path`` (the image file of each row, None if it does not exist),
    ``wanted`` (what was looked for, for messages) and ``outside`` (the real
    path of a file outside every one of ``allowed_roots``, else "").

    Paths come from column ``rel_col`` (relative to ``images_dir`` unless
    absolute), else from ``path_pattern`` (``"{id}.png"``), else from a search
    for ``<id>.*`` in ``images_dir``. ``allowed_roots`` None: any path is accepted.
    """
    if rel_col is None and path_pattern is None:
        index = ImageIndex(images_dir)
        df["path"] = [index.find(i) for i in df["id"]]
        df["wanted"] = [index.dangling.get(i) or index.dangling.get(i.lower())
                        or os.path.join(images_dir, f"{i}.*") for i in df["id"]]
    else:
        rel = df[rel_col] if rel_col is not None else df["id"].map(lambda i: path_pattern.format(id=i))
        df["wanted"] = [os.path.join(images_dir, p) for p in rel]  # an absolute p stays absolute
        df["path"] = [p if os.path.isfile(p) else None for p in df["wanted"]]
    df["outside"] = [outside_of(p, allowed_roots) for p in df["path"]]
    return df


def outside_of(path, roots):
    """The real path of ``path`` if it lies outside every folder of ``roots``, else ""."""
    if not isinstance(path, str) or roots is None:
        return ""
    real = os.path.realpath(path)
    for root in roots:
        root = os.path.realpath(root)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return ""
    return real


# ---------------------------------------------------------------- validation


def _rows_text(df, rows):
    return ", ".join(df.loc[list(rows), "source"])


def empty_value_issues(df, table, cols):
    """Rows with an empty value in one of ``cols`` ({internal name: CSV column name})."""
    issues = []
    for col, shown in cols.items():
        for idx in df.index[df[col] == ""]:
            issues.append(Issue(table, (idx,), df.at[idx, "id"], f"{df.at[idx, 'source']}: empty {shown}"))
    return issues


def _id_key(ids):
    """Ids as compared for identity: ignoring case, like the image lookup."""
    return ids.str.lower()


def duplicate_issues(df, table, with_labels):
    """Ids on several rows (ignoring case): a label conflict drops all of them, a
    plain duplicate keeps the first."""
    issues = []
    key = _id_key(df["id"])
    dup = df[key.duplicated(keep=False) & (df["id"] != "")]
    for _, rows in dup.groupby(key[dup.index], sort=False):
        image_id = rows["id"].iloc[0]
        spelled = sorted(set(rows["id"]))
        name = image_id if len(spelled) == 1 else " / ".join(spelled) + " (one id: case is ignored)"
        if with_labels and rows["label"].nunique() > 1:
            labels = "; ".join(f"{lab} ({src})" for lab, src in zip(rows["label"], rows["source"]))
            issues.append(Issue(table, tuple(rows.index), image_id,
                                f"image_id {name} has {rows['label'].nunique()} labels: {labels}"))
        else:
            issues.append(Issue(table, tuple(rows.index[1:]), image_id,
                                f"duplicate image_id {name}: {_rows_text(df, rows.index)}"))
    return issues


def overlap_issues(train, test):
    """Test ids also present in the training data, ignoring case (the training rows are dropped)."""
    issues = []
    train_key, test_key = _id_key(train["id"]), _id_key(test["id"])
    shared = set(train_key) & set(test_key) - {""}
    for key in sorted(shared):
        tr = train.index[train_key == key]
        te = test.index[test_key == key]
        image_id = test.at[te[0], "id"]
        issues.append(Issue("train", tuple(tr), image_id,
                            f"test image_id {image_id} ({_rows_text(test, te)}) is also in the training data "
                            f"as {train.at[tr[0], 'id']} ({_rows_text(train, tr)})"))
    return issues


def missing_image_issues(df, table, root):
    issues = []
    for idx in df.index[df["path"].isna() & (df["id"] != "")]:
        wanted = df.at[idx, "wanted"]
        what = os.path.relpath(wanted, root)
        if os.path.islink(wanted):
            reason = f"image file is a dangling symlink: {what} -> {os.readlink(wanted)}"
        else:
            reason = f"image file not found: {what}"
        issues.append(Issue(table, (idx,), df.at[idx, "id"], f"{df.at[idx, 'source']}: {reason}"))
    return issues


def outside_issues(df, table, root):
    """Rows whose image resolves outside the allowed folders (see module doc)."""
    issues = []
    for idx in df.index[df["outside"] != ""]:
        issues.append(Issue(table, (idx,), df.at[idx, "id"],
                            f"{df.at[idx, 'source']}: image path {os.path.relpath(df.at[idx, 'wanted'], root)} "
                            f"resolves to {df.at[idx, 'outside']}, outside the data folder "
                            "(use --allow_outside to read it)"))
    return issues


def collect_issues(train, test, root, label_name):
    return (
        empty_value_issues(train, "train", {"id": "id", "label": label_name})
        + empty_value_issues(test, "test", {"id": "id"})
        + duplicate_issues(train, "train", with_labels=True)
        + duplicate_issues(test, "test", with_labels=False)
        + overlap_issues(train, test)
        + missing_image_issues(train, "train", root)
        + missing_image_issues(test, "test", root)
        + outside_issues(train, "train", root)
        + outside_issues(test, "test", root)
    )


def apply_issues(train, test, issues, skip_bad):
    """Raise one DataError listing every issue, or (skip_bad) drop the rows.

    Returns (train, test, skipped) with skipped = [{"id", "source", "reason"}].
    """
    if not issues:
        return train, test, []
    if not skip_bad:
        error = DataError(f"bad input rows: {len(issues)} problem(s) (use --skip_bad to drop them)",
                          [i.message for i in issues])
        # The image files that do exist, so a caller can name the corrupt ones in the same error.
        bad_rows = {(i.table, idx) for i in issues for idx in i.rows}
        error.found_images = [(row["id"], row["path"]) for name, df in (("train", train), ("test", test))
                              for idx, row in df.iterrows()
                              if isinstance(row["path"], str) and not row["outside"] and (name, idx) not in bad_rows]
        raise error
    tables = {"train": train, "test": test}
    drop = {"train": set(), "test": set()}
    skipped = []
    for issue in issues:
        for idx in issue.rows:
            if idx not in drop[issue.table]:
                drop[issue.table].add(idx)
                skipped.append({"id": issue.id, "source": tables[issue.table].at[idx, "source"],
                                "reason": issue.message})
    return train.drop(index=list(drop["train"])), test.drop(index=list(drop["test"])), skipped


def finish(train, test, original, new_label, csv_files, root, label_name, skip_bad):
    """Validate the tables and build the Dataset (shared by both layouts)."""
    train = train.reset_index(drop=True)
    test = test.reset_index(drop=True)
    named_new = train.index[train["label"] == new_label].tolist()
    if named_new:
        # it would be both an original class and the label of unseen individuals
        raise DataError(f"{len(named_new)} training row(s) have the label {new_label!r}, the name of the new label "
                        "(individuals not in the training set)",
                        [f"{train.at[i, 'source']}: {train.at[i, 'id']}" for i in named_new[:20]]
                        + ["rename that label, or choose another --new_label"])
    issues = collect_issues(train, test, root, label_name)
    train, test, skipped = apply_issues(train, test, issues, skip_bad)
    train = train.drop(columns=["wanted", "relpath", "outside"], errors="ignore").reset_index(drop=True)
    test = test.drop(columns=["wanted", "relpath", "outside"], errors="ignore").reset_index(drop=True)
    labels = set(train["label"])
    original = sorted(set(original) & labels)
    return Dataset(train, test, original, new_label, list(csv_files), root, skipped)


# ---------------------------------------------------------------- layouts


def read_turtle(data_dir, skip_bad=False, new_label=DEFAULT_NEW_LABEL, allow_outside=False):
    """The Turtle Recall layout of ``data_dir`` as a validated Dataset."""
    specs = {
        "train": (os.path.join(data_dir, "train.csv"), ["image_id", "image_location", "turtle_id"]),
        "test": (os.path.join(data_dir, "test.csv"), ["image_id", "image_location"]),
    }
    extra_csv = os.path.join(data_dir, "extra_images.csv")
    if os.path.exists(extra_csv):
        specs["extra"] = (extra_csv, ["image_id", "turtle_id"], True)  # header only: no extra images
    t = read_tables(specs)
    original = set(t["train"]["turtle_id"]) - {""}
    parts = [t["train"], t.get("extra")]
    train = pd.concat([p for p in parts if p is not None], ignore_index=True)
    train = train.rename(columns={"image_id": "id", "turtle_id": "label"})
    train["image_location"] = train["image_location"].fillna("").str.lower()
    test = t["test"].rename(columns={"image_id": "id"})
    test["image_location"] = test["image_location"].str.lower()
    images_dir = os.path.join(data_dir, "images")
    roots = None if allow_outside else [data_dir, images_dir]
    train = resolve_paths(train[["id", "label", "image_location", "source"]], images_dir, allowed_roots=roots)
    test = resolve_paths(test[["id", "image_location", "source"]], images_dir, allowed_roots=roots)
    csv_files = [spec[0] for spec in specs.values()]
    return finish(train, test, original, new_label, csv_files, data_dir, "turtle_id", skip_bad)


def read_generic(train_csv, images_dir, id_col, label_col, test_csv=None, path_col=None, path_pattern=None,
                 group_col=None, known_labels_csv=None, new_label=DEFAULT_NEW_LABEL, skip_bad=False,
                 allow_outside=False, data_root=None):
    """A generic CSV layout as a validated Dataset.

    Image paths come from ``path_col`` (relative to ``images_dir`` unless
    absolute), from ``path_pattern`` (``"{id}.png"``), or are searched as
    ``<id>.*`` in ``images_dir``. ``known_labels_csv`` lists the "original"
    labels (column ``label_col``, else its first column); without it every
    label is original. An empty ``group_col`` value makes the row its own group.
    Unless ``allow_outside``, every image must resolve inside ``data_root``
    (default: the train CSV's folder) or ``images_dir``.
    """
    if path_col is not None and path_pattern is not None:
        raise DataError("give --path_col or --path_pattern, not both")
    extra_cols = [c for c in (path_col, group_col) if c is not None]
    specs = {"train": (train_csv, [id_col, label_col] + extra_cols)}
    if test_csv is not None:
        specs["test"] = (test_csv, [id_col] + ([path_col] if path_col else []))
    if known_labels_csv is not None:
        specs["known"] = (known_labels_csv, [])
    t = read_tables(specs)
    train = _generic_table(t["train"], id_col, path_col, group_col, label_col)
    test = _generic_table(t["test"], id_col, path_col) if test_csv is not None else _empty_test()
    rel_col = "relpath" if path_col is not None else None
    roots = None if allow_outside else [data_root or os.path.dirname(os.path.abspath(train_csv)), images_dir]
    train = resolve_paths(train, images_dir, rel_col, path_pattern, roots)
    test = resolve_paths(test, images_dir, rel_col, path_pattern, roots)
    original = _known_labels(t["known"], label_col) if known_labels_csv is not None else set(train["label"])
    root = os.path.dirname(os.path.abspath(train_csv))
    csv_files = [spec[0] for spec in specs.values()]
    return finish(train, test, original, new_label, csv_files, root, label_col, skip_bad)


def _generic_table(df, id_col, path_col, group_col=None, label_col=None):
    out = pd.DataFrame({"id": df[id_col], "source": df["source"]})
    if label_col is not None:
        out["label"] = df[label_col]
    if path_col is not None:
        out["relpath"] = df[path_col]
    if group_col is not None:
        out["group"] = [g if g != "" else f"id:{i}" for g, i in zip(df[group_col], df[id_col])]
    return out


def _empty_test():
    return pd.DataFrame({"id": pd.Series([], dtype=str), "source": pd.Series([], dtype=str),
                         "relpath": pd.Series([], dtype=str)})


def _known_labels(df, label_col):
    col = label_col if label_col in df.columns else df.columns[0]
    return set(df[col]) - {""}
