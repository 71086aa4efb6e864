"""A finished run's plots (the command: ``toolkit.visualize``).

ROC, precision-recall, confusion matrix and training curves need only the run folder's files.
The prediction grid, Grad-CAM, feature maps and filters also need RUN/model.safetensors, and
all but the filters need the images, read from the shards named in config.yaml (or --shards).
A plot whose inputs are missing is skipped with one warning line; the others are still made.

Any number of classes takes the same path: one-vs-rest ROC/PR curves (two classes: the positive
class's curve; more: the worst few), a row-normalised confusion matrix and with it the per-class
accuracy chart per_class_accuracy_SPLIT.png; prediction grid and Grad-CAM titles show the
prediction and the top-3 probabilities.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch

from toolkit.config import eval_data_config, raw_section
from toolkit.data import build_eval_transform, read_samples
from toolkit.errors import DataError, UsageError
from toolkit.evaluation.metrics import as_arrays, decision_metrics, decision_rule, per_class_accuracy
from toolkit.formats import Predictions, RunDir
from toolkit.models.sources import load_model_file
from toolkit.reporting import interpret, plots

FILE_PLOTS = ("roc", "pr", "confusion", "curves")
MODEL_PLOTS = ("grid", "gradcam", "features", "filters")
ALL_PLOTS = FILE_PLOTS + MODEL_PLOTS
NEEDS_PREDICTIONS = ("roc", "pr", "confusion", "grid", "gradcam", "features")
NEEDS_IMAGES = ("grid", "gradcam", "features")
DEEP_FILTER_LAYER = "layer1"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def skip(name: str, why: str) -> None:
    warn(f"skipped {name} plot: {why}")


def _threshold(run: RunDir, split: str, config: dict) -> float:
    """The threshold the evaluation used: metrics.json's, else the config's, else 0.5."""
    try:
        value = run.read_metrics(split).get("threshold")
        if isinstance(value, (int, float)):
            return float(value)
    except (OSError, ValueError, AttributeError):
        pass
    value = raw_section(config, "eval").get("threshold")
    return float(value) if isinstance(value, (int, float)) else 0.5


def _shards_problem(shards: Optional[str]) -> Optional[str]:
    if not shards:
        return "no shards given (config.yaml has no data.shards); pass --shards DIR"
    remote = "://" in shards or shards.startswith("pipe:") or "{" in shards
    if not remote and not Path(shards).exists():
        return f"shards {shards!r} not found; pass --shards DIR"
    return None


# The two steps that need other modules, kept apart so tests can stand in for them.


def load_run_model(run: RunDir) -> tuple[Any, dict]:
    return load_model_file(run.model)


def load_images(shards: str, split: str, keys: set[str], meta: dict) -> dict[str, Any]:
    """Eval-transformed image tensors [3,H,W] by key, preprocessed exactly as the model saw them."""
    transform = build_eval_transform(eval_data_config(meta, "the model"))
    return {sample["key"]: transform(sample["image"]) for sample in read_samples(shards, split, keys=set(keys))}


def make_plots(
    run: RunDir,
    *,
    what: Optional[set[str]] = None,
    split: str = "test",
    num_images: int = 8,
    shards: Optional[str] = None,
    predictions: Optional[Predictions] = None,
    model_and_meta: Optional[tuple[Any, dict]] = None,
) -> list[Path]:
    """Write the requested plots into RUN/plots and return their paths; unmakeable ones are skipped with a warning.

    After training, ``finish_run`` passes the predictions and the model it already holds; the
    command reads them from the run folder.
    """
    if not run.root.is_dir():
        raise UsageError(f"run folder {str(run.root)!r} not found; pass a folder written by a training run (runs/NAME)")
    what = set(ALL_PLOTS) if what is None else set(what)
    unknown = what - set(ALL_PLOTS)
    if unknown:
        raise UsageError(f"unknown plot(s) {', '.join(sorted(unknown))}; choose from {','.join(ALL_PLOTS)} or all")
    config = run.read_config()
    if what & set(NEEDS_PREDICTIONS) and predictions is None:
        predictions = _read_predictions(run, split, sorted(what & set(NEEDS_PREDICTIONS), key=ALL_PLOTS.index))
        if predictions is None:
            what -= set(NEEDS_PREDICTIONS)
    threshold = _threshold(run, split, config)
    made = _file_plots(run, what, split, predictions, threshold)
    wanted = sorted(what & set(MODEL_PLOTS), key=ALL_PLOTS.index)
    if not wanted:
        return made
    try:
        model, meta = model_and_meta if model_and_meta is not None else load_run_model(run)
    except (UsageError, DataError, OSError, KeyError, ValueError) as err:
        for name in wanted:
            skip(name, f"cannot load the model: {err}")
        return made
    if "filters" in what:
        made += _filter_plots(model, run.plots)
    image_plots = [name for name in wanted if name in NEEDS_IMAGES]
    if not image_plots:
        return made
    problem = None
    if shards is None:
        shards = raw_section(config, "data").get("shards")
        if isinstance(shards, str) and shards.startswith("pipe:"):  # a run folder may come from anyone
            problem = (
                f"data.shards in {run.config} is a pipe: command, which is never run from a run folder's "
                "files; pass --shards to read the images"
            )
    problem = problem or ("num_images is 0" if num_images < 1 else _shards_problem(shards))
    if problem is not None:
        for name in image_plots:
            skip(name, problem)
        return made
    class_names = tuple(meta.get("class_names") or predictions.class_names)
    if len(class_names) != len(predictions.class_names):
        for name in image_plots:
            skip(
                name,
                f"the model predicts {len(class_names)} classes but the {split} predictions have "
                f"{len(predictions.class_names)}",
            )
        return made
    return made + _image_plots(
        model,
        meta,
        config,
        image_plots,
        predictions,
        split,
        num_images,
        threshold,
        class_names,
        str(shards),
        run.plots,
    )


def _read_predictions(run: RunDir, split: str, needing: list[str]) -> Optional[Predictions]:
    """The split's predictions from the run folder, or None after saying which plots that skips and why."""
    path = run.predictions(split)
    if path.is_file():
        try:
            found = run.read_predictions(split)
            problem = None if found.labels else f"{path} has no rows"
        except DataError as err:
            found, problem = None, str(err)
    else:
        evaluated = run.evaluated_splits()
        hint = (
            f" (evaluated splits: {', '.join(evaluated)}; use --split)"
            if evaluated
            else " (run python -m toolkit.evaluate first)"
        )
        found, problem = None, f"{path} not found{hint}"
    if problem is None:
        return found
    for name in needing:
        skip(name, problem)
    return None


