"""The documented commands, collected and checked: what ``tests/e2e/test_docs.py`` runs.

Every fenced shell or Python block of README.md, docs/*.md and shards/README.md, the usage lines at
the top of launch/ scripts and the command lines in config headers are collected as ``DocCommand``s.
Each is run as written in a sandbox folder that looks like a checkout (placeholders such as
``runs/NAME`` or ``/data/oxford-iiit-pet`` point at small prepared data), or, where it needs a GPU, a
cluster or the network, checked as far as this machine allows:

- ``python -m toolkit.X`` / ``pets-X``: ``check_toolkit`` parses the arguments with the command's own
  parser and validates every ``key=value`` override against the config it names (``train`` runs
  ``--print-config``); ``run_toolkit`` runs it.
- ``accelerate launch``: Accelerate's own parser and launch validation (which is where a config file
  without ``--num_processes`` fails), then the launched module's arguments as above.
- ``torchrun``: torch's parser, then the module's arguments.
- ``launch/*.sh`` and ``sbatch``: the script itself runs under bash with stand-ins for ``accelerate``,
  ``nvidia-smi``, ``srun``, ``scontrol`` and ``sbatch`` (this file, run as a program) that do the
  checks above instead of starting processes on GPUs.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "oxford-pets-mini"

SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_START = re.compile(r"^(python3?|pets-[a-z-]+|accelerate|torchrun|launch/|sbatch|pip|jupyter|hf|\.\s|source\s)")
# "#   python -m ...", "# Train:  launch/...", "# ... 32 px images. Shards: python -m ..."
HEADER_COMMAND = re.compile(
    r"(?:^#\s+|[A-Z][a-z]+:\s+)((?:python3? -m\s|launch/\S+|accelerate launch\s|sbatch\s|pets-\S+|hf download\s).*)$"
)


@dataclass(frozen=True)
class DocCommand:
    """One documented shell command (continuations joined, comment stripped) or Python block."""

    source: str  # "README.md:97"
    text: str
    kind: str  # "shell" or "python"

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


# ---------------------------------------------------------------------------------------------
# Collecting


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "shards" / "README.md"]


def _shell_commands(lines: Sequence[str], first_line: int, where: str) -> list[DocCommand]:
    """Shell lines -> commands: ``\\`` continuations joined, comments and output lines dropped."""
    commands, pending, start = [], "", first_line
    for offset, line in enumerate(lines):
        if not pending:
            start = first_line + offset
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        text = _strip_comment(text)
        if text and COMMAND_START.match(text):
            commands.append(DocCommand(f"{where}:{start}", text, "shell"))
    return commands


def _strip_comment(text: str) -> str:
    """Drop a trailing ``# comment`` that starts a word outside quotes."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def markdown_commands(path: Path) -> list[DocCommand]:
    """Fenced ``bash``/``sh``/untagged shell and ``python`` blocks, and README's indented command blocks."""
    name = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[DocCommand] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = line[3:].strip().lower()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1 : end]
            if lang == "python":
                commands.append(DocCommand(f"{name}:{i + 2}", "\n".join(body), "python"))
            elif lang in SHELL_LANGS or lang == "":
                commands += _shell_commands(body, i + 2, name)  # untagged blocks: only lines that are commands
            i = end + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):  # an indented code block
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [text[4:] for text in lines[i:end]]
            snippet = [text for text in body if text.strip()]
            if snippet and all(text.startswith("timm.") for text in snippet):
                commands.append(DocCommand(f"{name}:{i + 1}", "import timm\n" + "\n".join(snippet), "python"))
            else:
                commands += _shell_commands(body, i + 1, name)
            i = end
            continue
        i += 1
    return commands


def header_commands(path: Path) -> list[DocCommand]:
    """Command lines in the leading comment block of a launch script or a config file."""
    name = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    commands, i = [], 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        match = HEADER_COMMAND.search(lines[i]) if not lines[i].startswith("#!") else None
        if match:
            text, start = match.group(1), i + 1
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].lstrip("#").strip()
            text = _strip_comment(text)
            commands.append(DocCommand(f"{name}:{start}", text, "shell"))
        i += 1
    return commands


