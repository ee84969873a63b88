"""The package's shape: no import circle between its modules.

Every ``import`` counts, also the ones inside functions (a lazy import hides a circle from
Python's loader, not from the reader). One edge is not a choice and is left out: a module
importing its own ancestor package (Python runs that package first anyway; it is how a
registry's members reach ``register_*``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import esta_export

PKG_DIR = Path(esta_export.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in PKG_DIR.rglob("*.py"):
        rel = p.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if "templates" in parts:   # files copied into bundles, not modules of the package
            continue
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else None

    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    tgt = ".".join(base + ([node.module] if node.module else []))
                else:
                    tgt = node.module or ""
                names = [f"{tgt}.{a.name}" if f"{tgt}.{a.name}" in mods else tgt
                         for a in node.names]
            for n in names:
                dep = owner(n) if n.startswith("esta_export") else None
                if dep and dep != mod and not mod.startswith(dep + "."):
                    deps.add(dep)
        graph[mod] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_circle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "esta_export.pareto" in graph["esta_export.select"]
    assert "esta_export.pareto" in graph["esta_export.profiling.compiled"]  # inside a function


def test_no_import_circle() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import circles in esta_export: {cycles}"


# The stages that must not know which backend they drive: they ask the backend's hooks
# (``Backend.bundle_*``, ``Backend.finalize``) and the table of backends (runtime/backends.py).
BACKEND_NEUTRAL = ("bundle/writer.py", "compile.py")
# compile's fp32 reference runs on ONNX Runtime whatever the backend (the reference runtime,
# not a backend choice): that one import line is allowed.
REFERENCE_RUNTIME_LINE = "import onnxruntime as ort"


def backend_names_in(text: str) -> list[tuple[int, str]]:
    """(line, word) wherever ``text`` names a backend, its runtime or its artifact format."""
    from esta_export.runtime.backends import BACKENDS

    words = {*BACKENDS, *(s.package for s in BACKENDS.values()),
             *(s.artifact_format for s in BACKENDS.values() if s.artifact_format != "onnx"),
             ".xml", ".plan"}
    return [(n, w) for n, line in enumerate(text.lower().splitlines(), 1)
            if line.strip() != REFERENCE_RUNTIME_LINE for w in sorted(words) if w.lower() in line]


def test_backend_name_check_finds_names() -> None:
    src = "import onnxruntime as ort\nif fmt == 'openvino-ir':\n    p = 'engines/x.plan'\n"
    assert backend_names_in(src) == [(2, "openvino"), (2, "openvino-ir"), (3, ".plan")]


def test_bundle_writer_and_compile_name_no_backend() -> None:
    for rel in BACKEND_NEUTRAL:
        named = backend_names_in((PKG_DIR / rel).read_text(encoding="utf-8"))
        assert named == [], f"esta_export/{rel} names a backend (line, word): {named}"
