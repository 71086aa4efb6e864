"""Train recipes on the same shards, with the same budget and several seeds, and compare them on test.

    python -m toolkit.compare_recipes --shards shards/pets --epochs 30 --seeds 0 1 2 \\
        train.mixed_precision=bf16 model.channels_last=true                  # a GPU
    python -m toolkit.compare_recipes --shards /tmp/mini-shards --epochs 16 --seeds 0 1 2 \\
        data.image_size=48 data.resize_size=55 data.num_workers=1 eval.plots=false   # a small CPU

Every run is ``python -m toolkit.train`` in its own process (a fresh Accelerate state, its memory
given back, its log in ``OUT/runs/<recipe>-seed<N>/train.log``), one after another. The overrides
after the flags apply to both recipes, then the tool sets what makes the comparison fair: the
shards, the epochs, the seed and the test split. Each recipe picks its best epoch on val; the
official test split, which neither recipe trains on, gives the numbers. The table shows the mean
and the standard deviation over seeds, so a margin can be read against the spread. ``--reuse``
keeps finished runs whose saved config equals the planned one: an interrupted comparison goes on
where it stopped, and a third recipe or another seed costs only its own runs.

No run folder is ever deleted or reused for another run: a run that must be trained afresh gets a
new folder (``<recipe>-seed<N>``, else ``<recipe>-seed<N>-2``, ``-3``, ...) that this process
created itself with an exclusive ``mkdir``, so two comparisons into the same ``--out`` at once
never write, or remove, each other's runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli, single_value_flags
from toolkit.config import (
    SHIPPED_CONFIGS,
    load_config,
    resolve_config,
    split_config_args,
    to_dict,
    validate_config,
)
from toolkit.data import check_shards_exist, check_split_has_samples, load_info, split_size
from toolkit.errors import DataError, UsageError
from toolkit.evaluation.metrics import format_number, reports_top_k
from toolkit.fileio import atomic_write_json, atomic_write_text
from toolkit.formats import RunDir, version_of, versioned_name
from toolkit.redaction import redact_secrets, redact_text
from toolkit.reporting.recipe_comparison import markdown_tables, summarize, verdicts
from toolkit.reporting.wandb_spec import SPEC_FILE, check_project, make_report

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds this toolkit package (a checkout or site-packages)
DEFAULT_CONFIGS = (
    SHIPPED_CONFIGS / "oxford_pets_binary_resnet101.yaml",
    SHIPPED_CONFIGS / "oxford_pets_binary_resnet101_strong.yaml",
)
DEFAULT_NAMES = ("seed", "strong")
# Before the user's overrides, so they can be changed: a machine without W&B must just work, runs that are
# never resumed need no resumable checkpoints (ResNet-101 + Adam state is ~0.5 GB per save), and the shards
# decide the class count, so the binary recipes compare as well on the 37 breeds or a team's own folder.
DEFAULT_OVERRIDES = ("tracking.wandb=disabled", "train.checkpoint_every_epochs=0", "model.num_classes=null")
TABLE_MD, TABLE_JSON = "comparison.md", "comparison.json"
RUN_RECORD = "compare_run.json"  # per run: the wall time, for a later --reuse
LOG_TAIL_LINES = 15


@dataclass
class Recipe:
    name: str
    config: Path


@dataclass
class RunResult:
    recipe: str
    seed: int
    run_dir: str
    values: dict  # flat numbers for the table
    per_class: dict  # classification-report rows: {row: {"precision", "recall", "f1", "support"}}
    test_metrics: dict  # the run's eval/<split>/metrics.json, minus per-breed rows


# ---------------------------------------------------------------------------------------------
# Running


def run_overrides(args: argparse.Namespace, shared: Sequence[str], recipe: str, seed: int) -> list[str]:
    """Defaults <- the user's shared overrides <- what the comparison must hold fixed (W&B groups runs by recipe)."""
    tracking = ["tracking.wandb=auto", f"tracking.project={args.wandb_report}"] if args.wandb_report else []
    # output.run_name: train_one then sets the folder it claimed (this name, or a -2, -3 version of it)
    return [
        *DEFAULT_OVERRIDES,
        *tracking,
        *shared,
        f"data.shards={args.shards}",
        f"train.epochs={args.epochs}",
        f"train.seed={seed}",
        f"eval.test_split={args.split}",
        "train.resume=null",
        f"output.dir={args.out / 'runs'}",
        f"output.run_name={run_name(recipe, seed)}",
        f"tracking.group={recipe}",
    ]


