"""The package's import graph: acyclic (lazy imports inside functions included), and every module imports alone.

A cycle hidden behind a function-level import still couples two modules both ways; it is how the
layering drifted before, so the graph counts every ``import toolkit...`` wherever it is written.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "toolkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The toolkit modules ``path`` imports anywhere in its body, resolved to modules that exist.

    ``from toolkit.x import y`` counts as importing ``toolkit.x.y`` when that is a module, else ``toolkit.x``.
    A package's ``__init__`` is not counted as importing its own submodules' parents (``toolkit`` itself
    is a namespace-only package and is ignored).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            names = [n for n in names if n in known] or [node.module]
            names = names[:-1] if len(names) > 1 else names
        else:
            continue
        found.update(n for n in names if n in known and n != "toolkit")
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the toolkit modules importing it runs: those it names, and their parent packages
    (importing ``a.b.c`` runs ``a/b/__init__`` first) except its own ancestors, which are running already."""
    modules = all_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = set()
        for target in imported_modules(path, known):
            parents = {".".join(target.split(".")[:i]) for i in range(2, target.count(".") + 1)}
            edges |= {target} | {p for p in parents if p in known and p not in own}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a list of modules (first == last), or [] when the graph is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_package_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The stages as nodes (toolkit.data, toolkit.models, ...; a top-level module is its own node)."""

    def stage(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(stage(module), set()).update(stage(t) for t in targets if stage(t) != stage(module))
    return packages


def test_the_stages_depend_on_each_other_without_a_cycle() -> None:
    """models -> formats -> models was such a cycle: each stage builds on the ones below it only."""
    cycle = find_cycle(package_graph(import_graph()))
    assert not cycle, "stages import each other: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = import_graph()
    graph["toolkit.errors"] = graph["toolkit.errors"] | {"toolkit.config"}  # config imports errors
    assert find_cycle(graph), "a planted errors -> config -> errors cycle went unnoticed"


# One interpreter loads the third-party libraries once, then each toolkit module is imported in a fork
# of it that holds no toolkit module yet: "alone" as far as our own code goes, in seconds, not minutes.
IMPORT_EACH_ALONE = """
import importlib, os, sys
for library in sys.argv[1].split(","):  # third-party only: what the toolkit imports costs seconds each
    if library:
        importlib.import_module(library)
assert not [m for m in sys.modules if m == "toolkit" or m.startswith("toolkit.")]
failed = []
for name in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as err:
            print(f"{name}: {type(err).__name__}: {err}", flush=True)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
sys.exit(1 if failed else 0)
"""
PRELOAD = "accelerate,matplotlib.pyplot,numpy,PIL.Image,safetensors,sklearn.metrics,timm,torch,torchvision,tqdm,wandb,webdataset,yaml"


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (Linux, macOS)")
def test_every_module_imports_alone() -> None:
    """Each module in an interpreter where no other toolkit module was imported first."""
    modules = sorted(all_modules())
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, PRELOAD, *modules], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"modules that fail to import alone:\n{done.stdout}{done.stderr[-2000:]}"


def test_the_alone_check_reports_a_module_that_fails() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, "", "toolkit.errors", "toolkit.no_such_module"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "toolkit.no_such_module: ModuleNotFoundError" in done.stdout
