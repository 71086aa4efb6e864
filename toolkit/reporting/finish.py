"""The end of a training run: evaluate the best model, then plots, the HTML report and W&B.

Evaluation hands back in-memory results; everything here presents them. The best model is
loaded once and the predictions are passed on, not written and read back.
"""

from __future__ import annotations

from typing import Optional

from toolkit.config import Config
from toolkit.data.samples import read_samples
from toolkit.evaluation.evaluator import EvalResult, evaluate_split, score
from toolkit.evaluation.metrics import predict, summary_values
from toolkit.formats import RunDir
from toolkit.models.sources import load_model_file
from toolkit.reporting.plots import TOP_PROBS, top_classes
from toolkit.reporting.report import build_report
from toolkit.reporting.run_plots import make_plots
from toolkit.reporting.tracking import Tracker

PREDICTION_TABLE_ROWS = 64


def finish_run(accelerator, cfg: Config, info: dict, run: RunDir, tracker: Tracker) -> dict:
    """The best model on val (which also tunes the threshold reported beside) and test; then report."""
    model, meta = load_model_file(run.model)
    model.to(accelerator.device)
    class_names = meta["class_names"]
    splits = ["val"] + ([cfg.eval.test_split] if cfg.eval.test_split else [])
    results = {
        split: evaluate_split(
            accelerator,
            model,
            cfg.data,
            info,
            split,
            batch_size=cfg.eval.batch_size,
            channels_last=cfg.model.channels_last,
            tta=cfg.eval.tta,
        )
        for split in splits
    }
    summary: dict = {"splits": {}}
    if not accelerator.is_main_process:
        return summary
    for name, result in results.items():
        metrics = score(
            result,
            threshold=cfg.eval.threshold,
            class_names=class_names,
            tuning=results["val"] if name != "val" else None,
            extra={"model_epoch": meta.get("epoch"), "synthetic": bool(info.get("synthetic"))},
        )
        run.write_evaluation(name, metrics, result.predictions(cfg.eval.threshold))
        summary["splits"][name] = metrics
        tracker.log_curves(result.labels, result.probs, class_names, name, threshold=cfg.eval.threshold)
        tracker.summary({f"{name}/{k}": v for k, v in summary_values(metrics).items()})
    shown = results.get(cfg.eval.test_split or "val")
    if cfg.eval.plots and shown is not None:
        plots = make_plots(
            run,
            split=shown.split,
            num_images=cfg.eval.num_images,
            shards=cfg.data.shards,
            predictions=shown.predictions(cfg.eval.threshold),
            model_and_meta=(model.cpu(), meta),
        )
        tracker.log_images({p.stem: p for p in plots})
    log_prediction_table(tracker, cfg, shown)
    summary["report"] = str(build_report(run))
    tracker.log_model(run.model, {k: v for k, v in meta.items() if k != "config"})
    return summary


def prediction_rows(result: EvalResult, threshold: float, limit: int = PREDICTION_TABLE_ROWS) -> list[dict]:
    """The predictions table's rows for the first ``limit`` samples: the true and predicted class
    (``metrics.predict``), the predicted class's probability and the top-3 classes."""
    names = list(result.class_names)
    probs = result.probs[:limit]
    preds = predict(probs, threshold) if len(probs) else []
    rows = []
    for key, label, row, pred, breed in zip(result.keys[:limit], result.labels, probs, preds, result.breeds):
        rows.append(
            {
                "key": key,
                "label": int(label),
                "true": names[int(label)],
                "pred": names[int(pred)],
                "prob_pred": float(row[int(pred)]),
                "correct": int(pred) == int(label),
                "top3": ", ".join(f"{names[i]} {p:.3f}" for i, p in top_classes(row, TOP_PROBS)),
                "breed": breed,
            }
        )
    return rows


def log_prediction_table(
    tracker: Tracker, cfg, result: Optional[EvalResult], limit: int = PREDICTION_TABLE_ROWS
) -> None:
    if result is None or not len(result.keys) or not tracker.active:
        return
    wanted = set(result.keys[:limit])
    images = {s["key"]: s["image"] for s in read_samples(cfg.data.shards, result.split, keys=wanted)}
    rows, pictures = [], []
    for row in prediction_rows(result, cfg.eval.threshold, limit):
        if row["key"] in images:
            rows.append(row)
            pictures.append(images[row["key"]])
    tracker.log_predictions_table(rows, pictures)