def all_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for path in doc_files():
        commands += markdown_commands(path)
    for path in sorted((ROOT / "launch").iterdir()):
        commands += header_commands(path)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        commands += header_commands(path)
    return commands


# ---------------------------------------------------------------------------------------------
# Placeholders: what the docs leave for the reader to fill in, filled with small prepared data


def placeholders(mini: Path, flowers: Path) -> list[tuple[str, str]]:
    return [
        (r"\s+\[(?:-|[A-Z]|key=)[^\]]*\]", ""),  # optional parts: [--out DIR], [key=value ...], [OUT_DIR]
        (r"--model \.\.\. --shards \.\.\.", "--model runs/NAME/model.safetensors --shards shards/pets"),
        (
            r"(?<![\w/.])(/data/oxford-iiit-pet|data/oxford-iiit-pet|\.\./shared/data/oxford-pets-mini|DATA)(?![\w/-])",
            str(mini),
        ),
        (r"(?<![\w/.])(/data/flowers|my_images/)(?![\w-])", str(flowers)),
        (r"--config FILE\b", "--config configs/smoke.yaml"),
        (r"--shards (SHARDS|/tmp/mini-shards)\b", "--shards shards/pets"),
    ]


def fill_in(text: str, mini: Path, flowers: Path) -> str:
    for pattern, value in placeholders(mini, flowers):
        text = re.sub(pattern, lambda _, value=value: value, text)
    return text


# ---------------------------------------------------------------------------------------------
# Checking a toolkit command without running it


class Parsed(Exception):
    """Raised by the patched parser once the arguments parsed: the command accepts them."""


def toolkit_module(argv: Sequence[str]) -> Optional[tuple[str, list[str]]]:
    """``python -m toolkit.X a b`` / ``pets-X a b`` / ``toolkit/X.py a b`` -> (module, [a, b])."""
    from toolkit.commands import COMMANDS

    argv = list(argv)
    if argv and Path(argv[0]).name in COMMANDS:
        return COMMANDS[Path(argv[0]).name], argv[1:]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m" and argv[2].startswith("toolkit"):
        return argv[2], argv[3:]
    if argv and argv[0].startswith("toolkit/") and argv[0].endswith(".py"):
        return argv[0][:-3].replace("/", "."), argv[1:]
    return None


def _main_of(module: str) -> Callable:
    import importlib

    if module == "toolkit.bench":
        module = "toolkit.bench.__main__"
    return importlib.import_module(module).main


def check_toolkit(module: str, args: Sequence[str]) -> str:
    """The command accepts ``args``: its parser takes them, and every override fits the config it names."""
    from toolkit.cli import ArgumentParser, UsageError
    from toolkit.config import SHIPPED_CONFIGS, load_config, split_config_args, validate_config

    args = list(args)
    if module == "toolkit.train":
        _call(_main_of(module), [*args, "--print-config"])
        return "checked: --print-config"
    original = ArgumentParser.parse_args

    def parse_and_stop(self, argv=None, namespace=None):
        raise Parsed(original(self, argv, namespace))

    ArgumentParser.parse_args = parse_and_stop
    try:
        _call(_main_of(module), args)
        raise AssertionError(f"{module} {shlex.join(args)}: never parsed its arguments")
    except Parsed as parsed:
        namespace = parsed.args[0]
    finally:
        ArgumentParser.parse_args = original
    if module in ("toolkit.quickstart", "toolkit.compare_recipes"):
        _, overrides = split_config_args(args)
        configs = getattr(namespace, "configs", None) or [getattr(namespace, "config", None)]
        for config in configs:
            try:
                validate_config(load_config(config or SHIPPED_CONFIGS / "quickstart.yaml", overrides))
            except UsageError as err:
                raise AssertionError(f"{module}: {err}") from None
    return "checked: arguments parsed"


def _call(main: Callable, args: list[str]) -> None:
    """Run ``main(args)``; a usage or data error fails the check with the command's own line."""
    from toolkit.cli import DataError, UsageError

    try:
        code = main(args)
    except (UsageError, DataError) as err:
        raise AssertionError(f"error: {err}") from None
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise AssertionError(f"exit code {exit_.code}") from None
        return
    if code not in (0, None):
        raise AssertionError(f"exit code {code}")


