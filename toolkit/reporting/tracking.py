"""Weights & Biases tracking that can never stop or slow down training.

W&B is a convenience on top of the local run folder (config.yaml, logs, metrics, report),
which stays the source of truth. So every failure here - wandb not installed, no network,
a bad entity, an exception inside a log call - turns into ONE warning line and tracking
goes quiet; the training loop never sees an exception from this module.

Modes (``tracking.wandb``): ``online``, ``offline``, ``disabled`` and ``auto`` (online when an
API key is configured - ``WANDB_API_KEY`` or a netrc entry for the W&B host - else offline;
``WANDB_MODE`` in the environment wins over ``auto``). Online falls back to offline, offline
to disabled. ``disabled`` never imports wandb.

We call ``wandb.init(config=...)`` ourselves instead of going through Accelerate's tracker,
whose offline mode has dropped the config (accelerate #3607). The W&B files live inside the
run folder (``RUN/wandb/offline-run-*``); upload an offline run later with ``wandb sync``.

What W&B keeps on disk: the key is never written in offline mode (tested), console capture is
off (our own log file already has the console, and a stray secret printed there stays out of
W&B), code and requirements saving are off. Git state and system metadata (host, GPU, the
command line) are kept: do not pass secrets on the command line. ``finish()`` also shuts
W&B's background service down, because in offline mode ``run.finish()`` can return before the
run's ``.wandb`` file is written; afterwards the folder is complete and ready for ``wandb sync``.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlparse

from toolkit.config import WANDB_MODES
from toolkit.evaluation.metrics import as_arrays, curve_points, decision_metrics, decision_rule, predict
from toolkit.fileio import atomic_write_text
from toolkit.formats import MONITORS, RunDir
from toolkit.redaction import redact_secrets, redact_text

# How long an online wandb.init may take before we give up and log offline instead.
ONLINE_INIT_TIMEOUT_S = 20.0
OFFLINE_INIT_TIMEOUT_S = 60.0
# How long finish() may wait for an online run's last uploads (the model file included).
FINISH_TIMEOUT_S = 900.0
EPOCH_STEP = "epoch/epoch"  # the x-axis of every epoch/* chart
# run summary: the best of every train.monitor candidate, not the last (a sweep's metric reads it)
BEST_OF_RUN = {f"epoch/{name}": mode for name, mode in MONITORS.items()}
MODEL_ALIASES = ("best", "latest")  # the model file is the best epoch's; it is also this run's newest version

# ---------------------------------------------------------------------------------------------
# Mode resolution
# ---------------------------------------------------------------------------------------------


def wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"


def has_api_key() -> bool:
    """True when W&B could log in without asking: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    candidates = [os.environ.get("NETRC"), Path.home() / ".netrc", Path.home() / "_netrc"]
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(wandb_host())
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def resolve_mode(setting: str) -> str:
    """Turn ``tracking.wandb`` into online/offline/disabled (never imports wandb)."""
    setting = str(setting).lower()
    if setting not in WANDB_MODES:
        raise ValueError(f"tracking.wandb must be one of {', '.join(WANDB_MODES)}, got {setting!r}")
    if setting != "auto":
        return setting
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode == "disabled":
        return "disabled"
    return "online" if has_api_key() else "offline"


# ---------------------------------------------------------------------------------------------
# Tracker
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """``sys.argv`` with secrets (a token in data.shards, a key in an override) redacted, while W&B reads it."""
    original = list(sys.argv)
    sys.argv[1:] = [redact_text(arg) for arg in original[1:]]
    try:
        yield
    finally:
        sys.argv[:] = original


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _short(err: BaseException) -> str:
    """One line naming the exception, secrets removed, at most 200 characters."""
    text = " ".join(str(err).split())
    text = redact_secrets(f"{type(err).__name__}: {text}" if text else type(err).__name__)
    return text if len(text) <= 200 else text[:197] + "..."


