"""Score tables as Markdown.

No TensorFlow here: this module runs in light processes.
"""


def format_value(value, digits=4):
    """Floats with ``digits`` decimals, None as an empty cell, anything else as str."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def preview(values, limit=10):
    """``"N: 'a', 'b', ... (+M more)"``: a count and the first ``limit`` values, for error messages."""
    values = [str(v) for v in values]
    more = f" ... (+{len(values) - limit} more)" if len(values) > limit else ""
    return f"{len(values)}: " + ", ".join(repr(v) for v in values[:limit]) + more


def markdown_table(rows, columns, digits=4):
    """A GitHub-flavoured Markdown table of ``rows`` (list of dicts).

    ``columns``: the keys to show, in order; a key missing from a row gives an
    empty cell. ``|`` inside a value is escaped.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("markdown_table needs at least one column")

    def cell(v):
        return format_value(v, digits).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
