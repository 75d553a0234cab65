"""The package's import graph, built from its sources: no module imports, directly or through others,
a module that imports it back. Imports inside functions count (they are the ones that hide circles)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mictag"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The mictag modules ``path`` imports (``from a import b`` counts a.b where that is a module)."""
    tree = ast.parse(path.read_text("utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in modules and m != here}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    edges = {}
    for name, path in files.items():
        # importing a.b.c runs a and a.b first: a package's __init__ is not a dependency to count
        # here unless named, so only the modules themselves are edges
        edges[name] = {m for m in imports_of(path, modules) if not (m != name and name.startswith(m + ".")
                                                                     and files[m].name == "__init__.py")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_a_circle_when_there_is_one(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_mictag():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


# What each layer may not import: the layers above it (DESIGN §10). The runtime reaches model code
# only through an exported artifact, and the output's files know nothing of how rows are made.
ABOVE = {
    "mictag.runtime": ("mictag.cli", "mictag.api", "mictag.catalog", "mictag.export", "mictag.train",
                       "mictag.filetags", "mictag.report", "mictag.corpus", "mictag.similar", "mictag.ingest"),
    "mictag.output": ("mictag.cli", "mictag.api", "mictag.catalog", "mictag.export", "mictag.train",
                      "mictag.runtime", "mictag.model", "mictag.backbones", "mictag.similar", "mictag.ingest"),
    "mictag.similar": ("mictag.cli", "mictag.ingest", "mictag.report", "mictag.filetags", "mictag.train",
                       "mictag.export"),
    "mictag.model": ("mictag.cli", "mictag.api", "mictag.catalog", "mictag.export", "mictag.train",
                     "mictag.runtime", "mictag.output"),
    "mictag.frontends": ("mictag.cli", "mictag.api", "mictag.catalog", "mictag.export", "mictag.train",
                         "mictag.runtime", "mictag.output", "mictag.model", "mictag.backbones"),
}


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for every import of a layer above the importer's."""
    found = []
    for layer, above in ABOVE.items():
        for module, imported in edges.items():
            if module == layer or module.startswith(layer + "."):
                found += [(module, m) for m in sorted(imported)
                          if any(m == a or m.startswith(a + ".") for a in above)]
    return sorted(found)


def test_the_check_sees_an_import_that_points_up():
    edges = {"mictag.runtime.engines.open": {"mictag.export.tensorrt", "mictag.metadata"},
             "mictag.export.onnx": {"mictag.runtime.engines.open"}}
    assert upward(edges) == [("mictag.runtime.engines.open", "mictag.export.tensorrt")]


def test_no_import_points_up():
    found = upward(graph())
    assert not found, "imports of a layer above: " + "; ".join(f"{a} -> {b}" for a, b in found)
