"""The suite's layout decides what is fast: tests/unit/<package>/ in-process, tests/e2e/ slow, by folder.

``python -m pytest -q tests/unit`` is the fast command in the README; ``-m "not slow"`` selects the same
tests because conftest marks every test under tests/e2e/ slow. Hand-placed ``slow`` marks in unit/ would
make the two disagree, and a test file outside the two folders would be in neither.
"""

from __future__ import annotations

import ast
import re
from types import SimpleNamespace

import conftest
import pytest

from helpers import ROOT

TESTS = ROOT / "tests"
PACKAGES = {"data", "formats", "models", "training", "evaluation", "reporting", "bench", "toolkit"}


def test_every_test_file_is_in_a_package_folder_of_unit_or_in_e2e():
    files = sorted(TESTS.rglob("test_*.py"))
    misplaced = [
        str(f.relative_to(TESTS))
        for f in files
        if not (f.parent == TESTS / "e2e" or (f.parent.parent == TESTS / "unit" and f.parent.name in PACKAGES))
    ]
    assert files and not misplaced, f"move these into tests/unit/<package>/ or tests/e2e/: {misplaced}"
    names = [f.name for f in files]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"test file names must be unique across tests/ (no __init__.py files): {twice}"


def test_no_unit_test_is_marked_slow_by_hand():
    marked = [
        str(f.relative_to(TESTS))
        for f in sorted((TESTS / "unit").rglob("*.py"))
        if re.search(r"pytest\.mark\.slow|pytestmark\s*=.*\bslow\b", f.read_text(encoding="utf-8"))
    ]
    assert not marked, f"slow tests belong in tests/e2e/ (the folder marks them): {marked}"


def test_the_folder_decides_slow(request: pytest.FixtureRequest):
    """conftest's hook marks an e2e item slow and leaves a unit item alone; the collected items agree."""

    class Item(SimpleNamespace):
        def add_marker(self, marker) -> None:
            self.marks.append(marker.name)

    e2e, unit = (
        Item(path=TESTS / "e2e" / "test_x.py", marks=[]),
        Item(path=TESTS / "unit" / "data" / "test_x.py", marks=[]),
    )
    conftest.pytest_collection_modifyitems(request.config, [e2e, unit])
    assert e2e.marks == ["slow"] and unit.marks == []
    items = request.session.items
    assert request.node in items
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        assert slow == (TESTS / "e2e" in item.path.resolve().parents), item.nodeid


def test_the_tests_docs_cite_exist():
    """docs/reliability.md names each promise's test as FOLDER/FILE::FUNCTION under tests/; each must exist."""
    cited = re.findall(r"`((?:unit/\w+|e2e)/test_\w+\.py)::(test_\w+)`", (ROOT / "docs/reliability.md").read_text())
    assert len(cited) >= 60, len(cited)
    defined: dict[str, set[str]] = {}
    for path in {path for path, _ in cited}:
        file = TESTS / path
        tree = ast.parse(file.read_text(encoding="utf-8")) if file.is_file() else ast.Module(body=[])
        defined[path] = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    gone = [f"{path}::{name}" for path, name in cited if name not in defined[path]]
    assert not gone, f"docs/reliability.md cites tests that do not exist: {gone}"
