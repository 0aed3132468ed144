"""The import rules of docs/architecture.md, checked on the source (function-level imports included)."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unetr"

# Each top-level module or package of unetr and its layer: a module imports only from strictly lower layers
# (and from inside its own package). The table is the one in docs/architecture.md.
LAYERS = {
    "errors": 0, "fsutil": 0, "device": 0, "allocator": 0, "grid": 0, "labels": 0, "workers": 0,
    "settings": 1, "accel": 1,
    "config": 2,
    "model": 3, "data": 3, "metrics": 3, "recipes": 3, "package": 3,
    "evaluation": 3.5,
    "inference": 4, "report": 4, "export": 4,
    "training": 5, "cv": 5,
    "demo": 6,
    "cli": 7, "__main__": 8,
}
PUBLIC_API = "__init__"  # unetr/__init__.py re-exports the library (never the CLI); only the CLI imports it
LAYERS_WITH_API = {**LAYERS, PUBLIC_API: 6.5}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "unetr":
            names = [node.module] if node.module != "unetr" else [
                f"unetr.{a.name}" if a.name in LAYERS else "unetr" for a in node.names]
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "unetr":
                    yield node.lineno, a.name


def _target(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else PUBLIC_API


FILES = sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in FILES} - {PUBLIC_API}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    unit = _unit(path)
    bad = []
    for line, name in _imports(path):
        target = _target(name)
        if target == unit:
            continue
        if target == "cli" and unit != "__main__":
            bad.append(f"line {line}: {name} (nothing imports the CLI)")
        elif unit == PUBLIC_API:
            continue
        elif LAYERS_WITH_API.get(target, 99) >= LAYERS[unit]:
            bad.append(f"line {line}: {name} (layer {LAYERS_WITH_API.get(target)} from layer {LAYERS[unit]})")
    assert not bad, f"{path.relative_to(SRC)} imports upwards: {bad}"


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from unetr.training.trainer import fit\n")
    assert [n for _, n in _imports(bad)] == ["unetr.training.trainer"]


def test_the_module_map_names_every_module_and_only_those():
    """docs/architecture.md's module map has a row for each module of the package (the package
    ``__init__`` files re-export and need none) and names no module that is gone."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    named = {m for line in rows for m in re.findall(r"`([\w/]+\.py)`", line.split("|")[1])}
    modules = {p.relative_to(SRC).as_posix() for p in FILES if p.name != "__init__.py"} | {"cli/__init__.py"}
    assert modules - named == set(), f"add rows to the module map for {sorted(modules - named)}"
    assert named - modules == set(), f"the module map names modules that are gone: {sorted(named - modules)}"
