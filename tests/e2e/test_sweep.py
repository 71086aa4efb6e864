"""configs/sweep.yaml works as shipped (issue 31, item 6): the command line W&B's agent builds from it
is accepted by the trainer and its values take effect, and its metric is a key the trainer logs.

The command line is built by wandb's own code, offline: ``create_sweep_command`` and
``create_sweep_command_args`` from ``wandb.sdk.launch.sweeps.utils``, substituted into the sweep's
``command`` the way ``wandb.wandb_agent.Agent._command_run`` does (``${env}`` -> /usr/bin/env,
``${interpreter}`` -> python, ``${args}`` -> ``--key=value`` per parameter).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from helpers import ENV, ROOT
from toolkit.formats import MONITORS, EpochRow
from toolkit.reporting.step_log import wandb_epoch_row
from toolkit.reporting.tracking import BEST_OF_RUN

sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")

SWEEP = ROOT / "configs" / "sweep.yaml"


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv W&B's agent starts for one trial with these parameter values."""
    command = sweep_utils.create_sweep_command(sweep.get("command"))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    argv: list[str] = []
    for chunk in map(str, command):
        macro = chunk.startswith("${") and chunk.endswith("}")
        argv += (sweep_vars.get(chunk[2:-1]) or []) if macro else [chunk]
    return argv


def trial_values(parameters: dict) -> dict:
    """One trial as the controller could pick it: each fixed ``value``, the first of ``values``, a range's ``max``."""
    return {
        name: spec["value"] if "value" in spec else spec["values"][0] if "values" in spec else spec["max"]
        for name, spec in parameters.items()
    }


def test_the_agents_command_line_sets_every_swept_value():
    sweep = yaml.safe_load(SWEEP.read_text())
    values = trial_values(sweep["parameters"])
    argv = agent_command(sweep, values)
    assert argv[:4] == ["/usr/bin/env", "python", "-m", "toolkit.train"]
    assert "--optimizer.lr=0.01" in argv and "--train.monitor=val_acc" in argv  # W&B's ${args} form
    env = {**ENV, "PATH": os.path.dirname(sys.executable) + os.pathsep + ENV["PATH"]}
    proc = subprocess.run([*argv, "--print-config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    base = yaml.safe_load((ROOT / argv[argv.index("--config") + 1]).read_text())
    for key, value in values.items():
        section, name = key.split(".")
        assert printed[section][name] == pytest.approx(value), key
    changed = [k for k, v in values.items() if base.get(k.split(".")[0], {}).get(k.split(".")[1]) != v]
    assert len(changed) >= 4, changed  # the trial really differs from the config it starts from
    assert printed["model"]["base_width"] == base["model"]["base_width"]  # the rest is the config's


def test_the_sweeps_metric_is_the_monitor_the_trainer_logs_and_summarises():
    sweep = yaml.safe_load(SWEEP.read_text())
    monitor = sweep["parameters"]["train.monitor"]["value"]
    metric, goal = sweep["metric"]["name"], sweep["metric"]["goal"]
    row = EpochRow(**{f.name: 0.5 for f in dataclasses.fields(EpochRow)})
    assert metric == f"epoch/{monitor}" and metric in wandb_epoch_row(dataclasses.asdict(row))
    direction = {"maximize": "max", "minimize": "min"}[goal]
    assert BEST_OF_RUN[metric] == MONITORS[monitor] == direction  # the run summary keeps the value the sweep wants
