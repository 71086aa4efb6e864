"""The run folder (``runs/NAME/``): what training leaves behind and every later stage reads.

``RunDir`` names every file in it and reads and writes the typed results, so no module spells a
file name of its own; ``Predictions`` is the layout of ``eval/<split>/predictions.csv``. Described
for users in ``docs/architecture.md`` and the README.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from toolkit.errors import DataError
from toolkit.fileio import append_jsonl, atomic_write_json, atomic_write_text, dump_yaml, read_jsonl, read_yaml_mapping

EVAL_FORMAT_VERSION = 2  # 2: predictions.csv has one prob_<class> column per class for any class count
# steps.csv: one row per logged optimizer step (every train.log_every_steps and each epoch's last step).
# epoch is fractional (1.5: half way through the second epoch); img_per_s and data_wait (the share of the
# time spent waiting for data) cover the steps since the previous row.
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "img_per_s", "data_wait")


@dataclass(frozen=True)
class EpochRow:
    """One line of ``metrics.jsonl``: a finished epoch, as the loop writes it and the report and tests read it.

    Rows of older runs may lack later fields; readers use ``row.get(name)`` with the names in ``HISTORY_FIELDS``.
    """

    epoch: int
    step: int  # optimizer steps taken so far
    lr: float
    train_loss: float
    val_loss: float
    val_acc: float
    val_auc: Optional[float]  # None when the val split has a single class
    img_per_s: float  # training images per second over all processes
    data_wait_frac: float  # share of the epoch spent waiting for the loader
    epoch_seconds: float
    peak_mem_gib: Optional[float]  # None on a CPU
    skipped_samples: int  # train samples skipped this epoch (all processes)
    val_skipped_samples: int
    read_retries: int = 0  # remote shard reads retried after a transient fault (all processes)
    val_top5: Optional[float] = None  # top-5 accuracy; None for 5 classes or fewer (it would be 1.0)
    val_balanced_acc: Optional[float] = None  # mean per-class recall of the argmax predictions


HISTORY_FIELDS: tuple[str, ...] = tuple(EpochRow.__dataclass_fields__)
# The columns ``train.monitor`` may choose the best epoch (and stop early) by, with the direction that is better:
# the name is the metrics.jsonl column and, as ``epoch/<name>``, the W&B key.
MONITORS: dict[str, str] = {
    "val_auc": "max",
    "val_acc": "max",
    "val_top5": "max",
    "val_balanced_acc": "max",
    "val_loss": "min",
}


@dataclass
class Predictions:
    """One split's per-sample predictions, as ``eval/<split>/predictions.csv`` stores them.

    Columns ``key, label, pred, breed, prob_<class>...``: one probability per class, in class
    order, for any number of classes; ``pred`` is the predicted class index (``metrics.predict``).
    Version 1 files of two-class runs held one ``prob_<class 1>`` column after ``label``
    (P(class 0) is one minus it); they are still read.
    """

    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)  # [N][C] softmax probabilities
    preds: list[int] = field(default_factory=list)
    breeds: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["key", "label", "pred", "breed"] + [f"prob_{name}" for name in self.class_names])
        for key, label, row, pred, breed in zip(self.keys, self.labels, self.probs, self.preds, self.breeds):
            writer.writerow([key, int(label), int(pred), breed] + [f"{p:.6f}" for p in row])
        return buffer.getvalue()

    @classmethod
    def from_csv(cls, path: Path, class_names: Optional[list[str]] = None) -> "Predictions":
        """Read a predictions file; ``class_names`` (from metrics.json beside it) names both classes of a
        version 1 two-class file, whose header names only the positive one."""
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            prob_columns = [i for i, name in enumerate(header) if name.startswith("prob_")]
            if not {"key", "label"} <= set(header) or not prob_columns:
                raise DataError(f"{path} lacks key, label or prob_<class> columns; rerun python -m toolkit.evaluate")
            names = [header[i][len("prob_") :] for i in prob_columns]
            if len(names) == 1:  # version 1, two classes: P(class 1) only
                names = list(class_names) if class_names and len(class_names) == 2 else [f"not {names[0]}", names[0]]
            out = cls(class_names=names)
            at = {name: header.index(name) for name in ("key", "label", "pred", "breed") if name in header}
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(row[at["label"]])
                    probs = [float(row[i]) for i in prob_columns]
                    pred = int(row[at["pred"]]) if "pred" in at else None
                except (IndexError, ValueError):
                    raise DataError(f"{path}:{line}: bad label, prediction or probability in {row[:6]!r}") from None
                probs = [1.0 - probs[0], probs[0]] if len(probs) == 1 else probs
                out.labels.append(label)
                out.probs.append(probs)
                out.preds.append(pred if pred is not None else max(range(len(probs)), key=probs.__getitem__))
                out.keys.append(row[at["key"]])
                out.breeds.append(row[at["breed"]] if "breed" in at and at["breed"] < len(row) else "")
        return out


def versioned_name(base: str, version: int) -> str:
    """A run folder's name when ``base`` is taken: NAME, NAME-2, NAME-3, ... (training and compare_recipes alike)."""
    return base if version == 1 else f"{base}-{version}"


