"""docs/architecture.md's stage table is the code's: the modules each stage has and the stages each imports."""

from __future__ import annotations

import re

from test_import_graph import PACKAGE, all_modules, import_graph, package_graph

DOC = PACKAGE.parent / "docs" / "architecture.md"


def stage_rows() -> dict[str, tuple[set[str], set[str]]]:
    """``toolkit.X`` (or ``commands``) -> (module names, imported stage names) from the doc's stage table."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("## Stages and their imports", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith(("`toolkit/", "commands")):
            continue
        stage = "commands" if cells[0] == "commands" else "toolkit." + cells[0].strip("`").removeprefix("toolkit/")
        stage = stage.removesuffix(".py").rstrip("/")
        modules = set(re.findall(r"`([a-z_0-9]+)`", cells[1]))
        imports = {name.strip() for name in cells[3].split(",") if name.strip()}
        rows[stage] = (modules, imports)
    return rows


def test_every_stage_lists_exactly_its_modules() -> None:
    rows = stage_rows()
    actual: dict[str, set[str]] = {}
    for module, path in all_modules().items():
        parts = module.split(".")
        if len(parts) == 2 and path.name != "__init__.py":  # a top-level module: its own stage, or a command
            stage = module if module in rows else "commands"
            actual.setdefault(stage, set()).add(parts[1])
        elif len(parts) == 3 and parts[2] != "__main__":
            actual.setdefault(".".join(parts[:2]), set()).add(parts[2])
    documented = {stage: modules for stage, (modules, _) in rows.items()}
    assert documented == actual, {
        s: (
            sorted(documented.get(s, set()) - actual.get(s, set())),
            sorted(actual.get(s, set()) - documented.get(s, set())),
        )
        for s in set(documented) | set(actual)
        if documented.get(s) != actual.get(s)
    }


def test_every_stage_lists_exactly_the_stages_it_imports() -> None:
    graph = package_graph(import_graph())
    wrong = {}
    for stage, (_, imports) in stage_rows().items():
        if stage == "commands":
            continue
        real = {name.removeprefix("toolkit.") for name in graph.get(stage, set())}
        if imports != real:
            wrong[stage] = {
                "documented but not imported": imports - real,
                "imported but not documented": real - imports,
            }
    assert not wrong, wrong


def test_the_table_parser_reads_the_doc() -> None:
    rows = stage_rows()
    assert {"toolkit.data", "toolkit.formats", "toolkit.training", "toolkit.config", "commands"} <= set(rows)
    assert "loader" in rows["toolkit.data"][0] and rows["toolkit.formats"][1] == {"errors", "fileio"}
