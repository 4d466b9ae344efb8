"""VGG: very deep plain stacks of 3x3 convolutions.

Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
arXiv:1409.1556, 2014 (ICLR 2015). Configurations A (``vgg11``), B (``vgg13``), D (``vgg16``) and E (``vgg19``)
of Table 1: five groups of 3x3 convs (64, 128, 256, 512, 512 channels), each closed by a 2x2 max-pool, then
FC-4096, FC-4096, FC-1000. The ``_bn`` variants add BatchNorm after every conv (not in the paper; torchvision's).
Parameter counts: the paper's Table 2 (133M, 133M, 138M, 144M for A, B, D, E); it reports no multiply-adds.

As in timm, the two FC-4096 layers are stored as convolutions (a 7x7 conv and a 1x1 conv, ``pre_logits``), so the
network is fully convolutional (the paper's Sec. 3.2 "dense" evaluation); features smaller than 7x7 are first
adaptively pooled up to 7x7, which is what torchvision's ``AdaptiveAvgPool2d((7, 7))`` does for inputs under 224.

Weights:
    * timm: ``vgg11.tv_in1k``, ``vgg13.tv_in1k``, ``vgg16.tv_in1k``, ``vgg19.tv_in1k`` and the ``_bn`` ones;
      module names mirror timm's (``features.N``, ``pre_logits.fc1/fc2``, ``head.fc``), so no remapping.
    * torchvision: ``vgg11`` ... ``vgg19_bn`` through :func:`convert_torchvision` (``classifier.0/3/6`` Linear
      layers reshaped into ``pre_logits.fc1``/``fc2`` convs and ``head.fc``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import StateDict, register_model

PAPER = "Very Deep Convolutional Networks for Large-Scale Image Recognition"

# Table 1 of the paper: conv widths, "M" a 2x2 max-pool
CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class ConvMlp(nn.Module):
    """The paper's FC-4096, FC-4096 as a 7x7 conv and a 1x1 conv (timm's ``ConvMlp`` keys ``fc1``, ``fc2``)."""

    def __init__(self, in_chs: int = 512, hidden: int = 4096, kernel_size: int = 7, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.fc1 = nn.Conv2d(in_chs, hidden, kernel_size, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Conv2d(hidden, hidden, 1, bias=True)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < self.kernel_size or x.shape[-1] < self.kernel_size:
            # small inputs: replicate the map up to the 7x7 window fc1 was trained on (torchvision's behaviour)
            x = F.adaptive_avg_pool2d(x, (max(self.kernel_size, x.shape[-2]), max(self.kernel_size, x.shape[-1])))
        return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))


class ClassifierHead(nn.Module):
    """Global average pool, dropout, linear (timm's ``ClassifierHead`` key layout: ``fc``)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = linear_or_identity(in_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


class VGG(Backbone):
    """VGG with conv-form fully connected layers.

    Five stages, one per conv group, each ending with its max-pool (reductions 2, 4, 8, 16, 32). The head is
    ``pre_logits`` (the two FC-4096 layers, so ``head_hidden_size`` is 4096 while ``num_features`` is 512) then
    ``head`` (pool, dropout, ``head.fc``, timm's keys). Each stage is a :class:`~zoo._backbone.StageGroup` over
    its slice of ``features``, so the keys stay ``features.N`` as in timm and torchvision.

    Args:
        cfg: conv widths and ``"M"`` pools (see :data:`CFGS`).
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        batch_norm: BatchNorm after every conv.
        drop_rate: dropout after FC-4096 #1 and before the classifier (the paper uses 0.5 for both).
    """

    def __init__(
        self,
        cfg: list[int | str],
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        layers: list[nn.Module] = []
        stage_ends: list[int] = []
        self.feature_info = []
        chs, reduction = in_chans, 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                reduction *= 2
                stage_ends.append(len(layers))
                self.feature_info.append(FeatureInfo(chs, reduction))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(chs, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            chs = v
        self.features = nn.Sequential(*layers)
        self.num_features = chs
        self.head_hidden_size = 4096
        self.pre_logits = ConvMlp(chs, self.head_hidden_size, 7, drop_rate=drop_rate)
        self.head = ClassifierHead(self.head_hidden_size, num_classes, drop_rate)

        # torchvision's (and timm's) init
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

        # One stage per conv group, closed by its max-pool; every cfg ends with a pool, so they cover ``features``.
        assert stage_ends[-1] == len(layers), "a VGG cfg ends with a max-pool"
        cuts = zip([0, *stage_ends[:-1]], stage_ends)
        self.set_stages(*(StageGroup(self, *(f"features.{i}" for i in range(a, b))) for a, b in cuts))

    def head_modules(self) -> list[nn.Module]:
        return [self.pre_logits, self.head]

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.fc = linear_or_identity(self.head_hidden_size, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(self.pre_logits(x), pre_logits=pre_logits)


# -- torchvision checkpoints --------------------------------------------------------------------------------------


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """Map a torchvision VGG state dict to native keys: ``classifier.0/3/6`` become conv-form ``pre_logits``.

    ``classifier.0`` acts on the flattened 512x7x7 map (channel-major, as ``torch.flatten`` orders it), so its
    (4096, 25088) weight is exactly a (4096, 512, 7, 7) conv kernel.
    """
    renames = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2", "classifier.6": "head.fc"}
    out: StateDict = {}
    for key, value in state_dict.items():
        prefix, _, suffix = key.rpartition(".")
        if key.startswith("features."):
            out[key] = value
        elif prefix in renames:
            new = f"{renames[prefix]}.{suffix}"
            if new == "pre_logits.fc1.weight":
                assert value.shape == (4096, 512 * 7 * 7), f"{key}: {tuple(value.shape)}"
                value = value.reshape(4096, 512, 7, 7)
            elif new == "pre_logits.fc2.weight":
                assert value.shape == (4096, 4096), f"{key}: {tuple(value.shape)}"
                value = value.reshape(4096, 4096, 1, 1)
            elif new == "head.fc.weight":
                assert value.ndim == 2 and value.shape[1] == 4096, f"{key}: {tuple(value.shape)}"
            out[new] = value
        else:
            raise KeyError(f"unexpected key {key!r} in a torchvision VGG state dict")
    return out


# -- builders -----------------------------------------------------------------------------------------------------

_COMMON: dict[str, Any] = dict(
    family="vgg",
    paper=PAPER,
    arxiv="1409.1556",
    year=2014,
    first_conv="features.0",
    classifier="head.fc",
    min_size=32,
    convert_torchvision=convert_torchvision,
)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, in_chans: int, **kwargs: Any) -> VGG:
    return VGG(CFGS[cfg], num_classes=num_classes, in_chans=in_chans, batch_norm=batch_norm, **kwargs)


@register_model(num_params=132_863_336, timm="vgg11.tv_in1k", torchvision="vgg11", paper_params=133_000_000, **_COMMON)
def vgg11(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration A of Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg11", False, num_classes, in_chans, **kwargs)


@register_model(num_params=133_047_848, timm="vgg13.tv_in1k", torchvision="vgg13", paper_params=133_000_000, **_COMMON)
def vgg13(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration B of Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg13", False, num_classes, in_chans, **kwargs)


@register_model(num_params=138_357_544, timm="vgg16.tv_in1k", torchvision="vgg16", paper_params=138_000_000, **_COMMON)
def vgg16(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration D of Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg16", False, num_classes, in_chans, **kwargs)


@register_model(num_params=143_667_240, timm="vgg19.tv_in1k", torchvision="vgg19", paper_params=144_000_000, **_COMMON)
def vgg19(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration E of Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg19", False, num_classes, in_chans, **kwargs)


@register_model(num_params=132_868_840, timm="vgg11_bn.tv_in1k", torchvision="vgg11_bn", **_COMMON)
def vgg11_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration A of Table 1, with BatchNorm after every conv.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg11", True, num_classes, in_chans, **kwargs)


@register_model(num_params=133_053_736, timm="vgg13_bn.tv_in1k", torchvision="vgg13_bn", **_COMMON)
def vgg13_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration B of Table 1, with BatchNorm after every conv.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg13", True, num_classes, in_chans, **kwargs)


@register_model(num_params=138_365_992, timm="vgg16_bn.tv_in1k", torchvision="vgg16_bn", **_COMMON)
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration D of Table 1, with BatchNorm after every conv.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg16", True, num_classes, in_chans, **kwargs)


@register_model(num_params=143_678_248, timm="vgg19_bn.tv_in1k", torchvision="vgg19_bn", **_COMMON)
def vgg19_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG configuration E of Table 1, with BatchNorm after every conv.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`VGG` options (``drop_rate``).
    """
    return _vgg("vgg19", True, num_classes, in_chans, **kwargs)
