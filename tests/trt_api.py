"""Find the TensorRT names a Python source uses, and check them against TensorRT's real bindings.

No TensorRT here, but PyPI serves its Python bindings alone (``tensorrt-bindings`` 8.6.1,
``tensorrt-cu12-bindings`` 10.x). They do not import without libnvinfer, yet the compiled module
holds every class, method, attribute, keyword and enum name as a NUL-terminated string, so
``NAME\\0`` in its bytes says the name exists in that release.

Names are found by a small taint analysis over the AST, so the list cannot go stale: an
expression is a TensorRT object when it is the ``tensorrt`` module, an attribute of or a call on a
TensorRT object, a name or ``self.x`` assigned one, a parameter annotated ``"trt.X"``, or a call
of a function of the same module that returns one. Every attribute taken of a TensorRT object,
and every keyword passed to a call on one, is a TensorRT name.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

WHEELS = {  # bindings version -> PyPI package
    "8.6.1": "tensorrt-bindings",
}
WHEEL_PLATFORM = ["--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
                  "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]


def package_for(version: str) -> str:
    return WHEELS.get(version, "tensorrt-cu12-bindings")


# TensorRT attributes that hold plain Python values: what is taken of them is not TensorRT's.
PLAIN_VALUES = {"__version__"}


@dataclass
class Use:
    name: str
    line: int
    function: str | None  # enclosing function's source (for the capability-guard check)
    where: str


@dataclass
class _Scope:
    names: set = field(default_factory=set)


class _Finder(ast.NodeVisitor):
    def __init__(self, source: str, filename: str, shared: dict | None = None) -> None:
        self.source, self.filename = source, filename
        self.tree = ast.parse(source, filename)
        self.trt_aliases: set[str] = set()
        shared = shared if shared is not None else {"self_attrs": set(), "returning": set()}
        # Facts shared by the modules scanned together (one package imports the other's helpers):
        self.self_attrs: set[str] = shared["self_attrs"]  # X in self.X = <TensorRT object>
        self.returning: set[str] = shared["returning"]    # functions returning a TensorRT object
        self.uses: list[Use] = []
        self._collect = False
        self._func_src: str | None = None
        self._scope = _Scope()

    # -- taint ------------------------------------------------------------------------------
    def tainted(self, node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.trt_aliases or node.id in self._scope.names
        if isinstance(node, ast.Attribute):
            if node.attr in PLAIN_VALUES:
                return False
            # our own objects' attributes that hold TensorRT objects (self.engine = ... anywhere in
            # the module), on self or on another instance (held.engine)
            return node.attr in self.self_attrs or self.tainted(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in self.returning:
                return True
            return self.tainted(node.func)
        if isinstance(node, ast.Subscript):
            return self.tainted(node.value)
        if isinstance(node, ast.IfExp):
            return self.tainted(node.body) or self.tainted(node.orelse)
        return False

    @staticmethod
    def _annotated_trt(arg: ast.arg) -> bool:
        a = arg.annotation
        text = a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else (
            ast.unparse(a) if a is not None else "")
        return text.startswith("trt.")

    def _bind(self, target, tainted: bool) -> bool:
        changed = False
        if isinstance(target, ast.Name) and tainted and target.id not in self._scope.names:
            self._scope.names.add(target.id)
            changed = True
        elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
              and target.value.id == "self" and tainted and target.attr not in self.self_attrs):
            self.self_attrs.add(target.attr)
            changed = True
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                changed |= self._bind(t, tainted)
        return changed

    # -- one pass over a function body ---------------------------------------------------------
    def _pass_function(self, fn) -> bool:
        """Propagate taint through ``fn`` to a fixpoint; True when module-level facts changed."""
        self._scope = _Scope({a.arg for a in fn.args.args + fn.args.kwonlyargs if self._annotated_trt(a)})
        before = (len(self.self_attrs), len(self.returning))
        for _ in range(10):
            changed = False
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    changed |= self._imports(node)
                elif isinstance(node, ast.Assign):
                    for t in node.targets:
                        if (isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple)
                                and len(t.elts) == len(node.value.elts)):  # a, b = x, y
                            for ti, vi in zip(t.elts, node.value.elts):
                                changed |= self._bind(ti, self.tainted(vi))
                        else:
                            changed |= self._bind(t, self.tainted(node.value))
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    changed |= self._bind(node.target, self.tainted(node.value))
                elif isinstance(node, ast.NamedExpr):
                    changed |= self._bind(node.target, self.tainted(node.value))
                elif isinstance(node, ast.Return) and node.value is not None and self.tainted(node.value):
                    if fn.name not in self.returning:
                        self.returning.add(fn.name)
                        changed = True
            if not changed:
                break
        return (len(self.self_attrs), len(self.returning)) != before

    def _imports(self, node) -> bool:
        changed = False
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "tensorrt" and (a.asname or a.name) not in self.trt_aliases:
                    self.trt_aliases.add(a.asname or a.name)
                    changed = True
        return changed

    def functions(self):
        return [n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]

    def propagate(self) -> bool:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                self._imports(node)
        return any([self._pass_function(fn) for fn in self.functions()])

    def run(self) -> list[Use]:
        for _ in range(10):  # shared facts (self attributes, returning functions) to a fixpoint
            if not self.propagate():
                break
        return self.collect()

    def collect(self) -> list[Use]:
        for fn in self.functions():
            self._pass_function(fn)
            src = ast.get_source_segment(self.source, fn) or ""
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and self.tainted(node.value):
                    self.uses.append(Use(node.attr, node.lineno, src, f"{self.filename}:{node.lineno}"))
                elif isinstance(node, ast.Call) and self.tainted(node.func):
                    for kw in node.keywords:
                        if kw.arg:
                            self.uses.append(Use(kw.arg, node.lineno, src, f"{self.filename}:{node.lineno}"))
        return self.uses


def trt_names(source: str, filename: str = "<string>") -> list[Use]:
    return _Finder(source, filename).run()


def names_in_files(paths) -> list[Use]:
    """The TensorRT names of several modules scanned together (facts flow between them)."""
    shared = {"self_attrs": set(), "returning": set()}
    finders = [_Finder(Path(p).read_text(), str(p), shared) for p in paths]
    for _ in range(10):
        if not any([f.propagate() for f in finders]):
            break
    return [u for f in finders for u in f.collect()]


# -- the bindings ----------------------------------------------------------------------------
class Bindings:
    """One release's compiled module bytes and package ``__init__`` text."""

    def __init__(self, version: str, wheel: Path) -> None:
        self.version, self.wheel = version, wheel
        with zipfile.ZipFile(wheel) as z:
            so = [n for n in z.namelist() if n.endswith(".so") and "/tensorrt" in n]
            if not so:
                raise ValueError(f"{wheel.name} holds no tensorrt*.so")
            self.data = z.read(so[0])
            inits = [n for n in z.namelist() if n.endswith("__init__.py")]
            self.init = "".join(z.read(n).decode(errors="replace") for n in inits)

    def has(self, name: str) -> bool:
        if name.encode() + b"\0" in self.data:
            return True
        # defined in Python by the package itself (``__version__``)
        return any(line.lstrip().startswith(f"{name} =") or line.lstrip().startswith(f"{name}=")
                   for line in io.StringIO(self.init))


