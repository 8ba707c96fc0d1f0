"""The import structure of the project's packages.

* No import cycle, between modules or between packages. The packages import one way only:
  ``study`` -> ``trainables``, ``search_spaces``, ``snn``; ``trainables`` -> ``snn``;
  ``search_spaces`` -> ``snn``; ``snn`` imports none of the other three.
* ``snn`` is plain PyTorch: it never imports Ray, Optuna or MLflow, and ``snn.registry`` and
  ``snn.config`` (the names a spec is checked against) load without torch.
* ``trainables`` never imports MLflow: the study projects what a trial reports, and hands the
  trial what it needs of MLflow (the sampler of its system metrics).

The graph is read from the source with :mod:`ast`, so an import inside a function counts as
much as one at the top of a file: moving an import into a function does not remove a cycle,
it only hides it until the function runs. ``importlib.import_module("...")`` with a literal
name counts too. Imports under ``if TYPE_CHECKING:`` never run, so they are left out of the
cycle check; they still count for the package direction (a type-only import of a higher
layer is still a dependency on it).

The fresh-interpreter tests at the end (marked slow: they start subprocesses) check the same
at run time: each package and public module imports alone, and what it pulls in.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("snn", "trainables", "search_spaces", "study")
ALLOWED: dict[str, frozenset[str]] = {  # package -> the other packages it may import
    "study": frozenset({"trainables", "search_spaces", "snn"}),
    "trainables": frozenset({"snn"}),
    "search_spaces": frozenset({"snn"}),
    "snn": frozenset(),
}
ORCHESTRATION = ("ray", "optuna", "mlflow")
TORCH_FREE = ("snn.registry", "snn.config")  # checked by the spec before torch starts


# -- reading the imports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported name, as an absolute dotted module path (or ``module.attribute``)."""

    target: str
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: never runs
    deferred: bool  # inside a function: runs when the function is called, not at import


