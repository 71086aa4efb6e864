"""``python -m toolkit.bench <subcommand> ...``: run one benchmark and print its result as JSON.

Each subcommand is a module in this package exposing ``add_arguments(parser)`` and
``run(args) -> dict``; it is imported only when asked for, so one benchmark's heavy imports
(or absence) never slow down or break another. To add one, write the module and register
its name in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from types import ModuleType
from typing import Optional, Sequence

from toolkit.cli import ArgumentParser, run_cli
from toolkit.errors import UsageError
from toolkit.fileio import atomic_write_json

SUBCOMMANDS: dict[str, str] = {
    "model": "toolkit.bench.model",  # train-step img/s of our ResNet vs timm's
    "data": "toolkit.bench.data",  # decode + augment img/s of the input pipeline
    "shards": "toolkit.bench.shards",  # reading webdataset shards
    "e2e": "toolkit.bench.e2e",  # data pipeline feeding the model
}


def load_subcommand(name: str) -> ModuleType:
    module_path = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_path == err.name or module_path.startswith(err.name + ".")):
            raise UsageError(
                f"bench subcommand {name!r} is registered but its module {module_path} does not exist in this checkout"
            ) from None
        raise UsageError(
            f"bench subcommand {name!r} cannot be imported: {err}; install the missing package (pip install -e .)"
        ) from None
    missing = [attr for attr in ("add_arguments", "run") if not hasattr(module, attr)]
    if missing:
        raise UsageError(f"module {module_path} lacks {' and '.join(missing)}; a bench subcommand needs both")
    return module


def summary(name: str) -> str:
    """First docstring line of a subcommand, for the top-level --help (imports the module)."""
    try:
        doc = load_subcommand(name).__doc__ or ""
    except UsageError:
        return "(not available in this checkout)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        listing = "\n".join(f"  {name:<8} {summary(name)}" for name in SUBCOMMANDS)
        parser = ArgumentParser(
            prog="python -m toolkit.bench",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description="Run one benchmark and print its result as JSON.",
            epilog=f"subcommands:\n{listing}\n\n"
            "`python -m toolkit.bench <subcommand> --help` lists its options.\n"
            "example: python -m toolkit.bench model --arch resnet101 --device cuda "
            "--dtype bf16 --channels-last",
        )
        parser.add_argument("subcommand", choices=list(SUBCOMMANDS))
        parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the subcommand")
        if not argv:
            raise UsageError(f"name a benchmark: python -m toolkit.bench {{{','.join(SUBCOMMANDS)}}} [options]")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise UsageError(f"unknown bench subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}")
    module = load_subcommand(name)
    parser = ArgumentParser(
        prog=f"python -m toolkit.bench {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(rest)
    result = module.run(args)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    run_cli(main)
