"""python -m toolkit.bench: the dispatcher names a missing subcommand module."""

from __future__ import annotations

import pytest

from toolkit.errors import UsageError


def test_bench_dispatcher_reports_missing_subcommand_module(monkeypatch, capsys):
    from toolkit.bench import __main__ as bench

    monkeypatch.setitem(bench.SUBCOMMANDS, "ghost", "toolkit.bench.no_such_module")
    with pytest.raises(UsageError, match="toolkit.bench.no_such_module does not exist"):
        bench.main(["ghost"])
    with pytest.raises(UsageError, match="unknown bench subcommand 'nope'"):
        bench.main(["nope"])
    assert set(bench.SUBCOMMANDS) >= {"model", "data", "shards", "e2e"}
