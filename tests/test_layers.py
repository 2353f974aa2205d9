"""The house's floors (README "Layout"): thrlab's folders import only downward, with no cycle, and
a function-local import between thrlab modules is an exception a comment explains. Read from the
code's own import statements, so a new arrow that runs back up fails here."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thrlab"
# ground floor first; a module may import its own floor and the floors below
FLOORS = {"core": 0, "tasks": 1, "train": 2, "plan": 3, "integrations": 3, "paper": 4}
TOP = 5  # thrlab/cli.py, thrlab/__main__.py


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 2 else (TOP if len(parts) == 2 else 0)


def _imports(module: str, path: Path):
    """(target module, local?, statement, source lines) for each import of a thrlab module."""
    modules, lines = _modules(), path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[:None if path.name == "__init__.py" else -1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for target in names:
            if target in modules and target != module:
                yield target, id(node) not in top, node, lines


def _edges():
    return [(m, t, local, node, lines) for m, p in _modules().items()
            for t, local, node, lines in _imports(m, p)]


def test_every_import_runs_down_the_floors():
    up = [f"{m} -> {t}" for m, t, *_ in _edges() if _floor(t) > _floor(m)]
    assert not up, f"imports that run back up a floor: {up}"


def test_the_maths_reads_no_config():
    core = [f"{m} -> {t}" for m, t, *_ in _edges()
            if m.startswith("thrlab.core") and not t.startswith("thrlab.core")]
    assert not core, f"thrlab.core takes tensors and numbers, not thrlab objects: {core}"


def test_no_import_cycle():
    graph = {}
    for m, t, *_ in _edges():
        graph.setdefault(m, set()).add(t)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_function_local_imports_say_why():
    """A local import between thrlab modules (to keep torch out of a reader, or --help fast)
    carries a comment on its line or on the line above its block of imports."""
    silent = []
    for m, t, local, node, lines in _edges():
        if not local:
            continue
        i = node.lineno - 1
        while i > 0 and lines[i - 1].strip().startswith(("from ", "import ")):
            i -= 1  # the first line of this block of imports
        said = "#" in lines[node.lineno - 1] or lines[i - 1].strip().startswith("#")
        if not said:
            silent.append(f"{m}:{node.lineno} -> {t}")
    assert not silent, f"function-local imports without a reason: {silent}"


def test_floors_are_named_in_the_package_docstrings():
    for floor in FLOORS:
        doc = ast.get_docstring(ast.parse((PACKAGE / floor / "__init__.py").read_text()))
        assert doc and len(doc.split()) > 10, f"thrlab/{floor}/__init__.py says what the floor is"


@pytest.mark.parametrize("lower, upper", [("thrlab.core.thr", "thrlab.train.config"),
                                          ("thrlab.train.trainer", "thrlab.paper.anatomy")])
def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch, lower, upper):
    """The floor check itself fails on an upward import (written into a copy of the package)."""
    import shutil

    copy = tmp_path / "thrlab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy.joinpath(*lower.split(".")[1:]).with_suffix(".py")
    path.write_text(path.read_text() + f"\nimport {upper}  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    with pytest.raises(AssertionError, match="run back up"):
        test_every_import_runs_down_the_floors()
