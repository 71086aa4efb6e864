"""Every documented command works as written (tests/doc_commands.py says how each is run or checked).

Each shell line and Python block of README.md, docs/*.md, shards/README.md, the launch/ script
headers and the config headers is one test case, named by its file and line. Lines that fit this
machine run for real in a sandbox that looks like a checkout; the others (GPUs, a
cluster, the network, hours of training) are checked by the command's own argument parser, config
validation and launcher (``accelerate launch``'s validation, torchrun's parser, the launch scripts
under bash with stand-ins for the GPU and SLURM programs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import doc_commands
import pytest
from doc_commands import (
    ROOT,
    DocCommand,
    all_commands,
    check_accelerate,
    check_toolkit,
    check_torchrun,
    fill_in,
    toolkit_module,
    write_stand_ins,
)
from PIL import Image

from helpers import ENV, run_in_process

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

COMMANDS = all_commands()


def distinct_commands(commands: list[DocCommand]) -> tuple[list[DocCommand], dict[str, list[str]]]:
    """The first line of each distinct filled-in command, and where else it is documented (source -> sources).

    Decided here, at collection, so each distinct command is checked once whatever runs before it.
    """
    first: dict[str, DocCommand] = {}
    same_as: dict[str, list[str]] = {}
    for command in commands:
        text = fill_in(command.text, Path("x/oxford-pets-mini"), Path("f"))
        kept = first.setdefault(text, command)
        same_as.setdefault(kept.source, [])
        if kept is not command:
            same_as[kept.source].append(command.source)
    return list(first.values()), same_as


UNIQUE, SAME_AS = distinct_commands(COMMANDS)
LINKED = ("configs", "launch", "toolkit", "notebooks", "accelerate_config.yaml", "pyproject.toml")
RUN_NAME = "NAME"
# The lines that run for real here (a regular expression each, searched in the filled-in command); every
# other line is checked. Each pattern must match a documented line, so this list cannot silently rot.
RUN_HERE = (
    r"^python -m toolkit\.make_shards --synthetic 600 --out shards/synthetic$",
    r"^python -m toolkit\.make_shards --verify shards/pets$",
    r"^python -m toolkit\.train --config configs/smoke\.yaml$",
    r"^python -m toolkit\.make_shards --source \S+oxford-pets-mini --labels breed --resize-shorter 96 --out shards/breeds-mini$",
    r"^python -m toolkit\.export --run runs/NAME --out exported/NAME$",
    r"^python -m toolkit\.evaluate --model runs/NAME/model\.safetensors --shards shards/pets --split test$",
    r"^python -m toolkit\.evaluate --model local-dir:exported/NAME --shards shards/pets --split test$",
    r"^python -m toolkit\.visualize --run runs/NAME$",
    r"^python -m toolkit\.predict --model runs/NAME/model\.safetensors cat\.jpg dog\.png$",
    r"^python -m toolkit\.predict --model runs/NAME/model\.safetensors \S+ --out predictions\.csv$",
    r"^python -m toolkit\.predict --model runs/NAME/model\.safetensors --shards shards/pets --split test --out test-predictions\.csv$",
    r"^python -m toolkit\.evaluate --model runs/NAME/model\.safetensors --shards shards/pets --split test --tta hflip$",
    r"^python -m toolkit\.predict --model runs/NAME/model\.safetensors --shards shards/pets --split test --tta hflip --out test-tta\.csv$",
    r"^python -m toolkit\.export --run runs/NAME --out exported/NAME-onnx --format onnx$",
    r"^python -m toolkit\.train --config configs/smoke\.yaml train\.mixup_alpha=0\.2 train\.cutmix_alpha=1\.0 train\.label_smoothing=0\.1$",
)
# Lines another test runs as written (the fresh-venv install and the test suite itself).
ELSEWHERE = {
    "python3 -m venv .venv": "tests/e2e/test_install.py builds a fresh venv and installs the package",
    ". .venv/bin/activate": "tests/e2e/test_install.py",
    "python -m pytest -q": ".ci/run runs exactly this line",
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that looks like a checkout after the first command: the quickstart's run as runs/NAME (shrunk
    through its documented options), its shards as shards/pets and shards/synthetic, the export of it, two
    images to predict and a two-class image folder."""
    root = tmp_path_factory.mktemp("docs") / "checkout"
    root.mkdir()
    for name in LINKED:
        (root / name).symlink_to(ROOT / name)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from toolkit import export, quickstart

        code = run_in_process(
            quickstart.main,
            [
                "--synthetic-images",
                "120",
                "train.epochs=2",
                "scheduler.warmup_epochs=0",
                "data.image_size=32",
                "data.resize_size=36",
                "tracking.wandb=disabled",
                "eval.num_images=2",
                f"output.run_name={RUN_NAME}",
            ],
        )
        assert code == 0
        assert run_in_process(export.main, ["--run", f"runs/{RUN_NAME}", "--out", f"exported/{RUN_NAME}"]) == 0
    finally:
        os.chdir(cwd)
    (root / "shards" / "pets").symlink_to("quickstart")
    (root / "shards" / "synthetic").symlink_to("quickstart")
    Image.new("RGB", (80, 60), (200, 150, 90)).save(root / "cat.jpg")
    Image.new("RGB", (60, 80), (90, 120, 200)).save(root / "dog.png")
    for index, colour in enumerate(((220, 40, 40), (40, 200, 60))):
        folder = root / "flowers" / f"class{index}"
        folder.mkdir(parents=True)
        for number in range(8):
            Image.new("RGB", (40, 40), tuple(c - 4 * number for c in colour)).save(folder / f"{number}.jpg")
    return root


