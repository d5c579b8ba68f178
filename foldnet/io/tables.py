"""Reading the CSV tables of a dataset layout: every problem of every table collected into one
DataError, and the CSV paths of a generic layout."""
import csv
import os

import pandas as pd

from foldnet.core.errors import DataError


def record_lines(path):
    """(header, [line number where each data record starts]) of a CSV, as the ``csv`` module reads it:
    blank lines skipped (as pandas skips them), a quoted value spanning lines counted in full."""
    starts, header = [], None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        previous = 0
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = [c.strip() for c in row]
            else:
                starts.append(start)
    return header or [], starts


def read_table(path, columns, problems, allow_empty=False):
    """Read ``path`` as strings; check ``columns`` exist, appear once, and rows exist (unless ``allow_empty``:
    a header-only table is an empty one).

    Appends a message to ``problems`` and returns None when the file is
    missing, unreadable, empty or lacks a column. Adds a ``source`` column naming the file and the line
    each row starts on (right after blank lines and quoted line breaks).
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        problems.append(f"{path}: file not found")
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        header, starts = record_lines(path)
    except pd.errors.EmptyDataError:
        problems.append(f"{name}: empty CSV (no header, no rows)")
        return None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        problems.append(f"{name}: cannot parse CSV ({e})")
        return None
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        problems.append(f"{name}: column(s) {', '.join(repeated)} appear more than once in the header")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        problems.append(f"{name}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
        return None
    if df.empty and not allow_empty:
        problems.append(f"{name}: empty CSV (header only, no rows)")
        return None
    df = df.apply(lambda s: s.str.strip()) if not df.empty else df
    lines = starts if len(starts) == len(df) else [i + 2 for i in range(len(df))]
    df["source"] = [f"{name} line {n}" for n in lines]
    return df


def read_tables(specs):
    """Read several CSVs ``{key: (path, columns[, allow_empty])}``; one DataError lists every problem."""
    problems = []
    tables = {key: read_table(spec[0], spec[1], problems, *spec[2:]) for key, spec in specs.items()}
    if problems:
        raise DataError(f"bad input CSV file(s): {len(problems)} problem(s)", problems)
    return tables


def outside_problems(items, root):
    """The path policy of every layout: each file a dataset reads must resolve (``..`` names, symlinks
    and absolute paths followed) inside the data folder ``root``; ``--allow_outside`` lifts it.
    ``items``: (what, path) pairs; returns one message per file outside."""
    base = os.path.realpath(root)
    problems = []
    for what, path in items:
        if not path:
            continue
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            problems.append(f"{what}: {path} resolves to {real}, outside the data folder {root} "
                            "(use --allow_outside to read it)")
    return problems


def csv_paths(data_dir, train_csv, test_csv):
    """(train CSV, test CSV or None, root) of a generic layout: CSV paths relative to ``data_dir`` (when given),
    root = ``data_dir`` or the train CSV's folder."""
    root = data_dir or os.path.dirname(os.path.abspath(train_csv))

    def join(p):
        return p if p is None or os.path.isabs(p) else os.path.join(root, p)

    return join(train_csv), join(test_csv), root
