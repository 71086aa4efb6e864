"""RUN/steps.csv: appended row by row, read back as numbers, a torn last line left out, and cut back to a
checkpoint's step on resume."""

from __future__ import annotations

from pathlib import Path

from toolkit.formats import RunDir
from toolkit.formats.run_dir import STEP_COLUMNS


def row(step: int) -> dict:
    return {"step": step, "epoch": step / 4, "loss": 1.0 / step, "lr": 1e-3, "img_per_s": 100.0, "data_wait": 0.25}


def test_rows_append_with_one_header_and_read_back(tmp_path: Path):
    run = RunDir(tmp_path)
    run.append_steps([row(1), row(2)])
    run.append_steps([row(3)])
    lines = run.steps.read_text().splitlines()
    assert lines[0] == ",".join(STEP_COLUMNS) and len(lines) == 4
    assert [r["step"] for r in run.read_steps()] == [1, 2, 3]
    assert abs(run.read_steps()[2]["loss"] - 1 / 3) < 1e-6


def test_a_line_torn_by_a_kill_is_left_out_and_resume_cuts_back_to_the_checkpoint(tmp_path: Path):
    run = RunDir(tmp_path)
    run.append_steps([row(s) for s in range(1, 7)])
    with open(run.steps, "a") as handle:
        handle.write("7,1.75,0.1")  # killed mid-line
    assert [r["step"] for r in run.read_steps()] == [1, 2, 3, 4, 5, 6]
    run.keep_steps_until(4)
    assert [r["step"] for r in run.read_steps()] == [1, 2, 3, 4]
    run.append_steps([row(5)])  # the resumed run logs step 5 again: once
    assert [r["step"] for r in run.read_steps()] == [1, 2, 3, 4, 5]
    assert run.steps.read_text().count("step,") == 1


def test_keep_steps_until_without_a_file_writes_nothing(tmp_path: Path):
    RunDir(tmp_path).keep_steps_until(10)
    assert not RunDir(tmp_path).steps.exists()


def test_a_step_row_that_cannot_be_written_is_warned_and_counted_not_raised(tmp_path: Path, capsys):
    from toolkit.reporting.step_log import StepLog

    class NoTracker:
        def log(self, metrics, step):
            pass

        def last_received_step(self):
            return -1

    run = RunDir(tmp_path / "gone")  # no such folder: every append fails
    steps = StepLog(
        run,
        NoTracker(),
        hold=False,
        is_main=True,
        tensorboard=False,
        images_per_step=8,
        total_steps=4,
        resume_step=None,
        echo=None,
    )
    for step in (1, 2):
        steps.log(step, step / 4, 0.5, 1e-3)
    steps.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: cannot append to {run.steps}") and len(err) == 2
    assert err[1] == f"warning: 2 step row(s) could not be written to {run.steps}"
