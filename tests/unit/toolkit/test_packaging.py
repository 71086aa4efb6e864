"""The package as a library: every direct import declared with a floor, a LICENSE, programs named as run,
and the defaults printable without a config file."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest

from helpers import ROOT, run_in_process
from toolkit.cli import program_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "toolkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"toolkit"}


def test_every_direct_import_is_a_declared_dependency_with_a_floor():
    declared = {requirement_name(r): r for r in PROJECT["dependencies"]}
    extras = {requirement_name(r) for group in PROJECT["optional-dependencies"].values() for r in group}
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(imported_top_level_modules()):
        names = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        found = names & (set(declared) | extras)
        assert found, f"toolkit imports {module!r} (distribution {names}) but pyproject.toml does not declare it"
        for name in found & set(declared):
            assert ">=" in declared[name], f"{declared[name]}: give a tested floor (.ci/floors)"


def test_license_file_is_the_apache_text_pyproject_names():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize(
    "argv0, prog, expected",
    [
        ("/venv/bin/pets-train", "toolkit.train", "pets-train"),
        ("/venv/bin/pets-bench", "python -m toolkit.bench model", "pets-bench model"),
        ("/repo/toolkit/export.py", "python -m toolkit.export", "python -m toolkit.export"),
        ("-m", "toolkit.visualize", "python -m toolkit.visualize"),
    ],
)
def test_programs_are_named_as_they_were_run(monkeypatch, argv0, prog, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert program_name(prog) == expected


def test_print_config_needs_no_config_file(capsys):
    from toolkit.train import main

    assert run_in_process(main, ["--print-config", "optimizer.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "optimizer:" in out and "lr: 0.01" in out and "arch: resnet101" in out
    assert run_in_process(main, ["train.epochs=1"]) == 2
    assert "--print-config alone shows the defaults" in capsys.readouterr().err