def run_name(recipe: str, seed: int) -> str:
    return f"{recipe}-seed{seed}"  # wandb_report groups runs by this name (a -2, -3 version suffix included)


def run_versions(runs: Path, name: str) -> list[Path]:
    """The folders of earlier runs of ``name`` in ``runs``: NAME, NAME-2, NAME-3, ..., newest first."""
    found = [(version_of(name, p.name), p) for p in runs.glob(f"{name}*")]
    return [path for version, path in sorted((f for f in found if f[0]), key=lambda item: item[0], reverse=True)]


def claim_run_dir(runs: Path, name: str) -> Path:
    """A new, empty run folder, NAME or else the first free NAME-2, NAME-3, ..., created by this process.

    ``mkdir`` without ``exist_ok`` is atomic: of two comparisons asking at once, one gets the folder and
    the other the next name. An existing folder is never emptied, replaced or written into.
    """
    runs.mkdir(parents=True, exist_ok=True)
    version = 1
    while True:
        path = runs / versioned_name(name, version)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            version += 1


def check_plan(args: argparse.Namespace, recipes: Sequence[Recipe], shared: Sequence[str]) -> None:
    """Fail in seconds, not after the first hour of training: every config resolves, the shards are there."""
    info = load_info(args.shards)
    if args.split not in info["splits"]:
        raise UsageError(f"--split {args.split!r} is not in the shards (they have: {', '.join(info['splits'])})")
    check_shards_exist(args.shards, info, ["train", "val", args.split])
    check_split_has_samples(args.shards, info, args.split, "--split")
    for recipe in recipes:
        resolve_config(
            validate_config(load_config(recipe.config, run_overrides(args, shared, recipe.name, args.seeds[0]))), info
        )


def planned_config(recipe: Recipe, overrides: Sequence[str], shards: str) -> dict:
    """The config as the run will save it: the class count and normalization statistics resolved from the
    shards as training does."""
    return to_dict(resolve_config(validate_config(load_config(recipe.config, overrides)), load_info(shards)))


def reusable(run_dir: Path, planned: dict, split: str) -> bool:
    """Whether an earlier run in ``run_dir`` can stand for this one: it finished and evaluated ``split``
    with exactly the resolved config this run would get (recipe, overrides, seed, epochs, shards)."""
    if not RunDir(run_dir).has_results(split):
        return False
    planned = {**planned, "output": {**planned["output"], "run_name": run_dir.name}}  # NAME-2 is still NAME
    planned = redact_secrets(planned)  # as training saved it: a pipe: command's credentials masked
    try:
        return to_dict(load_config(RunDir(run_dir).config)) == planned
    except (UsageError, OSError, ValueError):  # unreadable, or written by a version with other keys
        return False


def find_reusable(args: argparse.Namespace, recipe: Recipe, seed: int, overrides: Sequence[str]) -> Optional[Path]:
    """The newest finished run of this recipe and seed whose saved config is the planned one, if any."""
    runs = args.out / "runs"
    versions = run_versions(runs, run_name(recipe.name, seed)) if runs.is_dir() else []
    if not versions:
        return None
    planned = planned_config(recipe, overrides, args.shards)
    return next((path for path in versions if reusable(path, planned, args.split)), None)


