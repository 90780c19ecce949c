"""The package's shape: layers that import only downwards, no cycle, no private name crossing a
module, no module over 600 lines.  docs/design.md draws the same layers.

Every import counts, also those inside functions (they keep ``import datamodels`` light; they
never hide a cycle).  A new module must be placed in ``LAYERS`` before this passes."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "datamodels"
MAX_LINES = 600

# Bottom to top.  A unit (a top-level module or subpackage) imports only units of lower layers,
# or of its own layer without a cycle.  `live` (checkpoints, forecast, stop rules) sits on the
# regression and under the sweep, which drives it; it never imports the sweep.
LAYERS = [
    {"errors", "files", "resources"},
    {"config", "worker", "store_format"},
    {"store", "artifacts", "metrics", "cluster", "hardware", "datacache", "synthetic"},
    {"prepare_cifar", "prepare", "regression", "evaluate", "query"},
    {"live"},
    {"sweep", "priors"},
    {"analyses"},
    {"report_plots", "report_blocks", "report_analyses", "report"},
    {"pipeline"},
    {"arguments", "cli"},
]


def _modules():
    """``{dotted name: path}`` of every module of the package."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _unit(name: str) -> str:
    """The layering unit of a module: ``datamodels.regression.solver`` -> ``regression``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(name: str, path: Path):
    """``(imported module, imported name or None)`` for every import in the module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name


def _graph():
    mods = _modules()
    edges, private = {}, []
    for name, path in mods.items():
        for module, imported in _imports(name, path):
            target = f"{module}.{imported}" if imported and f"{module}.{imported}" in mods else module
            if target not in mods or target == name or name.startswith(target + "."):
                continue
            if _unit(name) and _unit(target) and _unit(target) != _unit(name):  # the root: the lazy API map
                edges.setdefault(_unit(name), set()).add(_unit(target))
            if target == module and imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {module}.{imported}")
    return mods, edges, private


def test_every_unit_has_a_layer():
    mods, _, _ = _graph()
    placed = set().union(*LAYERS)
    units = {_unit(name) for name in mods} - {""}
    assert not units - placed, f"place these in LAYERS (and docs/design.md): {sorted(units - placed)}"
    assert not placed - units, f"LAYERS names units that no longer exist: {sorted(placed - units)}"


def test_imports_go_down_the_layers_without_a_cycle():
    _, edges, _ = _graph()
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    upward = [f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer[b] > layer[a]]
    assert not upward, f"imports against the layers: {sorted(upward)}"

    def reaches(start, goal, seen):
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    cycles = sorted(unit for unit in edges if reaches(unit, unit, set()))
    assert not cycles, f"import cycle through {cycles}"


def test_no_module_imports_another_modules_private_names():
    _, _, private = _graph()
    assert not private, private


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := p.read_text().count("\n")) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """The graph walk sees an upward import inside a function, and a private name."""
    fake = tmp_path / "datamodels"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("def f():\n    from .cli import main\n")
    (fake / "cli.py").write_text("from .errors import _hidden\n")
    (fake / "sub" / "__init__.py").write_text("from ..errors import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    _, edges, private = _graph()
    assert edges == {"errors": {"cli"}, "cli": {"errors"}, "sub": {"errors"}}
    assert private == ["datamodels.cli imports datamodels.errors._hidden"]


@pytest.mark.integration  # a fresh Python process
def test_importing_the_package_stays_light():
    """``import datamodels`` (and the CLI's parser) loads neither torch, Ray nor FFCV: a bad
    argument or ``--help`` answers in a fraction of a second."""
    code = ("import sys, datamodels, datamodels.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'ffcv') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