@dataclass(frozen=True)
class Edge:
    """``src`` imports project module ``dst`` at ``path:line``."""

    src: str
    dst: str
    path: str
    line: int
    type_only: bool
    deferred: bool
    code: str
    implicit: bool = False  # a package above the imported module, whose __init__ the import runs

    def __str__(self) -> str:
        where = " (type-only)" if self.type_only else " (inside a function)" if self.deferred else ""
        return f"{self.src} -> {self.dst}    {self.path}:{self.line}{where}: {self.code}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _base(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if not level:
        return module or ""
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    parts = parts[:len(parts) - (level - 1)]  # each dot past the first goes one package up
    return ".".join(parts + ([module] if module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool) -> None:
        self.importer, self.is_package = importer, is_package
        self.found: list[Import] = []
        self._type_only = self._deferred = False

    def _add(self, target: str, node: ast.AST) -> None:
        if target:
            self.found.append(Import(target, node.lineno, self._type_only, self._deferred))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            return self.generic_visit(node)
        outer, self._type_only = self._type_only, True
        for child in node.body:
            self.visit(child)
        self._type_only = outer
        for child in node.orelse:
            self.visit(child)

    def _function(self, node: ast.AST) -> None:
        outer, self._deferred = self._deferred, True
        self.generic_visit(node)
        self._deferred = outer

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _base(self.importer, self.is_package, node.module, node.level)
        for alias in node.names:
            self._add(base if alias.name == "*" else f"{base}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("x.y") / __import__("x.y") with a literal name
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def discover(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name -> file."""
    modules = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = f
    return modules


def imports_of(name: str, path: Path) -> list[Import]:
    """Every import in the file of module ``name``, wherever it is written."""
    c = _Collector(name, path.name == "__init__.py")
    c.visit(ast.parse(path.read_text(), str(path)))
    return c.found


def _known_module(target: str, known: Mapping[str, Path]) -> str | None:
    """The project module ``target`` names: itself, or for ``module.attribute`` the module."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def build_edges(root: Path, packages: Iterable[str]) -> tuple[dict[str, Path], list[Edge]]:
    """The project's modules and every import of one project module by another.

    ``from a import b`` is an edge to ``a.b`` where that is a module, otherwise to ``a``.
    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``: those are edges too,
    except for the importer's own packages (which run before the importer does).
    """
    modules = discover(root, packages)
    edges = []
    for src, path in modules.items():
        lines = path.read_text().splitlines()
        for imp in imports_of(src, path):
            dst = _known_module(imp.target, modules)
            if dst is None:
                continue
            parts = dst.split(".")
            above = [".".join(parts[:i]) for i in range(1, len(parts))]
            for d in [a for a in above if a in modules and not _inside(src, a)] + [dst]:
                if d != src:
                    edges.append(Edge(src, d, str(path.relative_to(root)), imp.line, imp.type_only, imp.deferred,
                                      lines[imp.line - 1].strip(), implicit=d != dst))
    return modules, edges


def graph_of(edges: Iterable[Edge], nodes: Iterable[str] = (), *, runtime_only: bool = True,
             key=lambda m: m) -> dict[str, dict[str, Edge]]:
    """Adjacency map node -> {successor: the first edge that makes it}, nodes mapped by ``key``.

    An explicit import is preferred over an implicit one as the edge shown for a step.
    """
    g: dict[str, dict[str, Edge]] = {key(n): {} for n in nodes}
    for e in sorted(edges, key=lambda e: e.implicit):  # stable: otherwise in file order
        if runtime_only and e.type_only:
            continue
        a, b = key(e.src), key(e.dst)
        g.setdefault(b, {})
        if a != b:
            g.setdefault(a, {}).setdefault(b, e)
    return g


# -- finding cycles ---------------------------------------------------------------------------


def cycle_through(graph: Mapping[str, Iterable[str]], node: str) -> list[str] | None:
    """A shortest cycle through ``node`` as ``[node, ..., node]``, or None (breadth-first)."""
    parent: dict[str, str] = {}
    queue = deque([node])
    while queue:
        a = queue.popleft()
        for b in sorted(graph.get(a, ())):
            if b == node:
                path = [a]
                while path[-1] != node:
                    path.append(parent[path[-1]])
                return [node, *reversed(path[:-1]), node] if a != node else [node, node]
            if b not in parent:
                parent[b] = a
                queue.append(b)
    return None


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, the components in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    nodes = sorted(set(graph) | {b for succ in graph.values() for b in succ})

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return sorted(out)


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component that has any, e.g. ``[a, b, a]``."""
    cycles = []
    for comp in strongly_connected(graph):
        if len(comp) > 1 or comp[0] in graph.get(comp[0], ()):
            cycles.append(cycle_through(graph, comp[0]))
    return cycles


def describe(cycle: list[str], graph: Mapping[str, Mapping[str, Edge]]) -> str:
    """The cycle on one line, then the import that makes each of its steps."""
    steps = "\n".join(f"    {graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}\n{steps}"


# -- the project's graph ----------------------------------------------------------------------

MODULES, EDGES = build_edges(ROOT, PACKAGES)
RUNTIME = graph_of(EDGES, MODULES)  # module level, type-only imports left out
PUBLIC = sorted(m for m in MODULES if not any(p.startswith("_") for p in m.split(".")))


def _package(module: str) -> str:
    return module.partition(".")[0]


def test_the_project_is_found():
    # a wrong ROOT would make every test below pass on an empty graph
    assert {"snn", "snn.models", "snn.registry", "search_spaces", "study", "study.spec", "trainables"} <= set(MODULES)
    assert any(e.src.startswith("study") and e.dst.startswith("snn") for e in EDGES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_on_no_import_cycle(module):
    cycle = cycle_through(RUNTIME, module)
    assert cycle is None, f"{module} is on an import cycle:\n{describe(cycle, RUNTIME)}"


def _rotated(cycle: list[str]) -> tuple[str, ...]:
    """A cycle written from its smallest node, so that one loop found from two nodes compares equal."""
    ring = cycle[:-1]
    i = ring.index(min(ring))
    return tuple(ring[i:] + ring[:i] + [ring[i]])


def test_import_graph_has_no_cycle():
    groups = [c for c in strongly_connected(RUNTIME) if len(c) > 1]
    loops = sorted({_rotated(cycle_through(RUNTIME, m)) for c in groups for m in c})
    assert not groups, "modules that import each other, in a loop: " + "; ".join(", ".join(c) for c in groups) + \
        "\nthe shortest loop through each of them:\n" + "\n".join(describe(list(c), RUNTIME) for c in loops)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below_it(package):
    wrong = [e for e in EDGES if _package(e.src) == package and _package(e.dst) != package
             and _package(e.dst) not in ALLOWED[package] and not e.implicit]
    allowed = ", ".join(sorted(ALLOWED[package])) or "none of " + ", ".join(p for p in PACKAGES if p != package)
    assert not wrong, f"{package} may import {allowed}; it imports:\n" + "\n".join(f"    {e}" for e in wrong)


def test_package_graph_has_no_cycle():
    assert not find_cycles({p: ALLOWED[p] for p in PACKAGES}), "the allowed directions themselves"
    packages = graph_of(EDGES, PACKAGES, runtime_only=False, key=_package)
    cycles = find_cycles(packages)
    assert not cycles, "package import cycles:\n" + "\n".join(describe(c, packages) for c in cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) == "snn"))
def test_snn_module_never_imports_ray_optuna_or_mlflow(module):
    found = [f"{MODULES[module].relative_to(ROOT)}:{i.line}: {i.target}" for i in imports_of(module, MODULES[module])
             if i.target.partition(".")[0] in ORCHESTRATION]
    assert not found, f"{module} imports orchestration code:\n" + "\n".join(found)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) == "trainables"))
def test_trainables_module_never_imports_mlflow(module):
    found = [f"{MODULES[module].relative_to(ROOT)}:{i.line}: {i.target}" for i in imports_of(module, MODULES[module])
             if i.target.partition(".")[0] == "mlflow"]
    assert not found, f"{module} imports MLflow:\n" + "\n".join(found)


def _loaded_at_import(module: str) -> set[str]:
    """Top-level names of every module ``import module`` runs an import of, following the
    project's modules (module level only: not inside functions, not type-only)."""
    seen, todo, external = {module}, [module], set()
    while todo:
        m = todo.pop()
        for imp in imports_of(m, MODULES[m]):
            if imp.type_only or imp.deferred:
                continue
            own = _known_module(imp.target, MODULES)
            if own is None:
                external.add(imp.target.partition(".")[0])
                continue
            parts = own.split(".")
            for d in [".".join(parts[:i]) for i in range(1, len(parts) + 1)]:
                if d in MODULES and d not in seen:
                    seen.add(d)
                    todo.append(d)
    return external


@pytest.mark.parametrize("module", TORCH_FREE)
def test_light_modules_import_no_torch_at_module_level(module):
    if module not in MODULES:
        pytest.skip(f"{module} does not exist")
    heavy = _loaded_at_import(module) & {"torch", "torchvision", "numba", *ORCHESTRATION}
    assert not heavy, f"import {module} runs an import of {sorted(heavy)}"


# -- the graph code itself, on hand-made graphs and a hand-made package -----------------------


def test_cycle_finder_on_hand_made_graphs():
    acyclic = {"study": ["trainables", "search_spaces", "snn"], "trainables": ["snn"], "search_spaces": ["snn"],
               "snn": []}
    assert find_cycles(acyclic) == []
    assert all(cycle_through(acyclic, n) is None for n in acyclic)

    g = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["f"], "x": ["a"]}
    assert find_cycles(g) == [["a", "b", "c", "a"], ["d", "e", "d"], ["f", "f"]]
    assert cycle_through(g, "b") == ["b", "c", "a", "b"]
    assert cycle_through(g, "x") is None  # leads into a cycle, is not on one
    # the shortest way back, not the first one found
    assert cycle_through({"a": ["b", "z"], "b": ["c"], "c": ["a"], "z": ["a"]}, "a") == ["a", "z", "a"]
    assert strongly_connected(g) == [["a", "b", "c"], ["d", "e"], ["f"], ["x"]]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_edges_of_a_hand_made_package(tmp_path):
    _write(tmp_path, {
        "low/__init__.py": "from low.core import run\n",  # a package re-exporting its submodule
        "low/core.py": "import os\nfrom . import names\nfrom .names import X\n",
        "low/names.py": "X = 1\n",
        "low/sub/__init__.py": "",
        "low/sub/deep.py": "from .. import names\nfrom ..core import run\nimport low.sub\n",
        "high/__init__.py": "",
        "high/app.py": ("from typing import TYPE_CHECKING\nfrom low import names, run\n"
                        "if TYPE_CHECKING:\n    from high import typed\n"
                        "def f():\n    import low.sub.deep\n    importlib.import_module('high.typed')\n"),
        "high/typed.py": "",
    })
    modules, edges = build_edges(tmp_path, ["low", "high"])
    assert sorted(modules) == ["high", "high.app", "high.typed", "low", "low.core", "low.names", "low.sub",
                               "low.sub.deep"]
    got = {(e.src, e.dst, e.type_only, e.deferred) for e in edges}
    assert got == {
        ("low", "low.core", False, False),
        ("low.core", "low.names", False, False),  # from . import names: the submodule
        ("low.sub.deep", "low.names", False, False),
        ("low.sub.deep", "low.core", False, False),
        ("low.sub.deep", "low.sub", False, False),  # its own package, named explicitly: an edge like any other
        ("high.app", "low", False, False),  # run is an attribute of low; importing low.names runs low too
        ("high.app", "low.names", False, False),
        ("high.app", "high.typed", True, False),
        ("high.app", "low", False, True),  # the packages above low.sub.deep run first
        ("high.app", "low.sub", False, True),
        ("high.app", "low.sub.deep", False, True),
        ("high.app", "high.typed", False, True),  # importlib.import_module with a literal name
    }
    assert find_cycles(graph_of(edges, modules)) == []
    e = next(e for e in edges if e.dst == "low.sub.deep")
    assert str(e) == "high.app -> low.sub.deep    high/app.py:6 (inside a function): import low.sub.deep"


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    files = {
        "low/__init__.py": "",
        "low/core.py": "def plot():\n    from high.report import draw\n",  # the layering the project forbids
        "high/__init__.py": "",
        "high/report.py": "import low.core\n",
        "high/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import high.report\n",
    }
    _write(tmp_path, files)
    modules, edges = build_edges(tmp_path, ["low", "high"])
    g = graph_of(edges, modules)
    assert find_cycles(g) == [["high.report", "low.core", "high.report"]]
    text = describe(cycle_through(g, "low.core"), g)
    assert text.splitlines()[0] == "low.core -> high.report -> low.core"
    assert "low/core.py:2 (inside a function): from high.report import draw" in text
    # the package graph names the same loop, and the fixed layering has none
    assert find_cycles(graph_of(edges, ["low", "high"], key=_package)) == [["high", "low", "high"]]
    _write(tmp_path, {"low/core.py": "def plot():\n    pass\n"})
    modules, edges = build_edges(tmp_path, ["low", "high"])
    assert find_cycles(graph_of(edges, modules)) == []
    assert find_cycles(graph_of(edges, ["low", "high"], runtime_only=False, key=_package)) == []


def test_type_only_imports_are_no_runtime_cycle_but_still_a_layering_edge(tmp_path):
    _write(tmp_path, {
        "a/__init__.py": "import b\n",
        "b/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import os\n",
    })
    modules, edges = build_edges(tmp_path, ["a", "b"])
    assert find_cycles(graph_of(edges, modules)) == []
    assert find_cycles(graph_of(edges, modules, runtime_only=False)) == [["a", "b", "a"]]


# -- in fresh interpreters (subprocesses) -----------------------------------------------------


def _fresh_import(*modules: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Import ``modules`` in a new interpreter; its result and the top-level names then loaded."""
    code = "\n".join([*(f"import {m}" for m in modules), "import json, sys",
                      "print(json.dumps(sorted({k.partition('.')[0] for k in sys.modules})))"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()
    return out, loaded


@functools.cache
def _public_imported_alone() -> dict[str, tuple[subprocess.CompletedProcess, set[str]]]:
    """Each public module imported alone in its own new interpreter, one per core at a time."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(PUBLIC, pool.map(_fresh_import, PUBLIC)))


@pytest.mark.slow
@pytest.mark.parametrize("module", PUBLIC)
def test_imports_alone_in_a_fresh_interpreter(module):
    out, loaded = _public_imported_alone()[module]
    assert out.returncode == 0, f"import {module} failed alone:\n{out.stderr[-3000:]}"
    if _package(module) == "snn":
        assert not loaded & set(ORCHESTRATION), f"import {module} loads {sorted(loaded & set(ORCHESTRATION))}"


@pytest.mark.slow
def test_all_of_snn_pulls_in_no_ray_optuna_or_mlflow():
    snn = sorted(m for m in MODULES if _package(m) == "snn")
    out, loaded = _fresh_import(*snn)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch" in loaded  # the check ran after the real imports
    assert not loaded & set(ORCHESTRATION), f"importing all of snn loads {sorted(loaded & set(ORCHESTRATION))}"


@pytest.mark.slow
def test_all_of_trainables_pulls_in_no_mlflow():
    trainables = sorted(m for m in MODULES if _package(m) == "trainables")
    out, loaded = _fresh_import(*trainables)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"ray", "torch"} <= loaded  # the check ran after the real imports
    assert "mlflow" not in loaded, "importing trainables loads mlflow"


@pytest.mark.slow
@pytest.mark.parametrize("module", TORCH_FREE)
def test_light_modules_load_without_torch(module):
    if module not in MODULES:
        pytest.skip(f"{module} does not exist")
    out, loaded = _fresh_import(module)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch" not in loaded, f"import {module} loads torch"