def check_accelerate(args: Sequence[str]) -> str:
    """``accelerate launch ARGS``: Accelerate's parser and launch validation, then the launched command."""
    import contextlib
    import io

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(list(args))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            _validate_launch_command(parsed)
        except ValueError as err:
            raise AssertionError(f"accelerate launch refuses it: {err}") from None
    script = parsed.training_script
    module = script if parsed.module else script[:-3].replace("/", ".") if script.endswith(".py") else None
    if module is None or not module.startswith("toolkit"):
        raise AssertionError(f"accelerate launch runs {script!r}, not a toolkit command")
    if not parsed.module and not Path(script).is_file():
        raise AssertionError(f"accelerate launch: no script {script!r} here")
    return (
        f"accelerate launch accepts it ({parsed.num_processes} processes, {parsed.mixed_precision}); "
        + check_toolkit(module, parsed.training_script_args)
    )


def check_torchrun(args: Sequence[str]) -> str:
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(list(args))
    module = parsed.training_script if parsed.module else parsed.training_script[:-3].replace("/", ".")
    return "torchrun accepts it; " + check_toolkit(module, parsed.training_script_args)


# ---------------------------------------------------------------------------------------------
# Stand-ins for the programs a launch script calls (this file run as a program from a bin folder)

STAND_INS = ("accelerate", "torchrun", "nvidia-smi", "srun", "scontrol", "sbatch", "python", "python3")
FAKE_GPUS = 8
SBATCH_SWITCHES = {"requeue", "no-requeue", "exclusive", "parsable", "wait"}  # sbatch flags that take no value


def write_stand_ins(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in STAND_INS:
        script = folder / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} "$@"\n')
        script.chmod(0o755)
    return folder


def stand_in(name: str, args: list[str]) -> int:
    if name == "nvidia-smi":  # -L lists the GPUs
        for index in range(FAKE_GPUS):
            print(f"GPU {index}: NVIDIA H100 80GB HBM3 (UUID: GPU-{index:08d})")
        return 0
    if name == "scontrol":  # show hostnames NODELIST
        print("node001")
        return 0
    if name == "srun":  # srun [--options] COMMAND...: run the command once, as on the first node
        while args and args[0].startswith("-"):
            args = args[1:]
        for key, value in (("SLURM_NODEID", "0"), ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0"), ("SLURM_NTASKS", "1")):
            os.environ.setdefault(key, value)
        os.execvp(args[0], args)
    if name == "sbatch":  # sbatch [--options] SCRIPT ARGS: run the script as SLURM would on a 2-node job
        options = {}
        while args and args[0].startswith("-"):
            name, _, value = args.pop(0).lstrip("-").partition("=")
            options[name] = value if value or name in SBATCH_SWITCHES else args.pop(0)
        nodes = options.get("nodes", "2").split("-")[-1]  # MIN-MAX: SLURM may give up to MAX
        env = dict(
            os.environ,
            SLURM_NNODES=nodes,
            SLURM_JOB_NUM_NODES=nodes,
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="pets",
            SLURM_JOB_NODELIST="node[001-00%s]" % nodes,
            SLURM_GPUS_ON_NODE=str(FAKE_GPUS),
            SLURM_SUBMIT_DIR=os.getcwd(),
            SLURM_NODEID="0",
        )
        os.execvpe("bash", ["bash", *args], env)
    if name in ("python", "python3"):  # a toolkit command is checked; anything else runs on the real interpreter
        found = toolkit_module([name, *args])
        if found is None:
            os.execv(sys.executable, [sys.executable, *args])
    try:
        if name in ("python", "python3"):
            print(check_toolkit(*found))
        elif name == "accelerate":
            if not args or args[0] != "launch":
                raise AssertionError(f"accelerate {shlex.join(args)}: only `accelerate launch` is documented")
            print(check_accelerate(args[1:]))
        elif name == "torchrun":
            print(check_torchrun(args))
    except AssertionError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(stand_in(sys.argv[1], sys.argv[2:]))
