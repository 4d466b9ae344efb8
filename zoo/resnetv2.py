"""Pre-activation ResNet ("ResNet v2"): norm and ReLU before each conv, a clean identity path through every block.

Paper:
    He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", arXiv:1603.05027 (2016). The full
    pre-activation unit of Fig. 4(e): BN-ReLU-conv three times, added to an untouched shortcut; a projection
    shortcut, where one is needed, reads the pre-activated input; a final BN-ReLU follows the last stage. As in the
    timm models whose weights load here, the stride sits on the 3x3 conv. The paper trains ResNet-152/200 on
    ImageNet and reports no table for 50 and 101 layers, so no paper counts are set.

Weights: timm ``resnetv2_50.a1h_in1k`` and ``resnetv2_101.a1h_in1k`` (timm's ``resnetv2.py``, BatchNorm and plain
convs); no torchvision weights exist. Native keys are timm's but for two, which :func:`convert_timm` maps: timm's
``stages`` (a method of this zoo's contract) is ``layers`` here, and its 1x1-conv classifier is a linear layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, StateDict, register_model
from zoo.layers import BatchNormAct2d, DropPath, make_divisible

__all__ = ["PreActBottleneck", "ResNetV2", "convert_timm"]


class DownsampleConv(nn.Module):
    """Projection shortcut of a pre-activation block: a strided 1x1 conv on the already normalised input."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
        self.norm = nn.Identity()  # timm's slot: pre-activation needs no norm after the projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1, plus the shortcut (paper Fig. 4(e), bottleneck form)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        mid_chs = make_divisible(out_chs * 0.25)
        self.downsample = DownsampleConv(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm2 = BatchNormAct2d(mid_chs)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, bias=False)
        self.norm3 = BatchNormAct2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the last conv so each block starts as the identity."""
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return self.drop_path(x) + shortcut


class ResNetStage(nn.Module):
    """The blocks of one stage, under ``blocks`` as in timm's state dict."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                PreActBottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, drop_paths[i])
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Holds the classifier as ``head.fc`` (timm's key); pooling and dropout run in ``forward_head``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = linear_or_identity(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ResNetV2(Backbone):
    """Pre-activation ResNet with bottleneck blocks.

    Args:
        layers: blocks per stage.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks (Huang et al. 2016).
        zero_init_last: zero each block's last conv.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        # No norm in the stem: the first block's norm1 pre-activates its output.
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False))
        self.stem.add_module("pool", nn.MaxPool2d(3, 2, 1))
        self.feature_info = [FeatureInfo(64, 4)]

        total = sum(layers)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        in_chs, reduction, stages = 64, 4, []
        for i, depth in enumerate(layers):
            out_chs, stride = 256 * 2**i, 1 if i == 0 else 2
            stages.append(ResNetStage(in_chs, out_chs, stride, depth, rates[:depth]))
            rates, in_chs, reduction = rates[depth:], out_chs, reduction * stride
            self.feature_info.append(FeatureInfo(out_chs, reduction))
        # timm calls this ``stages``, which is the contract's method here, hence ``layers`` and convert_timm.
        self.layers = nn.Sequential(*stages)
        self.norm = BatchNormAct2d(in_chs)  # the pre-activation of the (absent) next block
        self.num_features = in_chs
        self.head = ClassifierHead(in_chs, num_classes)
        self._init_weights(zero_init_last)
        # The final norm closes the last stage, so its output is what forward_features returns.
        last = len(stages) - 1
        self.set_stages("stem", *(f"layers.{i}" for i in range(last)), StageGroup(self, f"layers.{last}", "norm"))

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # a second pass: modules() visits a block before its convs
            if zero_init_last and isinstance(m, PreActBottleneck):
                m.zero_init_last()

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.fc = linear_or_identity(self.num_features, num_classes)


def convert_timm(state_dict: StateDict) -> StateDict:
    """timm ResNetV2 checkpoint -> native keys.

    ``stages.{i}.`` becomes ``layers.{i}.`` (``stages`` is the contract's method name) and the 1x1-conv classifier
    ``head.fc`` becomes a linear layer; every other key (``stem.conv``, ``norm``) is timm's own.
    """
    sd = {}
    for key, value in state_dict.items():
        if key.startswith("stages."):
            key = "layers." + key.removeprefix("stages.")
        elif key == "head.fc.weight" and value.ndim == 4:
            assert value.shape[2:] == (1, 1), f"head.fc.weight: expected a 1x1 conv, got {tuple(value.shape)}"
            value = value.flatten(1)
        sd[key] = value
    return sd


_V2 = dict(
    family="resnetv2",
    paper="Identity Mappings in Deep Residual Networks",
    arxiv="1603.05027",
    year=2016,
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    crop_pct=0.95,
    first_conv="stem.conv",
    classifier="head.fc",
    min_size=32,
    convert_timm=convert_timm,
)


@register_model(**_V2, num_params=25_549_352, timm="resnetv2_50.a1h_in1k", aliases=("preact_resnet50", "resnet50v2"))
def resnetv2_50(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-50: [3, 4, 6, 3] bottlenecks."""
    return ResNetV2((3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_V2, num_params=44_541_480, timm="resnetv2_101.a1h_in1k", aliases=("preact_resnet101", "resnet101v2"))
def resnetv2_101(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-101: [3, 4, 23, 3] bottlenecks."""
    return ResNetV2((3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)