def version_of(base: str, name: str) -> Optional[int]:
    """Which ``versioned_name`` of ``base`` the folder ``name`` is (1 for NAME itself), or None."""
    found = re.fullmatch(re.escape(base) + r"(?:-(\d+))?", name)
    return int(found.group(1) or 1) if found else None


def _steps_text(rows: list[dict], header: bool) -> str:
    lines = [",".join(STEP_COLUMNS)] if header else []
    lines += [",".join(_step_value(row[name]) for name in STEP_COLUMNS) for row in rows]
    return "".join(line + "\n" for line in lines)


def _step_value(value) -> str:
    return str(value) if isinstance(value, int) else f"{float(value):.6g}"


@dataclass(frozen=True)
class RunDir:
    """Every file of a run folder, and the typed reads and writes of its results."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # what training writes
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"  # the resolved config, secrets redacted

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"  # the manifest's summary (see dataset_summary)

    @property
    def history(self) -> Path:
        return self.root / "metrics.jsonl"  # one row per finished epoch

    @property
    def steps(self) -> Path:
        return self.root / "steps.csv"  # one row per logged step (STEP_COLUMNS), with or without W&B

    @property
    def sample_keys(self) -> Path:
        # train.record_sample_keys (debugging): one JSON line per optimizer step,
        # {"epoch": 0-based, "step": global step, "keys": the step's sample keys, micro-batch j by j}
        return self.root / "sample_keys.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"  # TensorBoard event files (tracking.tensorboard)

    @property
    def final(self) -> Path:
        return self.root / "final.json"  # step, best epoch, per-rank weight checksums

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"  # the best epoch's weights (by val ROC-AUC)

    @property
    def last_model(self) -> Path:
        return self.root / "last.safetensors"  # the last epoch's weights

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"  # step-XXXXXXXX/ folders for resuming

    @property
    def lock(self) -> Path:
        return self.root / ".lock"  # "host pid" of the process writing the run (toolkit.training.run_folder)

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def wandb_run_id(self) -> Path:
        return self.wandb / "run_id.txt"  # a resumed run continues the same W&B run

    # what evaluation and reporting write
    @property
    def evaluations(self) -> Path:
        return self.root / "eval"  # one folder per evaluated split

    def eval_dir(self, split: str) -> Path:
        return self.evaluations / split

    def eval_metrics(self, split: str) -> Path:
        return self.eval_dir(split) / "metrics.json"

    def predictions(self, split: str) -> Path:
        return self.eval_dir(split) / "predictions.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # typed reads and writes
    def holds_a_run(self) -> bool:
        """Whether training already wrote here (other files, such as a launcher's log, do not count)."""
        return any(
            path.exists()
            for path in (self.config, self.history, self.model, self.last_model, self.checkpoints, self.final)
        )

    def evaluated_splits(self) -> list[str]:
        return sorted(p.parent.name for p in self.evaluations.glob("*/predictions.csv"))

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config, dump_yaml(config))

    def read_config(self) -> dict:
        """config.yaml as a plain dict ({} when absent, so file-only plots still work)."""
        return read_yaml_mapping(self.config) if self.config.is_file() else {}

    def write_dataset(self, summary: dict) -> None:
        atomic_write_json(self.dataset, summary)

    def read_dataset(self) -> dict:
        return json.loads(self.dataset.read_text(encoding="utf-8"))

    def read_history(self) -> list[dict]:
        return read_jsonl(self.history) if self.history.is_file() else []

    def append_history(self, row: EpochRow) -> None:
        append_jsonl(self.history, asdict(row))

    def keep_history_until(self, epoch: int) -> None:
        """Drop rows of epochs a resumed run will redo (they were written after its checkpoint)."""
        rows = self.read_history()
        atomic_write_text(self.history, "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= epoch))

    def append_steps(self, rows: list[dict]) -> None:
        """Add rows to steps.csv (the header first when the file is new); a row is one line, appended."""
        new = not self.steps.is_file() or self.steps.stat().st_size == 0
        with open(self.steps, "a", encoding="utf-8") as handle:
            handle.write(_steps_text(rows, header=new))
            handle.flush()

    def read_steps(self) -> list[dict]:
        """steps.csv's rows as numbers ([] when absent); a line torn by a kill mid-write is left out."""
        if not self.steps.is_file():
            return []
        rows = []
        with open(self.steps, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    rows.append({name: (int if name == "step" else float)(row[name]) for name in STEP_COLUMNS})
                except (TypeError, ValueError):
                    continue
        return rows

    def keep_steps_until(self, step: int) -> None:
        """Drop rows of steps a resumed run will redo (logged after its checkpoint), so each step stays once."""
        if self.steps.is_file():
            kept = [row for row in self.read_steps() if row["step"] <= step]
            atomic_write_text(self.steps, _steps_text(kept, header=True))

    def append_sample_keys(self, row: dict) -> None:
        append_jsonl(self.sample_keys, row)

    def read_sample_keys(self) -> list[dict]:
        return read_jsonl(self.sample_keys) if self.sample_keys.is_file() else []

    def keep_sample_keys_until(self, step: int) -> None:
        """Drop the rows of steps a resumed run will redo."""
        if self.sample_keys.is_file():
            rows = [r for r in self.read_sample_keys() if r["step"] <= step]
            atomic_write_text(self.sample_keys, "".join(json.dumps(r) + "\n" for r in rows))

    def write_final(self, final: dict) -> None:
        atomic_write_json(self.final, final)

    def read_final(self) -> dict:
        return json.loads(self.final.read_text(encoding="utf-8"))

    def write_evaluation(
        self, split: str, metrics: dict, predictions: Predictions, out_dir: Optional[Path] = None
    ) -> None:
        """``metrics.json`` + ``predictions.csv`` of one split (into ``out_dir`` when given)."""
        folder = Path(out_dir) if out_dir is not None else self.eval_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "predictions.csv", predictions.to_csv())
        atomic_write_json(folder / "metrics.json", {"format_version": EVAL_FORMAT_VERSION, **metrics})

    def read_metrics(self, split: str) -> dict:
        return json.loads(self.eval_metrics(split).read_text(encoding="utf-8"))

    def read_predictions(self, split: str) -> Predictions:
        try:  # the class names of a two-class file; a missing or torn metrics.json leaves the header's
            names = self.read_metrics(split).get("class_names")
        except (OSError, ValueError, AttributeError):
            names = None
        return Predictions.from_csv(self.predictions(split), names)

    def has_results(self, split: str) -> bool:
        return self.final.is_file() and self.eval_metrics(split).is_file()
