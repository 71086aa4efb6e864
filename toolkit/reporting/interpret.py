"""Look inside a trained classifier: Grad-CAM, feature maps and learned filters.

Everything works on any ``nn.Module`` that has the named submodules (our ResNet and timm's
share ``conv1``, ``layer1``..``layer4``, ``fc``). Inspection never leaves a trace on the
model: hooks are removed and every module's train/eval mode is restored, even on error,
and Grad-CAM takes gradients with ``torch.autograd.grad`` so no parameter ``.grad`` is
touched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.evaluation.metrics import predict
from toolkit.reporting.plots import (
    RIGHT_COLOR,
    WRONG_COLOR,
    PathLike,
    denormalize,
    new_figure,
    prediction_title,
    save_figure,
    to_numpy,
)

DEFAULT_FEATURE_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
Target = Union[None, int, Sequence[int], torch.Tensor]


@contextlib.contextmanager
def inspection_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then every module's own mode back, even on error."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def get_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"model has no layer {name!r}; top-level layers are: {children}") from None


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _class_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logit of each sample's target class; a single-logit model scores class 1 as +logit, class 0 as -logit."""
    if logits.shape[1] == 1:
        return torch.where(target == 1, logits[:, 0], -logits[:, 0])
    return logits.gather(1, target[:, None])[:, 0]


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities [B, C] of every class: softmax, or [1 - p, p] from a single (sigmoid) logit."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1.0 - p, p], dim=1)
    return logits.softmax(dim=1)


def gradcam(model: nn.Module, images: torch.Tensor, layer: str = "layer4", target: Target = None) -> torch.Tensor:
    """Grad-CAM heat maps [B,H,W] in [0, 1] at the input resolution.

    ``target``: None explains each image's predicted class; an int or one class per image
    explains that class instead.
    """
    return explain(model, images, layer, target)[0]


