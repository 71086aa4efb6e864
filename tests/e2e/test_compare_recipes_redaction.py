"""compare_recipes keeps credentials out of its run logs and console (issue 33, item 6).

The first line of ``runs/<name>/train.log`` is the child's command line, shard location included:
a bearer token in a ``pipe:`` command must be masked there as everywhere else.
"""

from __future__ import annotations

import pytest

from toolkit.compare_recipes import Recipe, parse_args, train_one
from toolkit.errors import DataError, UsageError

pytestmark = pytest.mark.slow

SECRET = "b3arer-T0ken-0f-the-shard-server"


@pytest.mark.timeout(300)
def test_the_run_log_and_console_of_a_comparison_hold_no_credential(tmp_path, capsys):
    shards = f'pipe:curl -s -H "Authorization: Bearer {SECRET}" https://h.invalid/x.tar?a=b'
    args, shared = parse_args(
        ["--shards", shards, "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "cmp"), "train.batch_size=4"]
    )
    assert args.shards == shards and shared == ["train.batch_size=4"]
    recipe = Recipe("seed", args.configs[0])
    with pytest.raises((DataError, UsageError)):  # no such shard server: the child stops at once
        train_one(args, recipe, 0, shared, "1/1")
    logs = list((tmp_path / "cmp" / "runs").rglob("train.log"))
    assert len(logs) == 1
    first = logs[0].read_text().splitlines()[0]
    assert "toolkit.train" in first and "Authorization: ***" in first, first
    assert SECRET not in logs[0].read_text()
    out, err = capsys.readouterr()
    assert SECRET not in out + err
