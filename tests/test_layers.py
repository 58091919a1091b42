"""The package's import graph is layered: a module never imports one of a higher layer.

Read from the source with ast, so imports inside functions count too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flashlb"

# Lowest first. Modules of one layer may import each other.
LAYERS = [
    {"_C", "_build_info", "_version", "_checks", "_files", "placement", "objective", "forecast", "align",
     "io", "ops", "synthetic"},
    {"metrics", "recorder"},
    {"solvers"},
    {"api"},
    {"redeploy"},
    {"integrations", "cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
FACE = "__init__"  # the package's face (flashlb/__init__.py) re-exports every layer: the top
RANK[FACE] = len(LAYERS) - 1


def _component(path: Path, package: Path = PACKAGE) -> str:
    """flashlb/solvers/joint.py -> "solvers"; flashlb/metrics.py -> "metrics"."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path, tree: ast.AST, root: Path):
    """(line, top-level flashlb component) of every flashlb import in the module."""
    package = ["flashlb", *path.relative_to(root).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "flashlb" and len(parts) > 1:
                    yield node.lineno, parts[1]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if parts[0] != "flashlb":
                continue
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:  # from flashlb import x: a part of the package, or a name of its face
                for alias in node.names:
                    yield node.lineno, alias.name if alias.name in RANK else FACE


def violations(package: Path = PACKAGE):
    out = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "__init__.py":
            continue  # the package's face re-exports every layer
        own = _component(path, package)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in _imported(path, tree, package):
            if target not in RANK:
                out.append(f"{path.relative_to(package)}:{line} imports unknown part {target!r}")
            elif RANK[target] > RANK[own]:
                out.append(f"{path.relative_to(package)}:{line} ({own}) imports {target} (higher)")
    return out


def test_every_module_has_a_layer():
    parts = {_component(p) for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    assert parts <= set(RANK) - {FACE}, sorted(parts - set(RANK))


def test_no_lower_layer_imports_a_higher_one():
    assert violations() == []


@pytest.mark.parametrize("source, where", [
    ("from ..redeploy import align_to\n", "solvers/fake.py"),
    ("def f():\n    from .solvers.allotment import packing_bound\n", "metrics_fake.py"),
    ("import flashlb.api\n", "placement_fake.py"),
    ("from flashlb import plan\n", "metrics_fake.py"),
])
def test_the_check_sees_upward_imports(tmp_path, source, where):
    # a copy of the layout with one upward import planted, also inside a function
    root = tmp_path / "flashlb"
    (root / "solvers").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    file = root / where
    file.write_text(source)
    stem = file.stem.removesuffix("_fake")
    if file.parent == root:
        file = file.rename(root / f"{stem}.py")
    found = violations(root)
    assert len(found) == 1 and "higher" in found[0], found