class Tracker:
    """One W&B run per training run, on the main process only; a no-op everywhere else.

    Every public method is safe to call in any state: when tracking is off it returns at once,
    and an exception inside W&B is caught, warned about once per method, and counted.
    """

    def __init__(
        self,
        cfg: Any,
        run: RunDir,
        config: dict,
        *,
        is_main: bool,
        run_name: str,
        resume: bool = False,
        echo: Callable[[str], None] = _stderr,
        init_timeout: float = ONLINE_INIT_TIMEOUT_S,
    ) -> None:
        self.run = run
        self._resume_id = self._saved_run_id() if resume else None
        self.mode = "disabled"
        self._echo = echo
        self._wandb = None
        self._run = None
        self._dataset_artifact: Optional[str] = None
        self._last_step = -1
        self._failed: dict[str, int] = {}
        self._result: Optional[dict] = None
        self.init_seconds = 0.0
        self.finish_seconds = 0.0
        if not is_main:
            return
        try:
            wanted = resolve_mode(cfg.wandb)
        except ValueError as err:
            self._warn(f"{err}; W&B tracking is off, local logs continue")
            return
        if wanted == "disabled":
            return
        started = time.perf_counter()
        self._start(wanted, cfg, config, run_name, init_timeout)
        self.init_seconds = time.perf_counter() - started

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._run is not None

    def _warn(self, message: str) -> None:
        self._echo(f"warning: {message}")

    def _start(self, wanted: str, cfg: Any, config: dict, run_name: str, init_timeout: float) -> None:
        # Before wandb is imported: no console chatter (we print what matters), and no error
        # telemetry to the W&B server - after a failed online init it probes the unreachable
        # server at exit and delays it by ~20 s. An explicit user setting wins.
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        try:
            import wandb
        except ImportError as err:
            missing = (
                "W&B is not installed (pip install wandb)"
                if err.name in (None, "wandb")
                else f"W&B cannot be imported ({_short(err)})"
            )
            self._warn(f"{missing}; tracking is off, local logs continue")
            return
        except Exception as err:  # a broken install (e.g. a protobuf mismatch) must not stop training
            self._warn(f"W&B cannot be imported ({_short(err)}); tracking is off, local logs continue")
            return
        self._wandb = wandb
        wandb_dir = self.run.wandb
        try:
            wandb_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._warn(f"cannot create {wandb_dir} ({_short(err)}); W&B tracking is off, local logs continue")
            return

        online_error: Optional[str] = None
        if wanted == "online" and not has_api_key():
            # wandb.init would prompt for a key on a terminal and wait forever.
            online_error = "no API key: set WANDB_API_KEY or run `wandb login`"
            wanted = "offline"
        for mode in ["online", "offline"] if wanted == "online" else ["offline"]:
            try:
                self._run = self._init(
                    mode, cfg, config, run_name, init_timeout if mode == "online" else OFFLINE_INIT_TIMEOUT_S
                )
                self.mode = mode
                break
            except Exception as err:  # wandb raises CommError, UsageError, TimeoutError, ...
                if mode == "online":
                    online_error = _short(err)
                    continue
                reason = f"online: {online_error}; offline: {_short(err)}" if online_error else _short(err)
                self._warn(f"W&B could not start ({reason}); tracking is off, local logs continue")
                return
        self._call("define_metric", self._define_metrics)
        try:
            atomic_write_text(self._run_id_file, self._run.id)
        except Exception as err:  # only resuming into the same W&B run depends on it
            self._warn(
                f"cannot record the W&B run id in {self._run_id_file} ({_short(err)}); a resumed run "
                "will start a new W&B run"
            )
        if online_error is not None:
            self._warn(
                f"W&B online init failed ({online_error}); logging offline to "
                f"{self.sync_dir} instead, upload later with: wandb sync {self.sync_dir}"
            )

    def _define_metrics(self) -> None:
        """Epoch charts over the epoch number; the run summary keeps the best val figures, not the last."""
        run = self._run
        run.define_metric(EPOCH_STEP)
        run.define_metric("epoch/*", step_metric=EPOCH_STEP)
        for key, best in BEST_OF_RUN.items():
            run.define_metric(key, step_metric=EPOCH_STEP, summary=best)

    @property
    def _run_id_file(self) -> Path:
        return self.run.wandb_run_id

    def _saved_run_id(self) -> Optional[str]:
        """The W&B run id this run folder logged to before, so a resumed run continues that W&B run."""
        try:
            run_id = self._run_id_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return run_id if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id) else None

    def _init(self, mode: str, cfg: Any, config: dict, run_name: str, timeout: float):
        wandb = self._wandb
        wanted = {
            "init_timeout": timeout,
            "finish_timeout": FINISH_TIMEOUT_S,  # online: stop waiting for uploads; `wandb sync` redoes them
            "silent": True,  # no banner or per-step chatter; we print what matters
            "console": "off",  # our log file has the console; keeps stray secrets out of W&B
            "disable_code": True,
            "save_code": False,
            "x_save_requirements": False,
        }
        known = getattr(wandb.Settings, "model_fields", None)  # older wandb lacks some of these
        settings = wandb.Settings(**{k: v for k, v in wanted.items() if known is None or k in known})
        with redacted_argv():  # W&B stores the command line with the run
            return self._wandb_init(mode, cfg, config, run_name, settings)

    def _wandb_init(self, mode: str, cfg: Any, config: dict, run_name: str, settings: Any):
        wandb = self._wandb
        return wandb.init(
            mode=mode,
            project=cfg.project,
            entity=getattr(cfg, "entity", None) or None,
            tags=redact_secrets(list(getattr(cfg, "tags", None) or [])) or None,
            group=redact_text(getattr(cfg, "group", None) or "") or None,
            name=redact_text(run_name),
            dir=str(self.run.root.resolve()),
            config=redact_secrets(dict(config)),
            job_type="train",
            settings=settings,
            # a resumed run appends to its W&B run (offline too: `wandb sync` replays both parts in order)
            **({"id": self._resume_id, "resume": "allow"} if self._resume_id else {}),
        )

    @property
    def sync_dir(self) -> Optional[Path]:
        """The W&B run folder (``RUN/wandb/offline-run-*`` when offline)."""
        if self._run is None:
            return None
        try:
            return Path(self._run.settings.sync_dir).resolve()
        except Exception:
            return None

    def finish(self) -> dict:
        """Close the run (idempotent) and say where it went: mode, run_dir, sync_command, url."""
        if self._result is not None:
            return self._result
        run_dir = self.sync_dir
        url = None
        if self._run is not None and self.mode == "online":
            url = self._call("finish", lambda: self._run.url)
        if self._run is not None:
            started = time.perf_counter()
            self._call("finish", lambda: self._run.finish())
            # In offline mode run.finish() can return before wandb-core has written the run's
            # .wandb file; shutting the service down waits for it, so the run folder is complete
            # (and `wandb sync`-able) when we return. The toolkit has one W&B run per process.
            self._call("finish", self._wandb.teardown)
            self.finish_seconds = time.perf_counter() - started
            self._run = None
        failed = sum(self._failed.values())
        if failed:
            self._warn(
                f"{failed} W&B logging call(s) failed ("
                + ", ".join(f"{name}: {n}" for name, n in sorted(self._failed.items()))
                + "); the local run folder has everything"
            )
        offline = self.mode == "offline" and run_dir is not None
        self._result = {
            "mode": self.mode,
            "run_dir": str(run_dir) if run_dir is not None else None,
            "sync_command": f"wandb sync {run_dir}" if offline else None,
            "url": url,
            "failed_calls": failed,
        }
        return self._result

    # -- logging ----------------------------------------------------------------------------

    def _failure(self, what: str, message: str) -> None:
        """Count a failed or dropped call; only the first of each kind is printed."""
        self._failed[what] = self._failed.get(what, 0) + 1
        if self._failed[what] == 1:
            self._warn(f"{message}; later ones are counted, not printed, and training continues")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one W&B call; an exception becomes a counted failure, never a crash."""
        if self._run is None:
            return None
        try:
            return fn()
        except Exception as err:
            self._failure(what, f"W&B {what} failed ({_short(err)})")
            return None

    def log(self, metrics: dict, step: int) -> None:
        """Log scalars at ``step`` (the optimizer step, so the axis is monotonic)."""
        if self._run is None:
            return
        if step < self._last_step:
            self._failure(
                "log (step went backwards)",
                f"W&B log at step {step} after step {self._last_step} "
                "was dropped: log with the optimizer step, which only grows",
            )
            return
        self._last_step = step
        self._call("log", lambda: self._run.log(_plain(metrics), step=step))

    def last_received_step(self) -> int:
        """The highest step this W&B run holds from its earlier parts (-1: none): online the step the server
        resumes at, offline read back from the earlier parts' ``.wandb`` files (a kill loses what was unwritten)."""
        if self._run is None or self._resume_id is None:
            return -1
        if self.mode == "online":
            return int(self._call("last_received_step", lambda: self._run.starting_step) or 0) - 1
        from toolkit.reporting.wandb_runs import last_step

        parts = self.run.wandb.glob(f"*run-*-{self._resume_id}/run-{self._resume_id}.wandb")
        try:
            return last_step(sorted(p for p in parts if p.parent.resolve() != self.sync_dir))
        except Exception as err:  # an unreadable earlier part: send everything again rather than lose steps
            self._warn(f"cannot read the earlier W&B parts ({_short(err)}); sending every local step row")
            return -1

    def _log_at_last_step(self, what: str, data: Callable[[], dict]) -> None:
        step = max(self._last_step, 0)
        self._last_step = step
        self._call(what, lambda: self._run.log(data(), step=step))

    def log_images(self, images: Mapping[str, Path]) -> None:
        """Log PNG files (plots from the report) as W&B images."""
        if self._run is None:
            return
        wandb = self._wandb
        self._log_at_last_step("log_images", lambda: {name: wandb.Image(str(path)) for name, path in images.items()})

    def log_curves(
        self, labels: Sequence[int], probs: Any, class_names: Sequence[str], split: str, threshold: float = 0.5
    ) -> None:
        """Native W&B ROC, precision-recall and confusion-matrix charts for one split.

        ``probs``: the class probabilities [N, C]. One ROC and one PR curve per scored class (one
        vs rest; two classes: the positive class), and the confusion matrix of ``metrics.predict``
        (``threshold`` applies to two classes).

        The curves are the charts ``wandb.plot.roc_curve``/``pr_curve`` draw (same Vega spec),
        computed here with scikit-learn because those two functions require pandas, which the
        toolkit does not otherwise need.
        """
        if self._run is None:
            return
        wandb = self._wandb

        def charts() -> dict:
            names = list(class_names)
            y_true, scores = as_arrays(labels, probs, f"{split} curves")
            if scores.shape[1] != len(names):
                raise ValueError(f"{split}: probabilities {scores.shape} for {len(names)} classes")
            decided = decision_metrics(y_true, scores, threshold, names)
            out = {
                f"{split}/confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=y_true.tolist(),
                    preds=predict(scores, threshold).tolist(),
                    class_names=names,
                    title=f"{split} confusion matrix ({decision_rule(decided)})",
                )
            }
            roc, pr = curve_points(y_true, scores, names)
            if roc:
                out[f"{split}/roc_curve"] = wandb.plot_table(
                    "wandb/area-under-curve/v0",
                    wandb.Table(columns=["class", "fpr", "tpr"], data=roc),
                    {"x": "fpr", "y": "tpr", "class": "class"},
                    {
                        "title": f"{split} ROC",
                        "x-axis-title": "False positive rate",
                        "y-axis-title": "True positive rate",
                    },
                )
                out[f"{split}/pr_curve"] = wandb.plot_table(
                    "wandb/area-under-curve/v0",
                    wandb.Table(columns=["class", "recall", "precision"], data=pr),
                    {"x": "recall", "y": "precision", "class": "class"},
                    {"title": f"{split} precision-recall", "x-axis-title": "Recall", "y-axis-title": "Precision"},
                )
            return out

        self._log_at_last_step("log_curves", charts)

    def log_predictions_table(
        self, rows: Sequence[dict], images: Optional[Sequence[Any]] = None, key: str = "test/predictions"
    ) -> None:
        """A W&B table of predictions (one row per image), with the image when given."""
        if self._run is None:
            return
        wandb = self._wandb

        def table() -> dict:
            if images is not None and len(images) != len(rows):
                raise ValueError(f"{len(rows)} rows but {len(images)} images")
            columns: list[str] = []
            for row in rows:
                columns.extend(name for name in row if name not in columns)
            data = []
            for i, row in enumerate(rows):
                values = [_plain(row.get(name)) for name in columns]
                if images is not None:
                    values.insert(0, wandb.Image(images[i]))
                data.append(values)
            return {key: wandb.Table(columns=(["image"] if images is not None else []) + columns, data=data)}

        self._log_at_last_step("log_predictions_table", table)

    def log_dataset_summary(self, info: dict) -> None:
        """The shard manifest summary (counts per split, hashes) as part of the run config."""
        self._call(
            "log_dataset_summary",
            lambda: self._run.config.update({"dataset": _plain(redact_secrets(info))}, allow_val_change=True),
        )

    def log_dataset_artifact(self, summary: dict, manifest: Optional[Path]) -> None:
        """The shards as a ``dataset`` artifact (their info.json, with sha256 of every shard) this run trained on.

        Online it is the run's input (``use_artifact``), so W&B draws the lineage shards -> run ->
        model. W&B cannot record an input offline, so an offline run logs it as an output instead and
        the model artifact names it in its metadata.
        """
        if self._run is None:
            return
        wandb = self._wandb

        def log() -> None:
            name = "shards-" + re.sub(r"[^A-Za-z0-9_.-]", "-", str(summary.get("dataset") or "pets"))
            artifact = wandb.Artifact(name=name, type="dataset", metadata=_plain(redact_secrets(summary)))
            if manifest is not None:
                artifact.add_file(str(manifest), name=manifest.name)
            if self.mode == "online":
                self._run.use_artifact(artifact)
            else:
                self._run.log_artifact(artifact)
            self._dataset_artifact = name

        self._call("log_dataset_artifact", log)

    def log_model(self, path: Path, metadata: dict) -> None:
        """Attach model.safetensors as a model artifact.

        The file is referenced, not copied ("immutable" policy): an offline run uploads it at
        ``wandb sync`` time, so keep RUN/model.safetensors until then.
        """
        if self._run is None:
            return
        wandb = self._wandb

        def upload() -> None:
            extra = {"dataset_artifact": self._dataset_artifact} if self._dataset_artifact else {}
            artifact = wandb.Artifact(
                name=f"model-{self._run.id}", type="model", metadata=_plain(redact_secrets({**metadata, **extra}))
            )
            artifact.add_file(str(path), name=Path(path).name, policy="immutable")
            self._run.log_artifact(artifact, aliases=list(MODEL_ALIASES))

        self._call("log_model", upload)

    def summary(self, values: dict) -> None:
        """Final figures (best epoch, test metrics) in the run summary."""
        self._call("summary", lambda: self._run.summary.update(_plain(redact_secrets(values))))


def _plain(obj: Any) -> Any:
    """Numpy/torch scalars, arrays and Paths -> plain Python values W&B can serialize."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):  # an array with more than one element
            pass
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    return obj