def _file_plots(
    run: RunDir, what: set[str], split: str, predictions: Optional[Predictions], threshold: float
) -> list[Path]:
    """ROC, PR, confusion matrix (with per-class accuracy) and training curves: numbers only, no model or images."""
    made, out_dir = [], run.plots
    if predictions is not None and what & {"roc", "pr", "confusion"}:
        labels, probs, names = predictions.labels, predictions.probs, list(predictions.class_names)
        if "roc" in what:
            made.append(
                plots.plot_roc(
                    labels, probs, names, out_dir / f"roc_{split}.png", title=f"ROC curves ({split}, one vs rest)"
                )
            )
        if "pr" in what:
            made.append(
                plots.plot_pr(
                    labels,
                    probs,
                    names,
                    out_dir / f"pr_{split}.png",
                    title=f"Precision-recall curves ({split}, one vs rest)",
                )
            )
        if "confusion" in what:
            try:
                decided = decision_metrics(*as_arrays(labels, probs, "confusion"), threshold, names)
            except ValueError as err:
                skip("confusion", str(err))
            else:
                rule = decision_rule(decided)
                made.append(
                    plots.plot_confusion(
                        decided["confusion_matrix"],
                        out_dir / f"confusion_{split}.png",
                        class_names=names,
                        title=f"Confusion matrix ({split}; {rule})",
                    )
                )
                matrix = decided["confusion_matrix"]
                made.append(
                    plots.plot_per_class_accuracy(
                        per_class_accuracy(matrix, names),
                        out_dir / f"per_class_accuracy_{split}.png",
                        title=f"Accuracy per class ({split})",
                        overall=decided["accuracy"],
                    )
                )
    return made + _curves_plot(run, what)


