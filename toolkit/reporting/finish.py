"""The end of a training run: evaluate the best model, then plots, the HTML report and W&B.

Evaluation hands back in-memory results; everything here presents them. The best model is
loaded once and the predictions are passed on, not written and read back.
"""

from __future__ import annotations

from typing import Optional

from toolkit.data.samples import read_samples
from toolkit.evaluation.evaluate import EvalResult, evaluate_split, score
from toolkit.formats import RunDir
from toolkit.reporting.plots import TOP_PROBS, top_classes
from toolkit.reporting.report import build_report
from toolkit.reporting.tracking import Tracker
from toolkit.reporting.visualize import make_plots
from toolkit.formats.model_file import load_model_file

PREDICTION_TABLE_ROWS = 64


def finish_run(accelerator, cfg, info: dict, run: RunDir, mean, std, tracker: Tracker) -> dict:
    """The best model on val (which also tunes the threshold reported beside) and test; then report."""
    model, meta = load_model_file(run.model)
    model.to(accelerator.device)
    class_names = meta.get("class_names", ["cat", "dog"])
    results = {"val": evaluate_split(accelerator, model, cfg, info, "val", mean, std)}
    if cfg.eval.test_split:
        results[cfg.eval.test_split] = evaluate_split(accelerator, model, cfg, info, cfg.eval.test_split, mean, std)
    summary: dict = {"splits": {}}
    if not accelerator.is_main_process:
        return summary
    for name, result in results.items():
        metrics = score(result, threshold=cfg.eval.threshold, class_names=class_names,
                        tuning=results["val"] if name != "val" else None,
                        extra={"model_epoch": meta.get("epoch"), "synthetic": bool(info.get("synthetic"))})
        run.write_evaluation(name, metrics, result.predictions(), cfg.eval.threshold)
        summary["splits"][name] = metrics
        binary = len(class_names) == 2
        tracker.log_curves(result.labels, result.prob_dog if binary else result.probs, class_names, name)
        tracker.summary({f"{name}/{k}": metrics.get(k) for k in summary_keys(metrics)})
    shown = results.get(cfg.eval.test_split or "val")
    if cfg.eval.plots and shown is not None:
        plots = make_plots(run.root, split=shown.split, num_images=cfg.eval.num_images, shards=cfg.data.shards,
                           predictions=shown.predictions(), model_and_meta=(model.cpu(), meta))
        tracker.log_images({p.stem: p for p in plots})
    log_prediction_table(tracker, cfg, shown)
    summary["report"] = str(build_report(run.root))
    tracker.log_model(run.model, {k: v for k, v in meta.items() if k != "config"})
    return summary


def summary_keys(metrics: dict) -> tuple[str, ...]:
    """The metrics of a split that go into the W&B run summary as ``<split>/<key>``."""
    keys = ("accuracy", "roc_auc", "average_precision", "loss")
    return keys + (("top5_accuracy",) if "top5_accuracy" in metrics else ())


def prediction_rows(result: EvalResult, threshold: float, limit: int = PREDICTION_TABLE_ROWS) -> list[dict]:
    """The predictions table's rows for the first ``limit`` samples.

    Two classes: label, P(dog) and the thresholded prediction as numbers. More: ``pred`` is the
    predicted class's name (argmax) with its probability, and ``top3`` lists the three most
    probable classes.
    """
    names = list(result.class_names) or ["cat", "dog"]
    if len(names) == 2:
        return [{"key": key, "label": int(label), "prob_dog": float(prob), "pred": int(prob >= threshold),
                 "breed": breed}
                for key, label, prob, breed in zip(result.keys[:limit], result.labels, result.prob_dog, result.breeds)]
    rows = []
    for key, label, probs, breed in zip(result.keys[:limit], result.labels, result.probs, result.breeds):
        top = top_classes(probs, TOP_PROBS)
        rows.append({"key": key, "label": int(label), "true": names[int(label)], "pred": names[top[0][0]],
                     "prob_pred": top[0][1], "correct": top[0][0] == int(label),
                     "top3": ", ".join(f"{names[i]} {p:.3f}" for i, p in top), "breed": breed})
    return rows


def log_prediction_table(tracker: Tracker, cfg, result: Optional[EvalResult], limit: int = PREDICTION_TABLE_ROWS) -> None:
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
