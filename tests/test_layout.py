"""The package is laid out by pipeline stage, and imports only go down the pipeline.

    base → algebra → activations → architectures → derivation → emit → numeric → reality → cli

Every module lives in the sub-package of its stage (``derive/<stage>/…``); a module imports
from its own stage or earlier ones only.  This is checked statically, with ``ast``, over every
``.py`` under derive/: module-level imports (anything that runs at import time, including
class bodies and ``if`` blocks) must not go up, function-level ones neither, except the few in
``ALLOWED_UPWARD`` (each with its reason), and the module-level import graph between derive
modules has no cycle.  The top-level ``derive/__init__.py`` (the lazy facade) and a
``derive/__main__.py`` are exempt; ``from derive import name`` of a facade name counts as an
import of the module the facade takes it from.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = "derive"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
STAGES = ("base", "algebra", "activations", "architectures", "derivation", "emit", "numeric",
          "reality", "cli")
#: files allowed directly in derive/ (not in a stage)
TOP_LEVEL = ("__init__.py", "__main__.py")

#: the only upward imports: (importing module, imported module) → why it is allowed.  They are
#: function-level (lazy) imports; a module-level upward import is never allowed.
ALLOWED_UPWARD = {
    ("derive.derivation.derivation", "derive.emit.documents"):
        "Derivation.latex(), Derivation.formula() and Derivation.document() are user "
        "conveniences (formula(): user convenience, like latex()) that render the "
        "derivation through the emit stage; imported inside the methods, only when called",
    ("derive.derivation.derivation", "derive.emit.numpy_module"):
        "Derivation.numpy_module() is a user convenience that generates the numpy evaluator "
        "through the emit stage; imported inside the method, only when called",
}


@dataclass(frozen=True)
class Edge:
    source: str        # importing module, dotted
    target: str        # imported module, dotted
    line: int
    function_level: bool


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name → file of every module under ``root``."""
    return {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def _facade(root: Path) -> dict[str, str]:
    """The facade's name → dotted module (``_FACADE`` in derive/__init__.py, read statically)."""
    init = root / "__init__.py"
    if not init.is_file():
        return {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_FACADE"
                                                for t in node.targets):
            return {k: f"{root.name}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


def stage_of(module: str) -> str | None:
    """The stage of a dotted module name; None for the top-level facade / __main__."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    return parts[1]


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set, facade: dict):
        self.module, self.known, self.facade = module, known, facade
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0          # > 0 inside a def / lambda
        self.edges: list[Edge] = []

    def _add(self, target: str, node: ast.AST) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            # an import of a module that does not exist would fail at run time; keep the nearest
            # existing package so that the stage is still known
            while target not in self.known and "." in target:
                target = target.rpartition(".")[0]
            self.edges.append(Edge(self.module, target, node.lineno, self.depth > 0))

    def _scoped(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level - 1 >= len(base):
                raise AssertionError(f"{self.module}:{node.lineno}: relative import beyond the "
                                     f"top-level package")
            base = ".".join(base[:len(base) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:                              # from pkg import submodule
                self._add(sub, node)
            elif base == PACKAGE and alias.name in self.facade:  # from derive import name
                self._add(self.facade[alias.name], node)
            else:
                self._add(base, node)


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a derive module by a derive module, with its line and scope."""
    mods = modules(root)
    facade = _facade(root)
    edges = []
    for name, path in mods.items():
        visitor = _Imports(name, path.name == "__init__.py", set(mods), facade)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges += visitor.edges
    return edges


def _rank(stage: str | None) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


def flat_modules(root: Path = ROOT) -> list[str]:
    """Files directly in derive/ besides the facade and __main__, and folders of no stage."""
    bad = [p.name for p in sorted(root.glob("*.py")) if p.name not in TOP_LEVEL]
    bad += [f"{p.name}/ (not a stage)" for p in sorted(root.iterdir())
            if p.is_dir() and p.name not in STAGES and any(p.rglob("*.py"))]
    return bad


def upward_imports(edges, allowed=ALLOWED_UPWARD) -> list[str]:
    bad = []
    for e in edges:
        src, dst = stage_of(e.source), stage_of(e.target)
        if src is None or dst is None or _rank(dst) <= _rank(src):
            continue
        if e.function_level and (e.source, e.target) in allowed:
            continue
        where = "function-level" if e.function_level else "module-level"
        bad.append(f"{e.source} line {e.line}: {where} import of {e.target} goes up from stage "
                   f"{src!r} to the later stage {dst!r}")
    return bad


def import_cycle(edges) -> list[str] | None:
    """A cycle of the module-level import graph (as a list of modules), or None."""
    graph = nx.DiGraph()
    graph.add_edges_from((e.source, e.target) for e in edges
                         if not e.function_level and e.source != e.target)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    return [a for a, _ in cycle] + [cycle[0][0]]


# ---------------------------------------------------------------------------------------------
# the package
# ---------------------------------------------------------------------------------------------

def test_no_flat_modules():
    bad = flat_modules()
    assert not bad, (f"modules directly in derive/ (move each into the sub-package of its stage, "
                     f"one of {', '.join(STAGES)}): {', '.join(bad)}")


def test_every_stage_is_a_package():
    missing = [s for s in STAGES if not (ROOT / s / "__init__.py").is_file()]
    assert not missing, f"stages without derive/<stage>/__init__.py: {missing}"


def test_imports_go_down_the_pipeline():
    bad = upward_imports(import_edges())
    assert not bad, ("imports from a later stage (stages: " + " → ".join(STAGES) + "):\n  "
                     + "\n  ".join(bad))


def test_no_import_cycle():
    cycle = import_cycle(import_edges())
    assert cycle is None, "module-level import cycle: " + " → ".join(cycle)


def test_allowed_upward_imports_are_still_there():
    """An allowlist entry whose import is gone is stale: remove it."""
    used = {(e.source, e.target) for e in import_edges() if e.function_level}
    stale = [k for k in ALLOWED_UPWARD if k not in used]
    assert not stale, f"ALLOWED_UPWARD entries with no such import: {stale}"


def test_facade_points_into_stages():
    mods = modules()
    for name, module in _facade(ROOT).items():
        assert module in mods, f"derive.{name}: the facade points to {module}, which does not exist"
        assert stage_of(module) in STAGES, f"derive.{name}: {module} is not in a stage"


# ---------------------------------------------------------------------------------------------
# the checker itself fails where it should (a synthetic package in a temporary folder)
# ---------------------------------------------------------------------------------------------

def _package(tmp_path: Path, files: dict) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in {"__init__.py": '_FACADE = {"thing": "emit.out"}\n', **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for stage in STAGES:
        (root / stage).mkdir(exist_ok=True)
        (root / stage / "__init__.py").touch()
    return root


def test_checker_finds_upward_imports_and_cycles(tmp_path):
    root = _package(tmp_path, {
        "base/low.py": "from ..emit import out\n",                    # submodule via package
        "algebra/mid.py": "def f():\n    from ..numeric.num import x\n",  # function-level
        "algebra/ok.py": "from ..base.low import y\nfrom .mid import f\n",
        "emit/out.py": "from ..algebra import ok\n",
        "numeric/num.py": "import derive.reality.real\n",
        "reality/real.py": "from derive import thing\n",               # facade name → emit.out
        "flat.py": "",
    })
    edges = import_edges(root)
    bad = upward_imports(edges)
    assert any(b.startswith("derive.base.low line 1: module-level import of derive.emit.out")
               and "'base'" in b and "'emit'" in b for b in bad), bad
    assert any(b.startswith("derive.algebra.mid line 2: function-level import of "
                            "derive.numeric.num") for b in bad), bad
    assert any(b.startswith("derive.numeric.num line 1: module-level import of "
                            "derive.reality.real") for b in bad), bad
    assert len(bad) == 3, bad
    assert {(e.source, e.target) for e in edges} >= {("derive.reality.real", "derive.emit.out"),
                                                     ("derive.algebra.ok", "derive.base.low")}
    cycle = import_cycle(edges)
    assert cycle is not None and set(cycle) == {"derive.base.low", "derive.emit.out",
                                                "derive.algebra.ok"}, cycle
    assert flat_modules(root) == ["flat.py"]
    # the allowlist lets a function-level import through, never a module-level one
    allowed = {("derive.algebra.mid", "derive.numeric.num"): "test",
               ("derive.base.low", "derive.emit.out"): "test"}
    assert len(upward_imports(edges, allowed)) == 2


def test_checker_refuses_relative_imports_beyond_the_package(tmp_path):
    root = _package(tmp_path, {"base/low.py": "from ...x import y\n"})
    with pytest.raises(AssertionError, match="beyond the top-level package"):
        import_edges(root)
