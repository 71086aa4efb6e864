"""A hand-written ResNet family whose weights are interchangeable with timm's and torchvision's.

Parameter and buffer names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample.0/.1``,
``fc``) and shapes match ``timm.create_model("resnet101")`` and ``torchvision.models.resnet101``
exactly, so a state dict from either loads with ``strict=True`` in both directions. That is
what lets ``python -m toolkit.compare_timm`` prove this code equal to a reference
implementation, which the seed experiment's ResNet (stride on the 1x1 conv, stages named
layer2-layer5) never could be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut: the block of resnet18 and resnet34."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch; zeroing it makes the block start as identity."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision and timm: one activation-sized buffer less per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus a shortcut: the block of resnet50/101/152.

    The stride sits on the 3x3 conv ("ResNet v1.5", as in torchvision and timm) rather than on
    the first 1x1 conv as in the original paper: a strided 1x1 conv simply discards three
    quarters of its input positions, and v1.5 is measurably more accurate for the same cost.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch; zeroing it makes the block start as identity."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision and timm: one activation-sized buffer less per block
        return self.relu(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]
BLOCKS: dict[str, Block] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Stem (7x7 conv, BN, ReLU, 3x3 max-pool), four stages, global average pool, linear head.

    ``base_width`` is the channel count of the stem and of the first stage (64 in every standard
    ResNet); each later stage doubles it, so ``base_width=8`` gives a tiny model for tests.
    """

    def __init__(
        self,
        block: Block,
        blocks_per_stage: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        base_width: int = 64,
        zero_init_residual: bool = False,
        norm_layer: Optional[NormLayer] = None,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4 or any(int(n) < 1 for n in blocks_per_stage):
            raise ValueError(f"blocks_per_stage needs four positive counts, got {list(blocks_per_stage)}")
        self.norm_layer: NormLayer = norm_layer or nn.BatchNorm2d
        self.block = block
        self.blocks_per_stage = tuple(int(n) for n in blocks_per_stage)
        self.base_width = base_width
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.arch = "custom"  # create_model names the preset
        self.inplanes = base_width

        self.conv1 = nn.Conv2d(in_chans, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self.norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(base_width, self.blocks_per_stage[0], stride=1)
        self.layer2 = self._make_layer(base_width * 2, self.blocks_per_stage[1], stride=2)
        self.layer3 = self._make_layer(base_width * 4, self.blocks_per_stage[2], stride=2)
        self.layer4 = self._make_layer(base_width * 8, self.blocks_per_stage[3], stride=2)
        self.num_features = base_width * 8 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)
        self.init_weights(zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        # A projection shortcut only where the shape changes; identity everywhere else.
        downsample = None
        if stride != 1 or self.inplanes != planes * self.block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * self.block.expansion, stride),
                self.norm_layer(planes * self.block.expansion),
            )
        layers = [self.block(self.inplanes, planes, stride, downsample, self.norm_layer)]
        self.inplanes = planes * self.block.expansion
        layers += [self.block(self.inplanes, planes, norm_layer=self.norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def init_weights(self, zero_init_residual: bool = False) -> None:
        """Kaiming (fan_out, ReLU) convs and unit norms, as torchvision and timm do.

        ``zero_init_residual`` zeroes each residual branch's last norm so every block starts as
        the identity, which helps large-batch training (Goyal et al., 2017).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(m.last_norm, "weight", None) is not None:
                    nn.init.zeros_(m.last_norm.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The ``layer4`` feature map (N, num_features, H/32, W/32), e.g. for Grad-CAM."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the feature map and classify; ``pre_logits=True`` returns the pooled embedding."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass(frozen=True)
class ResNetSpec:
    block: str
    blocks_per_stage: tuple[int, int, int, int]


MODEL_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
}
MODEL_ARCHS: tuple[str, ...] = tuple(MODEL_SPECS)


def create_model(
    arch: str,
    num_classes: int = 1000,
    *,
    blocks_per_stage: Optional[Sequence[int]] = None,
    block: Optional[str] = None,
    base_width: int = 64,
    in_chans: int = 3,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build a preset (``resnet18`` .. ``resnet152``), optionally overriding its block type, depth or width.

    Bad arguments raise ``ValueError``; the commands report them in one line (``toolkit.errors.usage_errors``).
    """
    if arch not in MODEL_SPECS:
        raise ValueError(f"unknown model arch {arch!r}; choose one of: {', '.join(MODEL_ARCHS)}")
    spec = MODEL_SPECS[arch]
    block_name = spec.block if block is None else block
    if block_name not in BLOCKS:
        raise ValueError(f"unknown block {block_name!r}; choose one of: {', '.join(BLOCKS)}")
    stages = spec.blocks_per_stage if blocks_per_stage is None else tuple(blocks_per_stage)
    if len(stages) != 4 or any(not isinstance(n, int) or n < 1 for n in stages):
        raise ValueError(f"blocks_per_stage needs four positive integers (one per stage), got {list(stages)}")
    for name, value in (("num_classes", num_classes), ("base_width", base_width), ("in_chans", in_chans)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model = ResNet(
        BLOCKS[block_name],
        stages,
        num_classes=num_classes,
        in_chans=in_chans,
        base_width=base_width,
        zero_init_residual=zero_init_residual,
    )
    model.arch = arch  # the preset it was built from: a model file rebuilds it with create_model(arch, ...)
    return model


def architecture(model: ResNet) -> dict:
    """What ``create_model`` needs to rebuild ``model``: the model file's architecture keys."""
    return {
        "arch": model.arch,
        "block": next(name for name, cls in BLOCKS.items() if cls is model.block),
        "blocks_per_stage": list(model.blocks_per_stage),
        "base_width": model.base_width,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
    }


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_summary(model: ResNet) -> dict:
    """What to log or store beside a checkpoint so the architecture can be rebuilt and checked."""
    block_name = next(name for name, cls in BLOCKS.items() if cls is model.block)
    preset = next(
        (
            name
            for name, spec in MODEL_SPECS.items()
            if spec == ResNetSpec(block_name, model.blocks_per_stage) and model.base_width == 64
        ),
        None,
    )
    return {
        "arch": preset or "custom",
        "block": block_name,
        "blocks_per_stage": list(model.blocks_per_stage),
        "base_width": model.base_width,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "num_params": count_parameters(model),
        "num_trainable_params": count_parameters(model, trainable_only=True),
    }