def train_one(args: argparse.Namespace, recipe: Recipe, seed: int, shared: Sequence[str], label: str) -> RunResult:
    """One training run in a child process; its output goes to train.log, its epoch lines to the console."""
    overrides = run_overrides(args, shared, recipe.name, seed)
    found = find_reusable(args, recipe, seed, overrides) if args.reuse else None
    if found is not None:
        record = found / RUN_RECORD
        wall = json.loads(record.read_text())["wall_seconds"] if record.is_file() else None
        result = collect_run(found, recipe.name, seed, args.split, wall)
        print(
            f"[{label}] {recipe.name} seed {seed}: reused the finished run in {found} (same config): test "
            f"ROC-AUC {format_number(result.values['roc_auc'])} accuracy {format_number(result.values['accuracy'])}",
            flush=True,
        )
        return result
    run_dir = claim_run_dir(args.out / "runs", run_name(recipe.name, seed))  # never an earlier run's folder
    overrides = [*overrides, f"output.run_name={run_dir.name}"]
    command = [sys.executable, "-m", "toolkit.train", "--config", str(recipe.config), *overrides]
    # the child imports this checkout's toolkit whatever the working folder (relative paths stay the user's)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", PYTHONPATH=python_path)
    log_path = run_dir / "train.log"
    print(f"[{label}] {recipe.name} seed {seed}: training ({log_path})", flush=True)
    started = time.perf_counter()
    tail: list[str] = []
    # line-buffered log, so that `tail -f train.log` follows the run
    with (
        open(log_path, "w", encoding="utf-8", buffering=1) as log,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child,
    ):
        log.write(redact_text(" ".join(command)) + "\n")
        for line in child.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-LOG_TAIL_LINES:]
            if line.startswith(("epoch ", "warning", "error")):
                print(f"    {line.rstrip()}", flush=True)
        code = child.wait()
    wall = time.perf_counter() - started
    if code != 0:
        print("\n".join(f"    | {line}" for line in tail), file=sys.stderr, flush=True)
        raise DataError(
            f"{recipe.name} seed {seed} failed (exit {code}); its last lines are above, the whole log is {log_path}"
        )
    atomic_write_json(run_dir / RUN_RECORD, {"wall_seconds": wall})
    result = collect_run(run_dir, recipe.name, seed, args.split, wall)
    print(
        f"[{label}] {recipe.name} seed {seed}: test ROC-AUC {format_number(result.values['roc_auc'])} "
        f"accuracy {format_number(result.values['accuracy'])} (best val epoch {result.values['best_epoch']}) "
        f"in {wall / 60:.1f} min",
        flush=True,
    )
    return result


def collect_run(run_dir: Path, recipe: str, seed: int, split: str, wall_seconds: Optional[float]) -> RunResult:
    """The numbers of one finished run, from the files the training run wrote."""
    run = RunDir(run_dir)
    metrics_file = run.eval_metrics(split)
    if not metrics_file.is_file():
        raise DataError(f"{run_dir} has no {metrics_file.relative_to(run_dir)}: the run did not evaluate {split!r}")
    test = json.loads(metrics_file.read_text())
    final = run.read_final()
    epochs = run.read_history()
    per_class = {name: test["per_class"][name] for name in test["class_names"]}
    per_class["macro avg"] = test["macro_avg"]
    per_class["weighted avg"] = test["weighted_avg"]
    values = {
        "roc_auc": test.get("roc_auc"),
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "loss": test.get("loss"),
        "macro_f1": test["macro_avg"]["f1"],
        "weighted_f1": test["weighted_avg"]["f1"],
        "best_val_auc": final.get("best_val_auc"),
        "best_epoch": final.get("best_epoch"),
        "train_minutes": sum(row["epoch_seconds"] for row in epochs) / 60,
        "wall_minutes": None if wall_seconds is None else wall_seconds / 60,
    }
    if reports_top_k(test):
        values["top5_accuracy"] = test["top5_accuracy"]
    return RunResult(recipe, seed, str(run_dir), values, per_class, {k: v for k, v in test.items() if k != "per_breed"})