def workdir_for(sandbox: Path, tmp_path: Path, command: str) -> Path:
    """A fresh folder with the sandbox's files linked in; commands that write shards get an empty shards/
    (a link there would let them replace the shared shards)."""
    work = tmp_path / "checkout"
    work.mkdir()
    fresh = ("shards", "runs", "exported") if "toolkit.export" in command else ("shards", "runs")
    for entry in sandbox.iterdir():
        if entry.name not in fresh:
            (work / entry.name).symlink_to(entry.resolve() if entry.is_symlink() else entry)
    for folder in ("shards", "runs"):
        (work / folder).mkdir()
    writes_shards = "make_shards" in command and "--verify" not in command
    for folder in ("runs",) if writes_shards else ("shards", "runs"):
        for entry in (sandbox / folder).iterdir():
            (work / folder / entry.name).symlink_to(entry.resolve())
    return work


def run_here(text: str) -> bool:
    return any(re.search(pattern, text) for pattern in RUN_HERE)


def check_shell(command: str, work: Path, tmp_path: Path) -> str:
    """Run or check one shell command (no pipes or redirections in the docs; `&&` chains are split)."""
    results = []
    for part in (piece.strip() for piece in command.split("&&")):
        argv = shlex.split(part)
        if part in ELSEWHERE:
            results.append(f"{part}: {ELSEWHERE[part]}")
        elif argv[:2] == ["pip", "install"]:
            extras = re.fullmatch(r"-e \.\[([a-z0-9,]+)\]", " ".join(argv[2:]).replace('"', ""))
            assert extras, f"unexpected pip line: {part}"
            declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            missing = [name for name in extras.group(1).split(",") if name not in declared]
            assert not missing, f"pyproject.toml has no extra {missing}"
            results.append(f"extras {extras.group(1)} declared")
        elif argv[:2] == ["jupyter", "lab"]:
            assert (work / argv[2]).is_file(), f"no notebook {argv[2]}"
            results.append("notebook exists")
        elif argv[:2] == ["hf", "download"]:  # needs the network: the installed hf command takes these arguments
            proc = subprocess.run(["hf", "download", "--help"], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            for flag in (a for a in argv if a.startswith("--")):
                assert flag in proc.stdout, f"hf download has no {flag}"
            results.append("hf download takes these flags")
        elif argv[0] == "accelerate":
            assert argv[1] == "launch", part
            results.append(check_accelerate(argv[2:]))
        elif argv[0] == "torchrun":
            results.append(check_torchrun(argv[1:]))
        elif argv[0].startswith("launch/") or argv[0] == "sbatch":
            results.append(run_launcher(argv, work, tmp_path))
        elif argv[:3] == ["python", "-m", "pytest"]:  # the suite runs these files itself
            paths = [a for a in argv[3:] if not a.startswith("-")]
            assert paths and all((ROOT / a).exists() for a in paths), f"no such test file or folder in {part!r}"
            results.append("test files exist (the suite runs them)")
        elif argv[0] == "python" and argv[1].startswith("tests/"):  # a test helper script, started by its test
            compile((ROOT / argv[1]).read_text(), argv[1], "exec")
            results.append("the script exists and compiles (tests/e2e/test_slurm.py starts it)")
        else:
            found = toolkit_module(argv)
            assert found is not None, f"no rule for {part!r}: teach tests/doc_commands.py how to check it"
            module, args = found
            if run_here(part):
                code = run_in_process(doc_commands._main_of(module), args)
                assert code == 0, f"{part}: exit code {code}"
                results.append("ran")
            else:
                results.append(check_toolkit(module, args))
    return "; ".join(results)


def run_launcher(argv: list[str], work: Path, tmp_path: Path) -> str:
    """A launch script as written, under bash, with stand-ins for accelerate, nvidia-smi, SLURM and python."""
    bin_dir = write_stand_ins(tmp_path / "bin")
    env = {
        **ENV,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "SHARDS": "shards/pets",
        "SKIP_MODEL": "1",
        "QUICK": "1",
    }
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{shlex.join(argv)} -> exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    if argv[0] == "launch/gpu_check.sh":  # it keeps going after a failed check: every check must have passed
        summary = [json.loads(line) for line in (work / "gpu-check" / "summary.jsonl").read_text().splitlines()]
        failed = [item for item in summary if item.get("rc", 0) != 0]
        assert not failed, failed
    return "launcher checked: " + " | ".join(proc.stdout.split("\n")[-3:])


@pytest.mark.parametrize("command", [pytest.param(c, id=c.source) for c in UNIQUE])
@pytest.mark.timeout(300)
def test_documented_command_works_as_written(command: DocCommand, sandbox: Path, tmp_path: Path, monkeypatch):
    from conftest import SHARED_MINI

    if "oxford-pets-mini" in command.text and not SHARED_MINI.is_dir():
        pytest.skip(f"needs the real sample data at {SHARED_MINI}")
    text = fill_in(command.text, SHARED_MINI, sandbox / "flowers")
    if SAME_AS[command.source]:  # the same line in other files (a script's header and the README, say)
        print(f"also documented at {', '.join(SAME_AS[command.source])}")
    work = workdir_for(sandbox, tmp_path, text)
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if command.kind == "python":
        namespace = {"tmp": tmp_path}  # shards/README's example writes under `tmp`, which it says to set
        exec(compile(text, command.source, "exec"), namespace)
    else:
        print(check_shell(text, work, tmp_path))


def test_every_run_here_pattern_matches_a_documented_line():
    texts = [fill_in(c.text, Path("x/oxford-pets-mini"), Path("f")) for c in COMMANDS]
    for pattern in RUN_HERE:
        assert any(re.search(pattern, text) for text in texts), f"no documented line matches {pattern!r}"


def test_collects_the_documented_lines():
    sources = {c.source.split(":")[0] for c in COMMANDS}
    assert {"README.md", "shards/README.md", "docs/results.md", "launch/cpu.sh", "configs/smoke.yaml"} <= sources
    assert len(COMMANDS) >= 60
    # every documented line is a test case of its own or named by the case that checks the same command
    covered = [c.source for c in UNIQUE] + [source for also in SAME_AS.values() for source in also]
    assert sorted(covered) == sorted(c.source for c in COMMANDS)
    assert len(UNIQUE) < len(COMMANDS)  # the launch scripts' headers repeat README lines


def test_bf16_lines_train_in_bf16():
    """A line that says bf16 trains in bf16: its config sets bf16 or leaves it to the launcher, which says bf16."""
    from toolkit.config import load_config

    checked = []
    for command in COMMANDS:
        path, number = command.source.split(":")
        line = (ROOT / path).read_text().splitlines()[int(number) - 1]  # with its comment
        config = re.search(r"--config (configs/\S+\.yaml)", command.text)
        if "bf16" in line and config and command.text.startswith("launch/"):
            precision = load_config(ROOT / config.group(1)).train.mixed_precision
            assert precision in (None, "bf16"), f"{command}: says bf16, but {config.group(1)} pins {precision!r}"
            checked.append(command.source)
    # README's one-GPU and every-GPU lines say bf16: a rule that matches none of them checks nothing
    assert len(checked) >= 2 and any(source.startswith("README.md:") for source in checked), checked


def test_metrics_table_lists_what_training_writes(sandbox: Path):
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `metrics.jsonl`"))
    documented = set(re.findall(r"[a-z_][a-z0-9_]*", row.split("one line per epoch:")[1]))
    written = set(json.loads((sandbox / "runs" / RUN_NAME / "metrics.jsonl").read_text().splitlines()[0]))
    assert documented == written, f"README lacks {written - documented}, has extra {documented - written}"


def test_no_file_cites_notes_outside_the_repository():
    name = "REFERENCE" + ".md"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    citing = [
        path
        for path in tracked
        if (ROOT / path).is_file()
        and not (ROOT / path).is_symlink()
        and name in (ROOT / path).read_text(errors="ignore")
    ]
    assert not citing, f"{citing} cite {name}, which is not part of the repository (state the fact and its source)"
