"""Console scripts: ``pets-train``, ``pets-make-shards``, ... (``pip install -e .`` puts them on PATH).

Each is the same command as ``python -m toolkit.NAME``, with the same one-line errors and exit codes.
The ``pets-`` prefix keeps them from clashing with other packages' commands. A command's module is
imported only when it runs, so ``pets-export --help`` does not load the training code.
"""

from __future__ import annotations

import importlib
from typing import Callable, NoReturn

from toolkit.cli import run_cli

COMMANDS = {
    "pets-make-shards": "toolkit.make_shards",
    "pets-train": "toolkit.train",
    "pets-evaluate": "toolkit.evaluate",
    "pets-predict": "toolkit.predict",
    "pets-visualize": "toolkit.visualize",
    "pets-quickstart": "toolkit.quickstart",
    "pets-export": "toolkit.export",
    "pets-wandb-report": "toolkit.wandb_report",
    "pets-compare-recipes": "toolkit.compare_recipes",
    "pets-compare-timm": "toolkit.compare_timm",
    "pets-bench": "toolkit.bench.__main__",
}


def _command(module: str) -> Callable[[], NoReturn]:
    def run() -> NoReturn:
        run_cli(importlib.import_module(module).main)

    run.__doc__ = f"python -m {module.removesuffix('.__main__')}"
    return run


make_shards = _command(COMMANDS["pets-make-shards"])
train = _command(COMMANDS["pets-train"])
evaluate = _command(COMMANDS["pets-evaluate"])
predict = _command(COMMANDS["pets-predict"])
visualize = _command(COMMANDS["pets-visualize"])
quickstart = _command(COMMANDS["pets-quickstart"])
export = _command(COMMANDS["pets-export"])
wandb_report = _command(COMMANDS["pets-wandb-report"])
compare_recipes = _command(COMMANDS["pets-compare-recipes"])
compare_timm = _command(COMMANDS["pets-compare-timm"])
bench = _command(COMMANDS["pets-bench"])
