"""The W&B Report command's arguments: a bad project name, no runs, neither group nor runs, and
publishing without the report extra are each one line and exit code 2."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import error_line, isolate_wandb, run_in_process
from toolkit.reporting import wandb_spec
from toolkit.reporting.wandb_spec import SPEC_FILE
from toolkit.wandb_report import main

PROJECT = "pets-toolkit-tests"


def report_cli(*argv: str) -> int:
    return run_in_process(main, list(argv))


@pytest.fixture
def offline(monkeypatch, tmp_path) -> None:
    isolate_wandb(monkeypatch, tmp_path / "home")


@pytest.mark.parametrize("project", ["team/pets", "pets:v2", "what?", "x" * 129, ""])
def test_bad_project_name_is_one_line_exit_2(project, offline, tmp_path, capsys):
    assert report_cli("--project", project, "--group", "g", "--runs-dir", str(tmp_path), "--dry-run") == 2
    assert "not a valid W&B project name" in error_line(capsys.readouterr().err)


def test_no_runs_is_one_line_exit_2(offline, tmp_path, capsys):
    (tmp_path / "runs" / "untracked").mkdir(parents=True)  # a run folder without W&B
    assert report_cli("--project", PROJECT, "--group", "g", "--runs-dir", str(tmp_path / "runs"), "--dry-run") == 2
    assert "no W&B runs found in" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs" / SPEC_FILE).exists()


def test_group_or_runs_is_required(offline, tmp_path, capsys):
    assert report_cli("--project", PROJECT, "--runs-dir", str(tmp_path)) == 2
    assert "exactly one of --group" in error_line(capsys.readouterr().err)


def test_publishing_without_the_report_extra_says_how_to_install_it(offline, monkeypatch, tmp_path, capsys):
    for name in ("wandb_workspaces", "wandb_workspaces.reports", "wandb_workspaces.reports.v2"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of it now raises ImportError
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "format": wandb_spec.SPEC_FORMAT,
                "project": PROJECT,
                "title": "t",
                "description": "",
                "runsets": [],
                "columns": [],
                "blocks": [],
                "runs": [],
            }
        )
    )
    assert report_cli("--publish", str(spec)) == 2
    assert 'pip install -e ".[report]"' in error_line(capsys.readouterr().err)