def find_wheel(folder: Path, version: str) -> Path | None:
    pkg = package_for(version).replace("-", "_")
    hits = sorted(Path(folder).glob(f"{pkg}-{version}-*.whl"))
    return hits[0] if hits else None


def fetch(folder: Path, versions, timeout: float = 300) -> list[str]:
    """``pip download`` the bindings wheels not yet in ``folder``; returns what failed."""
    folder.mkdir(parents=True, exist_ok=True)
    failed = []
    for v in versions:
        if find_wheel(folder, v):
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--retries", "1",
               "--timeout", "20", "-d", str(folder),
               *WHEEL_PLATFORM, f"{package_for(v)}=={v}"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as err:
            failed.append(f"{v}: {err}")
            continue
        if r.returncode != 0 or not find_wheel(folder, v):
            failed.append(f"{v}: {(r.stderr.strip().splitlines() or ['pip download failed'])[-1]}")
    return failed


def wanted_versions(root: Path) -> set[str]:
    """The bindings releases to check, read without importing esta-export (``.ci/run`` calls this
    before any environment exists): the capability table's CHECKED_BINDINGS and X.Y.0 for each
    TensorRT release a target plans for (tests/test_tensorrt_api.py checks both agree)."""
    import re

    caps = (root / "esta_export" / "runtime" / "tensorrt" / "capabilities.py").read_text()
    tree = ast.parse(caps)
    checked = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                   and getattr(n.target, "id", None) == "CHECKED_BINDINGS")
    versions = set(checked.values())
    for toml in sorted((root / "targets").glob("*.toml")):
        text = toml.read_text()
        if not re.search(r'^backend\s*=\s*"tensorrt"', text, re.M):
            continue
        m = re.search(r'^tensorrt\s*=\s*"([^"]+)"', text, re.M)
        major, minor = (m.group(1).lstrip(">=~ ").split(".") + ["0"])[:2] if m else ("10", "3")
        versions.add(checked.get((int(major), int(minor)), f"{int(major)}.{int(minor)}.0"))
    return versions


if __name__ == "__main__":  # .ci/run: python3 tests/trt_api.py --fetch  (fills .whl/)
    import os

    root = Path(__file__).resolve().parents[1]
    folder = Path(os.environ.get("ESTA_TRT_WHEELS") or root / ".whl")
    problems = fetch(folder, sorted(wanted_versions(root)))
    print("\n".join(problems) or f"TensorRT bindings wheels in {folder}")
    sys.exit(1 if problems else 0)
