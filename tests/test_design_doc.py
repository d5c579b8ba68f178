"""docs/DESIGN.md's module table is the one generated from the package (no drift)."""
import importlib.util
import os

from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def _module_table():
    spec = importlib.util.spec_from_file_location("module_table", os.path.join(ROOT, "scripts", "module_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_design_module_table_is_current():
    mt = _module_table()
    with open(os.path.join(ROOT, "docs", "DESIGN.md")) as f:
        text = f.read()
    table = mt.module_table()
    assert mt.with_table(text, table) == text, \
        "docs/DESIGN.md module table is stale: run `python scripts/module_table.py --write`"
    names = [name for name, _ in mt.module_names()]
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == names
    assert {"core.errors", "io.records", "tasks.base", "engine.train", "ensemble.averaging"} <= set(names)
    assert "| `io.rundir` | The run directory" in table
