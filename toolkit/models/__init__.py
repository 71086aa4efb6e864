"""Models: a hand-written ResNet family with timm/torchvision-compatible weight names."""

from toolkit.models.resnet import (
    MODEL_ARCHS,
    BasicBlock,
    Bottleneck,
    ResNet,
    architecture,
    count_parameters,
    create_model,
    model_summary,
)

__all__ = [
    "MODEL_ARCHS",
    "architecture",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "count_parameters",
    "create_model",
    "model_summary",
]
