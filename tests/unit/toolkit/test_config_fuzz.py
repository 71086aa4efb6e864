"""Fuzzed command lines and config files: a valid config, or one error line and exit code 2; never a traceback."""

from __future__ import annotations

import random

from helpers import (
    SMOKE,
)
from toolkit.cli import run_cli
from toolkit.config import Config, load_config, to_dict, validate_config

KEYS = [f"{section}.{key}" for section, fields in to_dict(Config()).items() for key in fields]


ODD_KEYS = ["data", "data.shards.deeper", "train.epochz", "nosuch.key", "Data.shards", ".lr", "a..b", "train.", "1x.y"]


ODD_VALUES = [
    "",
    "0",
    "-1",
    "7",
    "1e-3",
    "3.0e-3",
    "1e400",
    ".nan",
    "-.inf",
    "true",
    "null",
    "~",
    "abc",
    "adam",
    "[1, 1, 1, 1]",
    "[1,",
    "[]",
    "{a: 1}",
    "{",
    "[0.5, 0.5]",
    "'quoted'",
    "a: b: c",
    "- item",
    "x" * 300,
    "!!python/object/apply:os.system ['echo pwned']",
    "&anchor 1",
    "*alias",
    "%TAG",
    "\t",
    "é",
    "=",
    "a=b",
]


ODD_FLAGS = ["--bogus", "-x", "--config", "--print-config=yes", "--", "-"]


def _random_command_line(rng: random.Random) -> list[str]:
    argv = ["--config", str(SMOKE), "--print-config"]
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(KEYS if rng.random() < 0.8 else ODD_KEYS)
        argv.append(f"{key}={rng.choice(ODD_VALUES)}")
    if rng.random() < 0.1:
        argv.insert(rng.randrange(len(argv) + 1), rng.choice(ODD_FLAGS))
    if rng.random() < 0.05:
        argv = [a for a in argv if a != "--config"]
    return argv


def test_fuzzed_train_command_lines_print_a_config_or_one_error_line(tmp_path, capsys):
    from toolkit.train import main

    rng, printed = random.Random(1234), tmp_path / "printed.yaml"
    codes = []
    for _ in range(300):
        argv = _random_command_line(rng)
        try:
            run_cli(main, argv)
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        codes.append(code)
        if code == 0:  # the printed config is a complete config file that loads back
            printed.write_text(captured.out)
            validate_config(load_config(printed))
        else:
            assert code == 2, (argv, captured.err)
            assert "Traceback" not in captured.err, (argv, captured.err)
            errors = [line for line in captured.err.splitlines() if "error:" in line]
            assert len(errors) == 1, (argv, captured.err)
    assert 0 in codes and 2 in codes  # the fuzzing reached both outcomes


def test_fuzzed_config_files_load_or_give_one_error_line(tmp_path, capsys):
    from toolkit.train import main

    rng = random.Random(99)
    fragments = [
        "data:",
        "  shards: x",
        "model: [1, 2]",
        "train:",
        "  epochs: 0",
        "  epochs: 3",
        "optimizer: {lr: -1}",
        "optimizer:\n  lr: abc",
        ": :",
        "- a\n- b",
        "{{",
        "'",
        "\x00",
        "!!binary AAAA",
        "tracking: {wandb: maybe}",
        "eval:\n  threshold: 2",
        "output: null",
        "scheduler:\n\tname: cosine",
        "data:\n  crop_scale: [1, 0.5]",
    ]
    path = tmp_path / "config.yaml"
    for _ in range(120):
        text = "\n".join(rng.choice(fragments) for _ in range(rng.randint(0, 5)))
        junk = bytes(rng.randrange(256) for _ in range(40))
        path.write_bytes(text.encode("utf-8") if rng.random() < 0.9 else junk)
        try:
            run_cli(main, ["--config", str(path), "--print-config"])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        assert code in (0, 2), (text, captured.err)
        if code == 2:
            assert "Traceback" not in captured.err and captured.err.count("\n") == 1, (text, captured.err)
