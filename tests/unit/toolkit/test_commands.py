"""The console scripts: every documented command is installed as pets-*, and its --help shows an example."""

from __future__ import annotations

import sys

import pytest

from helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from toolkit import commands  # noqa: E402  (after the skip for Python 3.10)


def test_every_command_is_a_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(commands.COMMANDS)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == "toolkit.commands" and callable(getattr(commands, function)), name
        assert getattr(commands, function).__doc__ == f"python -m {commands.COMMANDS[name].removesuffix('.__main__')}"


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_help_lists_the_options_and_an_example(name, monkeypatch, capsys):
    function = getattr(commands, name.removeprefix("pets-").replace("-", "_"))
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        function()
    assert exit_.value.code in (0, None)
    text = capsys.readouterr().out
    assert "--" in text and "example" in text.lower(), text
