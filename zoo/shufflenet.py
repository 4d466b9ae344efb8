"""ShuffleNet v1 and v2.

Papers:

* v1: Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
  Devices", arXiv 1707.01083, 2017 (CVPR 2018). Units of Fig. 2 (c)/(b): 1x1 group conv, channel shuffle,
  3x3 depthwise conv, 1x1 group conv; stride-2 units concatenate a 3x3/2 average-pooled shortcut. Table 1 gives
  the stages (stage2/3/4 at 28/14/7, 4/8/4 units, output channels 144/288/576 (g=1), 200/400/800 (g=2),
  240/480/960 (g=3), 272/544/1088 (g=4), 384/768/1536 (g=8); bottlenecks are a quarter of the output; the first
  1x1 conv of stage 2 is not grouped) and the complexity at 1x: 143/140/137/133/137 MFLOPs for g = 1/2/3/4/8
  (``paper_macs``; the paper's "FLOPs" are multiply-adds). The paper reports no parameter counts for v1.
* v2: Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
  arXiv 1807.11164, 2018 (ECCV 2018). Units of Fig. 3 (c)/(d): channel split, 1x1 conv, 3x3 depthwise conv, 1x1
  conv on one half, concatenation and channel shuffle; stride-2 units process both halves. Table 5 gives the
  stages (24 stem channels, 4/8/4 units, widths 48/96/192 (0.5x), 116/232/464 (1x), 176/352/704 (1.5x),
  244/488/976 (2x), a final 1x1 conv to 1024 (2048 at 2x)), FLOPs 41/146/299/591M and weights 1.4/2.3/3.5/7.4M
  (``paper_macs``, ``paper_params``).

Weights: v2 loads torchvision's ``shufflenet_v2_x0_5``/``x1_0``/``x1_5``/``x2_0`` (``IMAGENET1K_V1``) through
:func:`convert_torchvision`, an explicit key map (torchvision's ``nn.Sequential`` indices to the named layers
here). v1 is native only (neither timm nor torchvision ship it).

Native layout: ``conv1`` (stem conv-BN-ReLU) and ``maxpool``, ``stage2``..``stage4`` (sequences of units), for v2
``conv5``, and the classifier ``fc``. A v1 unit holds ``pw1`` (grouped 1x1, ReLU), ``dw`` (3x3 depthwise, no ReLU:
Section 3.2), ``pw2`` (grouped 1x1); a v2 unit holds ``branch1`` (stride 2 only: ``dw``, ``pw``) and ``branch2``
(``pw1``, ``dw``, ``pw2``). Channel shuffle follows the paper's definition (``zoo.layers.channel_shuffle``).

Stages: ``[conv1 + maxpool, stage2, stage3, stage4]`` (v1) and ``[..., stage4, conv5]`` (v2); the head is global
average pooling and ``fc``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import IMAGENET_MEAN, IMAGENET_STD, StateDict, register_model
from zoo.layers import ConvNormAct, channel_shuffle

STAGE_REPEATS = (4, 8, 4)  # units in stage2, stage3, stage4 (both papers)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet v1 unit (Fig. 2 b/c): GConv 1x1 - shuffle - DWConv 3x3 - GConv 1x1, add or concat shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, group_first: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid = out_chs // 4
        # A stride-2 unit concatenates its input (average-pooled), so the branch makes only the new channels.
        branch_out = out_chs - in_chs if stride == 2 else out_chs
        self.pw1 = ConvNormAct(in_chs, mid, 1, groups=groups if group_first else 1)
        self.dw = ConvNormAct(mid, mid, 3, stride, groups=mid, act_layer=None)
        self.pw2 = ConvNormAct(mid, branch_out, 1, groups=groups, act_layer=None)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw1(x)
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.pw2(self.dw(out))
        if self.stride == 1:
            return F.relu(out + x)
        return F.relu(torch.cat((self.shortcut(x), out), 1))


class ShuffleV2Unit(nn.Module):
    """ShuffleNet v2 unit (Fig. 3 c/d): channel split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        chs = out_chs // 2
        self.branch1: nn.Module | None = None
        if stride > 1:
            self.branch1 = nn.Sequential(
                OrderedDict(
                    dw=ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs, act_layer=None),
                    pw=ConvNormAct(in_chs, chs, 1),
                )
            )
        self.branch2 = nn.Sequential(
            OrderedDict(
                pw1=ConvNormAct(in_chs if stride > 1 else chs, chs, 1),
                dw=ConvNormAct(chs, chs, 3, stride, groups=chs, act_layer=None),
                pw2=ConvNormAct(chs, chs, 1),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNet(Backbone):
    """ShuffleNet v1 (``version=1``, ``groups`` > 0) or v2 (``version=2``), stage widths given explicitly.

    Args:
        widths: output channels of the stem, stage2, stage3, stage4 and (v2) the final 1x1 conv.
        version: 1 or 2.
        groups: group count of v1's 1x1 convolutions (ignored by v2).
        num_classes: classifier width.
        in_chans: input channels.
        drop_rate: dropout before the classifier (the papers use none).
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        version: int,
        groups: int = 1,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.version = version
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = ConvNormAct(in_chans, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = [FeatureInfo(widths[0], 4)]
        in_chs = widths[0]
        for idx, (repeats, out_chs) in enumerate(zip(STAGE_REPEATS, widths[1:4])):
            units: list[nn.Module] = []
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                if version == 1:
                    # Section 3.3: stage 2's first pointwise conv is dense, its 24 input channels being too few.
                    units.append(ShuffleV1Unit(in_chs, out_chs, stride, groups, group_first=idx > 0 or i > 0))
                else:
                    units.append(ShuffleV2Unit(in_chs, out_chs, stride))
                in_chs = out_chs
            self.add_module(f"stage{idx + 2}", nn.Sequential(*units))
            self.feature_info.append(FeatureInfo(out_chs, 8 * 2**idx))
        self.conv5: nn.Module | None = None
        if version == 2:
            self.conv5 = ConvNormAct(in_chs, widths[4], 1)
            in_chs = widths[4]
            self.feature_info.append(FeatureInfo(in_chs, 32))
        self.num_features = in_chs
        self.fc = linear_or_identity(in_chs, num_classes)
        # conv1 and maxpool keep their top-level (torchvision-like) names; a StageGroup runs them as the stem.
        stem = StageGroup(self, "conv1", "maxpool")
        self.set_stages(stem, "stage2", "stage3", "stage4", *(["conv5"] if self.conv5 is not None else []))


# ---- torchvision (v2) ---------------------------------------------------------------------------------------------

_TV_BRANCH = {
    "branch1": {"0": "dw.conv", "1": "dw.bn", "2": "pw.conv", "3": "pw.bn"},
    "branch2": {"0": "pw1.conv", "1": "pw1.bn", "3": "dw.conv", "4": "dw.bn", "5": "pw2.conv", "6": "pw2.bn"},
}
_TV_TOP = {"conv1.0": "conv1.conv", "conv1.1": "conv1.bn", "conv5.0": "conv5.conv", "conv5.1": "conv5.bn", "fc": "fc"}
_TV_UNIT = re.compile(r"(stage[234]\.\d+)\.(branch[12])\.(\d)\.(\w+)")


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """Map torchvision's ``ShuffleNetV2`` state dict (``nn.Sequential`` indices) to the named native layers."""
    out: StateDict = {}
    for key, value in state_dict.items():
        prefix, _, suffix = key.rpartition(".")
        if prefix in _TV_TOP:
            new = f"{_TV_TOP[prefix]}.{suffix}"
        elif m := _TV_UNIT.fullmatch(key):
            unit, branch, idx, suffix = m.groups()
            if idx not in _TV_BRANCH[branch]:
                raise KeyError(f"unexpected key {key!r} in a torchvision shufflenet_v2 checkpoint")
            new = f"{unit}.{branch}.{_TV_BRANCH[branch][idx]}.{suffix}"
        else:
            raise KeyError(f"unexpected key {key!r} in a torchvision shufflenet_v2 checkpoint")
        if new.endswith("conv.weight"):
            # Depthwise convs have one input channel per filter and 3x3 kernels; pointwise ones 1x1 kernels.
            if ".dw." in new:
                assert value.shape[1:] == (1, 3, 3), f"{key}: {tuple(value.shape)} is not a 3x3 depthwise kernel"
            elif ".pw" in new or new.startswith("conv5."):
                assert value.shape[2:] == (1, 1), f"{key}: {tuple(value.shape)} is not a 1x1 kernel"
            else:
                assert value.shape[2:] == (3, 3), f"{key}: {tuple(value.shape)} is not the 3x3 stem kernel"
        out[new] = value
    return out


# ---- builders -----------------------------------------------------------------------------------------------------

_V1_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # Table 1: stage2 output channels at 1x
_V1_MACS = {1: 143_000_000, 2: 140_000_000, 3: 137_000_000, 4: 133_000_000, 8: 137_000_000}  # Table 1
_V1_META: dict[str, Any] = dict(
    family="shufflenet",
    paper="ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    arxiv="1707.01083",
    year=2017,
    timm=None,
    torchvision=None,
    input_size=(3, 224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv1.conv",
    classifier="fc",
    min_size=32,
    paper_input_size=(3, 224, 224),
)


def _v1(groups: int, num_classes: int, in_chans: int, **kwargs: Any) -> ShuffleNet:
    c = _V1_WIDTHS[groups]
    return ShuffleNet((24, c, 2 * c, 4 * c), 1, groups, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(num_params=1_531_936, paper_macs=_V1_MACS[1], **_V1_META)
def shufflenet_v1_g1(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1 1x, g=1 (Table 1), native only."""
    return _v1(1, num_classes, in_chans, **kwargs)


@register_model(num_params=1_733_848, paper_macs=_V1_MACS[2], **_V1_META)
def shufflenet_v1_g2(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1 1x, g=2 (Table 1), native only."""
    return _v1(2, num_classes, in_chans, **kwargs)


@register_model(num_params=1_865_728, paper_macs=_V1_MACS[3], **_V1_META)
def shufflenet_v1_g3(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1 1x, g=3 (Table 1: 240/480/960 channels), native only."""
    return _v1(3, num_classes, in_chans, **kwargs)


@register_model(num_params=1_968_344, paper_macs=_V1_MACS[4], **_V1_META)
def shufflenet_v1_g4(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1 1x, g=4 (Table 1), native only."""
    return _v1(4, num_classes, in_chans, **kwargs)


@register_model(num_params=2_434_768, paper_macs=_V1_MACS[8], **_V1_META)
def shufflenet_v1_g8(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v1 1x, g=8 (Table 1), native only."""
    return _v1(8, num_classes, in_chans, **kwargs)


_V2_META: dict[str, Any] = dict(
    family="shufflenet",
    paper="ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
    arxiv="1807.11164",
    year=2018,
    timm=None,
    input_size=(3, 224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv1.conv",
    classifier="fc",
    min_size=32,
    paper_input_size=(3, 224, 224),
    convert_torchvision=convert_torchvision,
)


def _v2(widths: tuple[int, ...], num_classes: int, in_chans: int, **kwargs: Any) -> ShuffleNet:
    return ShuffleNet(widths, 2, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    num_params=1_366_792,
    torchvision="shufflenet_v2_x0_5",
    paper_params=1_400_000,
    paper_macs=41_000_000,
    **_V2_META,
)
def shufflenet_v2_x0_5(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v2 0.5x (Table 5), torchvision weights."""
    return _v2((24, 48, 96, 192, 1024), num_classes, in_chans, **kwargs)


@register_model(
    num_params=2_278_604,
    torchvision="shufflenet_v2_x1_0",
    paper_params=2_300_000,
    paper_macs=146_000_000,
    **_V2_META,
)
def shufflenet_v2_x1_0(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v2 1x (Table 5), torchvision weights."""
    return _v2((24, 116, 232, 464, 1024), num_classes, in_chans, **kwargs)


@register_model(
    num_params=3_503_624,
    torchvision="shufflenet_v2_x1_5",
    paper_params=3_500_000,
    paper_macs=299_000_000,
    **_V2_META,
)
def shufflenet_v2_x1_5(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v2 1.5x (Table 5), torchvision weights."""
    return _v2((24, 176, 352, 704, 1024), num_classes, in_chans, **kwargs)


@register_model(
    num_params=7_393_996,
    torchvision="shufflenet_v2_x2_0",
    paper_params=7_400_000,
    paper_macs=591_000_000,
    **_V2_META,
)
def shufflenet_v2_x2_0(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet v2 2x (Table 5), torchvision weights."""
    return _v2((24, 244, 488, 976, 2048), num_classes, in_chans, **kwargs)