def machine_description() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(
        prog="toolkit.compare_recipes",
        description="Train two recipes (default: the seed reproduction and the strong recipe) on the same shards "
        "with the same epochs and seeds, then compare them on the test split side by side. "
        "Config overrides (section.key=value) after the flags apply to every run.",
        epilog="example: python -m toolkit.compare_recipes --shards shards/pets --epochs 30 --seeds 0 1 2 "
        "train.mixed_precision=bf16 model.channels_last=true",
    )
    parser.add_argument("--shards", required=True, help="shard folder with info.json (the same for every run)")
    parser.add_argument("--epochs", type=int, required=True, help="epochs for every run (the same budget for both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        help="recipe configs, baseline first (default: the seed and the strong ResNet-101 configs)",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="a short name per config for the table (default: seed strong for the default configs, "
        "else the file names)",
    )
    parser.add_argument("--split", default="test", help="split the table reports (default: test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="output folder: runs/ (one folder per run; earlier runs are kept, a new run of the "
        "same recipe and seed gets NAME-2, NAME-3, ...), comparison.md, comparison.json "
        "(default: runs/compare)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the finished runs in --out whose saved config equals the one planned (to finish "
        "an interrupted comparison, or add a recipe or a seed); the others are trained afresh",
    )
    parser.add_argument(
        "--wandb-report",
        default=None,
        metavar="PROJECT",
        help="log the runs to this W&B project (offline without a key) and end by building the W&B "
        "Report of the comparison (python -m toolkit.wandb_report; saved online, else its spec)",
    )
    flags, overrides = split_config_args(list(sys.argv[1:] if argv is None else argv), single_value_flags(parser))
    args = parser.parse_args(flags)
    if args.wandb_report is not None:
        check_project(args.wandb_report)
    if args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs} must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give distinct seeds")
    if args.names is None:
        is_default = [c.resolve() for c in args.configs] == [c.resolve() for c in DEFAULT_CONFIGS]
        args.names = list(DEFAULT_NAMES) if is_default else [c.stem for c in args.configs]
    if len(args.names) != len(args.configs):
        raise UsageError(
            f"--names gives {len(args.names)} name(s) for {len(args.configs)} config(s); give one per config"
        )
    if len(set(args.names)) != len(args.names) or any(not n or "/" in n for n in args.names):
        raise UsageError(f"--names {' '.join(args.names)} must be distinct and contain no '/'")
    for path in args.configs:
        if not path.is_file():
            raise UsageError(f"config {str(path)!r} not found; pass existing YAML files to --configs")
    args.configs = [c.resolve() for c in args.configs]
    args.out = args.out.resolve()
    if "://" not in args.shards and not args.shards.startswith("pipe:"):  # a local folder: the same for every run
        args.shards = str(Path(args.shards).resolve())
    return args, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, shared = parse_args(argv)
    recipes = [Recipe(name, config) for name, config in zip(args.names, args.configs)]
    check_plan(args, recipes, shared)
    args.out.mkdir(parents=True, exist_ok=True)
    total = len(recipes) * len(args.seeds)
    print(
        f"comparing {', '.join(r.name for r in recipes)} on {redact_text(args.shards)}: {args.epochs} epochs x seeds "
        f"{' '.join(map(str, args.seeds))} = {total} runs, one at a time; results in {args.out}",
        flush=True,
    )
    started = time.perf_counter()
    results: dict[str, list[RunResult]] = {r.name: [] for r in recipes}
    done = 0
    for seed in args.seeds:  # seed-major: an interrupted comparison still has pairs of runs
        for recipe in recipes:
            done += 1
            results[recipe.name].append(train_one(args, recipe, seed, shared, f"{done}/{total}"))

    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m toolkit.compare_recipes " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(),
        "shards": args.shards,
        "split": args.split,
        "test_samples": split_size(load_info(args.shards), args.split),
        "epochs": args.epochs,
        "seeds": list(args.seeds),
        "overrides": list(shared),
        "total_minutes": (time.perf_counter() - started) / 60,
        "recipes": {
            r.name: {
                "config": str(r.config),
                "summary": summarize(results[r.name]),
                "runs": [
                    {
                        "seed": x.seed,
                        "run_dir": x.run_dir,
                        "values": x.values,
                        "per_class": x.per_class,
                        "test_metrics": x.test_metrics,
                    }
                    for x in results[r.name]
                ],
            }
            for r in recipes
        },
    }
    report["verdicts"] = verdicts(args.names, {n: report["recipes"][n]["summary"] for n in args.names}, args.split)
    for key in ("command", "shards", "overrides"):  # a shard location or an override may hold credentials
        report[key] = redact_secrets(report[key])
    table = markdown_tables(report)
    atomic_write_json(args.out / TABLE_JSON, report)
    atomic_write_text(args.out / TABLE_MD, table)
    print("\n" + table, flush=True)
    print(
        f"wrote {args.out / TABLE_MD} and {args.out / TABLE_JSON} ({report['total_minutes']:.1f} min in all)",
        flush=True,
    )
    if args.wandb_report:
        build_wandb_report(args, [Path(run.run_dir).name for name in args.names for run in results[name]])
    return 0


def build_wandb_report(args: argparse.Namespace, run_names: Sequence[str]) -> None:
    """The comparison's W&B Report, one group per recipe; a problem here is a warning, the table stands.

    The runs are named, not their groups: earlier runs of the same recipe kept in ``runs/`` stay out of it.
    """
    try:
        make_report(
            args.out / "runs",
            project=args.wandb_report,
            run_ids=list(run_names),
            out=args.out / SPEC_FILE,
        )
    except (UsageError, DataError) as err:
        print(f"warning: no W&B Report: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_cli(main)