def _curves_plot(run: RunDir, what: set[str]) -> list[Path]:
    if "curves" not in what:
        return []
    rows = run.read_history()
    if not rows:
        skip("curves", f"{run.history} {'is empty' if run.history.is_file() else 'not found'}")
        return []
    return [
        plots.plot_training_curves(rows, run.plots / "training_curves.png", title=f"Training curves ({run.root.name})")
    ]


def _filter_plots(model: Any, out_dir: Path) -> list[Path]:
    made = [interpret.plot_filters(model, out_dir / "filters_conv1.png", layer="conv1")]
    try:
        made.append(
            interpret.plot_filters(
                model,
                out_dir / f"filters_{DEEP_FILTER_LAYER}.png",
                layer=DEEP_FILTER_LAYER,
                spatial=True,
                max_filters=32,
            )
        )
    except ValueError as err:
        skip("deep filters", str(err))
    return made


def _image_plots(
    model: Any,
    meta: dict,
    config: dict,
    names: list[str],
    predictions: Predictions,
    split: str,
    num_images: int,
    threshold: float,
    class_names: tuple,
    shards: str,
    out_dir: Path,
) -> list[Path]:
    """Prediction grid, Grad-CAM and feature maps: pick examples, read just those images, plot."""
    scores = predictions.probs
    picks = {
        "grid": interpret.select_examples(
            predictions.labels, scores, num_images, threshold=threshold, max_wrong=num_images // 2
        ),
        "gradcam": interpret.select_examples(predictions.labels, scores, num_images, threshold=threshold),
        "features": interpret.select_examples(predictions.labels, scores, 1, threshold=threshold, max_wrong=0),
    }
    keys = {predictions.keys[i] for name in names for i in picks[name]}
    try:
        tensors = load_images(shards, split, keys, meta)
    except (UsageError, DataError, OSError, ValueError, ImportError) as err:
        for name in names:
            skip(name, f"cannot read images from {shards!r}: {err}")
        return []
    absent = sorted(keys - set(tensors))
    if absent:
        warn(
            f"{len(absent)} of {len(keys)} chosen {split} images not found in {shards!r} (e.g. {absent[0]}); "
            "they are left out of the image plots"
        )
    mean, std = meta["mean"], meta["std"]
    made = []
    for name in names:
        chosen = [i for i in picks[name] if predictions.keys[i] in tensors]
        if not chosen:
            skip(name, "none of its images were found")
            continue
        batch = torch.stack([tensors[predictions.keys[i]] for i in chosen])
        labels = [predictions.labels[i] for i in chosen]
        captions = [f"{predictions.keys[i]}" for i in chosen]
        if name == "grid":
            made.append(
                plots.plot_prediction_grid(
                    batch,
                    labels,
                    [scores[i] for i in chosen],
                    out_dir / f"predictions_{split}.png",
                    mean=mean,
                    std=std,
                    threshold=threshold,
                    class_names=class_names,
                    captions=captions,
                    title=f"{split}: predictions (most confident mistakes and correct ones; wrong in red)",
                )
            )
        elif name == "gradcam":
            layer = str(raw_section(config, "eval").get("gradcam_layer") or "layer4")
            cams, probs = interpret.explain(model, batch, layer=layer)  # titles: the model's view of these tensors
            made.append(
                interpret.plot_gradcam(
                    batch,
                    cams,
                    labels,
                    probs.tolist(),
                    out_dir / f"gradcam_{split}.png",
                    mean=mean,
                    std=std,
                    threshold=threshold,
                    class_names=class_names,
                    layer=layer,
                    captions=captions,
                )
            )
        else:
            maps = interpret.feature_maps(model, batch[0])
            made.append(
                interpret.plot_feature_maps(
                    maps,
                    out_dir / f"feature_maps_{split}.png",
                    image=plots.denormalize(batch[0], mean, std)[0],
                    title=f"Feature maps for {captions[0]} (first channels, each scaled on its own)",
                )
            )
    return made
