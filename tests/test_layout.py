"""The package's shape: data flows one way (no import cycles), modules stay short enough to read, the field
table of docs/record-fields.md is the schema's, and the wheel ships every subpackage."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harness"
MAX_LINES = 420  # "about 400"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules it imports (at any depth of the file: function-level imports count too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                stem = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                # `from . import gap` imports the submodule gap; `from .x import name` imports the module x
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # harness.x.y -> harness.x when y is a name, not a module
                    t = t.rpartition(".")[0]
                if t and t != mod and t != "harness":
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "harness.cluster" in graph and graph["harness.cluster"], "the graph builder found no imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_environment_never_imports_the_sweep():
    graph = import_graph()
    assert "harness.cluster" not in graph["harness.env"]
    assert not graph["harness.steps"] & {"harness.trial", "harness.train", "harness.profile", "harness.cluster"}


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


FIELDS_DOC = ROOT / "docs" / "record-fields.md"    # scripts/schema_table.py --write regenerates its table


def test_field_table_doc_is_the_schema():
    from harness.schema import markdown_field_table
    doc = FIELDS_DOC.read_text()
    begin, end = "<!-- fields:begin -->", "<!-- fields:end -->"
    assert begin in doc and end in doc
    table = doc.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_field_table(), \
        f"{FIELDS_DOC.relative_to(ROOT)}'s field table is stale: python scripts/schema_table.py --write"
    assert begin not in (ROOT / "README.md").read_text(), "the field table lives in docs/record-fields.md only"


@pytest.mark.slow
def test_wheel_ships_every_subpackage(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("lstm_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert len(packages) >= 2, packages  # harness and at least one subpackage
    for pkg in packages:
        assert pkg.replace(".", "/") + "/__init__.py" in names, (pkg, names)
    # and they import from the wheel alone, not from this checkout
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('ok')"
    res = subprocess.run([sys.executable, "-c", code, *sorted(packages)], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