def explain(
    model: nn.Module, images: torch.Tensor, layer: str = "layer4", target: Target = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps and the probabilities from the same forward pass, as (cams [B,H,W], probs).

    ``probs`` are the class probabilities [B, C] (``class_probabilities``). With ``target`` None
    each map explains the most probable class (for one logit, class 1 when it is positive).

    The hook hands the layer's output on as a detached leaf, so gradients stop there and
    the earlier layers cost no backward pass.
    """
    module = get_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def keep_activation(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Grad-CAM needs layer {layer!r} to return one tensor, got {type(output).__name__}")
        captured["activation"] = output.detach().requires_grad_(True)
        return captured["activation"].clone()  # a copy, so a following in-place op (ReLU) cannot touch the leaf

    handle = module.register_forward_hook(keep_activation)
    try:
        with inspection_mode(model), torch.enable_grad():
            images = images.to(_device(model))
            logits = model(images).float()
            if "activation" not in captured:
                raise RuntimeError(f"layer {layer!r} was not used in the forward pass")
            if target is None:
                classes = _predicted(logits)
            else:
                classes = torch.as_tensor(target, device=logits.device).long().expand(logits.shape[0])
            scores = _class_scores(logits, classes)
            activation = captured["activation"]
            (grads,) = torch.autograd.grad(scores.sum(), activation)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    span = high - low
    # a flat map (e.g. a 1x1 layer) has no location to show; rounding noise must not be stretched into one
    flat_map = span <= 1e-5 * high.abs().clamp_min(1e-12)
    cam = torch.where(flat_map, torch.zeros_like(cam), (cam - low) / span.clamp_min(1e-12))
    return cam.float().cpu(), class_probabilities(logits.detach()).cpu()


def select_examples(
    labels: Sequence[int], probs: Any, n: int = 8, *, threshold: float = 0.5, max_wrong: Optional[int] = None
) -> list[int]:
    """Indices to show: the most confident mistakes first, then confident correct ones, the classes taking turns.

    ``probs`` are the class probabilities [N, C]; the prediction is ``metrics.predict`` (``threshold``
    applies to two classes) and the confidence is the predicted class's probability.
    """
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64).reshape(len(y), -1)
    pred = predict(p, threshold)
    confidence = p[np.arange(len(y)), pred]
    order = np.lexsort((np.arange(len(y)), -confidence))  # most confident first, stable by index
    wrong = [int(i) for i in order if pred[i] != y[i]]
    right_by_class: dict[int, list[int]] = {}
    for i in order:
        if pred[i] == y[i]:
            right_by_class.setdefault(int(y[i]), []).append(int(i))
    queues = [right_by_class[c] for c in sorted(right_by_class)]
    right = [queue[r] for r in range(max(map(len, queues), default=0)) for queue in queues if r < len(queue)]
    chosen = wrong[: n if max_wrong is None else min(n, max_wrong)]
    chosen += right[: n - len(chosen)]
    if len(chosen) < n:  # not enough correct ones to fill up: more mistakes
        chosen += [i for i in wrong if i not in chosen][: n - len(chosen)]
    return chosen


def plot_gradcam(
    images: torch.Tensor,
    cams: torch.Tensor,
    labels: Sequence[int],
    probs: Any,
    path: PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    threshold: float = 0.5,
    layer: str = "layer4",
    captions: Optional[Sequence[str]] = None,
) -> Path:
    """Each image beside its Grad-CAM overlay, two examples per row; wrong predictions titled in red.

    ``probs``: the class probabilities [B, C] (what ``explain`` returns); titles show the prediction
    and the top classes.
    """
    pictures = denormalize(images, mean, std)
    heat = to_numpy(cams)
    n = len(pictures)
    rows = max(1, (n + 1) // 2)
    fig = new_figure(10.0, 3.1 * rows)
    for i in range(n):
        text, right = prediction_title(labels[i], probs[i], class_names, threshold)
        if captions is not None:
            text = f"{captions[i]}\n{text}"
        ax = fig.add_subplot(rows, 4, 2 * i + 1)
        ax.imshow(pictures[i])
        ax.set_title(text, fontsize=7, color=RIGHT_COLOR if right else WRONG_COLOR)
        ax.axis("off")
        ax = fig.add_subplot(rows, 4, 2 * i + 2)
        ax.imshow(pictures[i])
        ax.imshow(heat[i], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        explained = int(np.argmax(np.asarray(probs[i])))  # explain() targets the most probable class
        ax.set_title(f"Grad-CAM for {class_names[explained]}\n(the most probable class)", fontsize=7.5)
        ax.axis("off")
    fig.suptitle(f"Grad-CAM on {layer}: most confident mistakes first, then correct predictions")
    return save_figure(fig, path)


@torch.no_grad()
def feature_maps(
    model: nn.Module, image: torch.Tensor, layers: Sequence[str] = DEFAULT_FEATURE_LAYERS
) -> dict[str, torch.Tensor]:
    """The output [C,h,w] of each named layer for one image ([3,H,W] or [1,3,H,W])."""
    if image.dim() == 3:
        image = image[None]
    if image.shape[0] != 1:
        raise ValueError(f"feature_maps takes one image, got a batch of {image.shape[0]}")
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:

            def keep(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
                outputs[name] = output[0].detach().float().cpu().clone()  # later in-place ops must not change it

            handles.append(get_layer(model, name).register_forward_hook(keep))
        with inspection_mode(model):
            model(image.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[name] for name in layers if name in outputs}


def _normalize_each(x: np.ndarray) -> np.ndarray:
    """Min-max scale each item along the first axis to [0, 1]; flat items become 0.5."""
    flat = x.reshape(len(x), -1)
    low = flat.min(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    span = (flat.max(axis=1) - flat.min(axis=1)).reshape(low.shape)
    return np.where(span > 0, (x - low) / np.where(span > 0, span, 1.0), 0.5)


def plot_feature_maps(
    maps: dict[str, torch.Tensor],
    path: PathLike,
    *,
    image: Optional[np.ndarray] = None,
    channels: int = 8,
    title: str = "Feature maps (first channels, each scaled on its own)",
) -> Path:
    """One row per layer: the input image, then its first ``channels`` activation maps."""
    rows = max(1, len(maps))
    cols = channels + (1 if image is not None else 0)
    fig = new_figure(1.35 * cols + 0.6, 1.45 * rows + 0.5)
    for r, (name, activation) in enumerate(maps.items()):
        act = to_numpy(activation)
        shown = _normalize_each(act[:channels])
        offset = 0
        if image is not None:
            offset = 1
            if r == 0:  # the input once, top left; the column stays empty below it
                ax = fig.add_subplot(rows, cols, 1)
                ax.imshow(image)
                ax.set_title("input", fontsize=7)
                ax.axis("off")
        for c in range(min(channels, len(shown))):
            ax = fig.add_subplot(rows, cols, r * cols + offset + c + 1)
            ax.imshow(shown[c], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n{act.shape[0]}x{act.shape[1]}x{act.shape[2]}", fontsize=7)
            ax.set_title(f"ch {c}", fontsize=6)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def first_conv(module: nn.Module, *, spatial: bool = False) -> tuple[str, nn.Conv2d]:
    """The first Conv2d in ``module`` (itself included); with ``spatial`` the first one with a kernel > 1x1."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d) and (not spatial or max(sub.kernel_size) > 1):
            return name, sub
    raise ValueError("no matching Conv2d found" + (" with a kernel larger than 1x1" if spatial else ""))


def _tile_grid(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols


def plot_filters(
    model: nn.Module, path: PathLike, *, layer: str = "conv1", max_filters: int = 64, spatial: bool = False
) -> Path:
    """Learned filters of the first Conv2d under ``layer``, one tile each, normalized per filter.

    Filters over 3 input channels are drawn as RGB; deeper ones as the grayscale mean over
    their input channels. ``spatial`` skips 1x1 convs (a Bottleneck's first conv).
    """
    sub_name, conv = first_conv(get_layer(model, layer), spatial=spatial)
    full_name = f"{layer}.{sub_name}" if sub_name else layer
    weight = conv.weight.detach().float().cpu().numpy()[:max_filters]
    rgb = weight.shape[1] == 3
    tiles = _normalize_each(weight.transpose(0, 2, 3, 1) if rgb else weight.mean(axis=1))
    rows, cols = _tile_grid(len(tiles))
    fig = new_figure(max(3.6, 0.55 * cols + 0.4), max(2.2, 0.55 * rows + 0.8))
    for i, tile in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(tile, cmap=None if rgb else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.axis("off")
    kind = "RGB" if rgb else f"mean over {conv.weight.shape[1]} input channels"
    k = "x".join(str(s) for s in conv.kernel_size)
    fig.suptitle(f"{full_name}: first {len(tiles)} of {conv.weight.shape[0]} filters\n({k}, {kind})", fontsize=9)
    return save_figure(fig, path)
