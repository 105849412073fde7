"""The import-layer contract: data flows one way through tunelab's packages.

Each layer may import only itself and the layers listed before it (docs in README, "Layers"), and a
tunelab module imported inside a function must say why on the line above or on the import itself.
The graph is read from the source files, so no module is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Lowest first. A module belongs to the first layer with a prefix that matches its name.
LAYERS = [
    ("ground", ("tunelab", "tunelab.errors", "tunelab.io", "tunelab.paths", "tunelab.config", "tunelab.memory",
                "tunelab.tables", "tunelab.model_files")),
    ("security", ("tunelab.security",)),
    ("data", ("tunelab.data",)),
    ("modeling", ("tunelab.modeling",)),
    ("inference", ("tunelab.inference",)),
    ("generate", ("tunelab.generate",)),
    ("runs", ("tunelab.runs",)),
    ("eval", ("tunelab.eval",)),
    ("train", ("tunelab.train",)),
    ("registry", ("tunelab.registry",)),
    ("serve", ("tunelab.serve",)),
    ("ui", ("tunelab.ui",)),
    ("commands", ("tunelab.sweep", "tunelab.quickstart", "tunelab.cli")),
]
# Inside a layer, sub-layers that must not import their parent layer's other modules either.
SUBLAYER_LIMITS = {"tunelab.modeling.fast": ("tunelab.modeling.fast", "tunelab.modeling.methods")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if module in prefixes or any(module.startswith(p + ".") for p in prefixes if p != "tunelab"):
            return index
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in tests/test_layers.py")


def tunelab_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a tunelab module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for sub in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
            names = [node.module] if node.module != "tunelab" else [f"tunelab.{a.name}" for a in node.names]
            found += [(name, node.lineno, id(node) in in_function) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in in_function) for a in node.names
                      if a.name.startswith("tunelab")]
    return found


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_import_points_down_the_layers(path):
    module = module_name(path)
    own = layer_of(module)
    for imported, line, _ in tunelab_imports(path):
        target = layer_of(imported)
        assert target <= own, (f"{path.name}:{line}: {module} ({LAYERS[own][0]}) imports {imported} "
                               f"({LAYERS[target][0]}), a layer above it")
        for sublayer, allowed in SUBLAYER_LIMITS.items():
            if module.startswith(sublayer) and imported.startswith(LAYERS[own][1][0]):
                assert imported.startswith(allowed), f"{path.name}:{line}: {module} imports {imported}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_inside_functions_say_why(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    for imported, line, inside in tunelab_imports(path):
        if not inside:
            continue
        start = line - 1
        while start > 0 and lines[start - 1].lstrip().startswith(("from ", "import ")):
            start -= 1  # a block of imports shares the comment above its first line
        reason = "#" in lines[line - 1] or lines[start - 1].lstrip().startswith("#")
        assert reason, f"{path.name}:{line}: {imported} is imported inside a function without a reason comment"


def test_no_import_cycles():
    graph = {module_name(p): {name for name, _, inside in tunelab_imports(p) if not inside} for p in MODULES}
    visiting, done = set(), set()

    def visit(module: str, trail: list[str]) -> None:
        if module in done or module not in graph:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(trail[trail.index(module):] + [module])
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_checker_catches_an_upward_import(tmp_path):
    """The contract can fail: a data module importing the trainer is an upward import."""
    assert layer_of("tunelab.data.pack") < layer_of("tunelab.train.fit")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tunelab.train.fit import fit\n")
    assert tunelab_imports(bad) == [("tunelab.train.fit", 2, True)]
