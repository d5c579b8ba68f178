"""The package's shape: layers (core < io < models/raster < tasks < engine/ensemble < commands),
no import cycles, no private name of another module, a task never imports another task."""
import ast
import os
import sys

from tests.paths import ROOT as ROOT_DIR

PKG = os.path.join(ROOT_DIR, "foldnet")
RANK = {"core": 0, "io": 1, "models": 2, "raster": 2, "tasks": 3, "engine": 4, "ensemble": 4, "commands": 5}


def modules():
    found = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return found


def imports(path):
    """(line, imported module, names) of every ``from foldnet... import`` (relative imports are not used)."""
    out = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module and node.module.startswith("foldnet"):
                out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_layers_only_import_downwards_and_tasks_stay_apart():
    bad = []
    for mod, path in modules().items():
        src = layer(mod)
        for line, target, _ in imports(path):
            dst = layer(target)
            if src is None or dst is None:
                continue
            if RANK[dst] > RANK[src]:
                bad.append(f"{mod}:{line} imports {target} (a higher layer)")
            if src == dst == "tasks":
                a, b = mod.split(".")[2], (target.split(".") + ["base"])[2]
                if a != "base" and b not in ("base", a):
                    bad.append(f"{mod}:{line} imports {target} (another task)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_and_no_private_names_across_modules():
    mods = modules()
    edges = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        for line, target, names in imports(path):
            for name in names:
                sub = f"{target}.{name}"
                edges[mod].add(sub if sub in mods else target)
                if sub not in mods and name.startswith("_") and target != mod:
                    private.append(f"{mod}:{line} from {target} import {name}")
        tree = ast.parse(open(path).read())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("foldnet"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{mod}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    assert not private, "\n".join(private)
    # a cycle: some module reaches itself
    cycles = []
    for start in mods:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges.get(stack.pop(), ()):
                if nxt == start:
                    cycles.append(start)
                    stack = []
                    break
                if nxt not in seen and nxt in edges:
                    seen.add(nxt)
                    stack.append(nxt)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The layer test fails on an upward import (it is not vacuous)."""
    pkg = tmp_path / "foldnet"
    (pkg / "core").mkdir(parents=True)
    (pkg / "engine").mkdir()
    (pkg / "core" / "a.py").write_text("from foldnet.engine import b\n")
    (pkg / "engine" / "b.py").write_text("x = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", str(pkg))
    try:
        test_layers_only_import_downwards_and_tasks_stay_apart()
    except AssertionError as e:
        assert "core.a:1 imports foldnet.engine" in str(e)
    else:
        raise AssertionError("an upward import went unnoticed")
