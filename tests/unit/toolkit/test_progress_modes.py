"""toolkit.cli.progress: a bar on a terminal, a few plain lines in a log, nothing with --progress none."""

from __future__ import annotations

import io

import pytest

from toolkit import cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def auto_mode():
    cli.set_progress("auto")
    yield
    cli.set_progress("auto")


def test_without_a_terminal_progress_is_ten_plain_lines(monkeypatch, capsys):
    items = list(cli.progress(range(100), desc="eval test", unit="batch", enabled=True))
    assert items == list(range(100))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("eval test: 100/100 batch | ") and "ETA 0:00" in lines[-1]
    assert "\r" not in "".join(lines)


def test_on_a_terminal_it_is_a_bar_and_log_mode_can_be_asked_for(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(cli.sys, "stderr", Terminal())
    assert cli.progress_mode() == "bar"
    assert isinstance(cli.progress(range(3), enabled=True), tqdm)
    cli.set_progress("log")
    assert isinstance(cli.progress(range(3), enabled=True), cli.LogProgress)
    assert cli.progress(range(3), enabled=True, lines=False) == range(3)  # the caller prints its own lines


def test_none_is_silent_and_an_unknown_mode_is_a_usage_error(capsys):
    cli.set_progress("none")
    assert list(cli.progress(range(5), enabled=True)) == list(range(5))
    assert capsys.readouterr().err == ""
    with pytest.raises(cli.UsageError, match="--progress 'fancy'"):
        cli.set_progress("fancy")
