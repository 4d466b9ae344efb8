"""MobileNetV1 and MobileNetV2: networks of depthwise-separable convolutions for mobile devices.

Papers:
    * Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
      arXiv:1704.04861, 2017. Body: Table 1 (a 3x3/2 conv then 13 depthwise-separable blocks); parameters and
      multiply-adds: Table 8, "1.0 MobileNet-224": 4.2M parameters, 569M mult-adds.
    * Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381, 2018 (CVPR).
      Body: Table 2 (one stage per bottleneck row); parameters and multiply-adds: Table 4 (ImageNet),
      "MobileNetV2": 3.4M parameters, 300M multiply-adds at 224x224.

Both use ReLU6 (what the released weights were trained with). Stages follow the paper's tables: the stem conv,
then one stage per row (``blocks.i``), and for V2 the final 1x1 conv to 1280 channels as the last stage.

Weights:
    * timm: ``mobilenetv1_100.ra4_e3600_r224_in1k``, ``mobilenetv2_100.ra_in1k``; timm builds both with its
      EfficientNet builder and module names mirror its keys (``conv_stem``, ``bn1``, ``blocks.i.j.*``,
      ``conv_head``, ``bn2``, ``classifier``), so no remapping.
    * torchvision: ``mobilenet_v2`` through :func:`convert_torchvision` (e.g. the ``mobilenet_v2-b0353104.pth``
      file); torchvision has no MobileNetV1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, StateDict, register_model
from zoo.layers import BatchNormAct2d, DepthwiseSeparableConv, InvertedResidual

V1_PAPER = "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications"
V2_PAPER = "MobileNetV2: Inverted Residuals and Linear Bottlenecks"

# One row per stage: (block, expansion t, output channels c, repeats n, first stride s)
# "ds": depthwise-separable (pointwise activated, no residual: V1); "ds_linear": with a linear pointwise (V2's first
# row, t=1); "ir": inverted residual
V1_ARCH = [("ds", 1, 64, 1, 1), ("ds", 1, 128, 2, 2), ("ds", 1, 256, 2, 2), ("ds", 1, 512, 6, 2), ("ds", 1, 1024, 2, 2)]
V2_ARCH = [  # Table 2 of the MobileNetV2 paper
    ("ds_linear", 1, 16, 1, 1),
    ("ir", 6, 24, 2, 2),
    ("ir", 6, 32, 3, 2),
    ("ir", 6, 64, 4, 2),
    ("ir", 6, 96, 3, 1),
    ("ir", 6, 160, 3, 2),
    ("ir", 6, 320, 1, 1),
]


class MobileNet(Backbone):
    """MobileNet V1/V2 body in timm's EfficientNet key layout.

    Args:
        arch: stage rows, see :data:`V1_ARCH` / :data:`V2_ARCH`.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        stem_chs: stem conv width.
        head_chs: width of the final 1x1 conv (None: no head conv, as in V1).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the residual blocks, rising linearly with depth (timm's rule).
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        arch: list[tuple[str, int, int, int, int]],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_chs: int = 32,
        head_chs: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(stem_chs, act_layer=nn.ReLU6)
        self.feature_info = [FeatureInfo(stem_chs, 2)]

        total = sum(row[3] for row in arch)
        chs, reduction, idx = stem_chs, 2, 0
        stages: list[nn.Module] = []
        for kind, t, out_chs, n, s in arch:
            blocks: list[nn.Module] = []
            for i in range(n):
                stride = s if i == 0 else 1
                dpr = drop_path_rate * idx / total
                if kind == "ir":
                    blocks.append(InvertedResidual(chs, out_chs, 3, stride, exp_ratio=t, drop_path_rate=dpr))
                else:
                    v1 = kind == "ds"
                    blocks.append(
                        DepthwiseSeparableConv(chs, out_chs, 3, stride, pw_act=v1, noskip=v1, drop_path_rate=dpr)
                    )
                chs, idx = out_chs, idx + 1
            reduction *= s
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(chs, reduction))
        self.blocks = nn.Sequential(*stages)

        if head_chs:
            self.conv_head: nn.Module | None = nn.Conv2d(chs, head_chs, 1, bias=False)
            self.bn2: nn.Module | None = BatchNormAct2d(head_chs, act_layer=nn.ReLU6)
            chs = head_chs
            self.feature_info.append(FeatureInfo(chs, reduction))
        else:
            self.conv_head = self.bn2 = None
        self.num_features = chs
        self.classifier = linear_or_identity(chs, num_classes)

        # timm's EfficientNet init (He-normal fan-out convs, uniform 1/sqrt(fan_out) classifier)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.weight.shape[0] ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
        # Stem and head convs keep timm's top-level names; StageGroups run each with its norm.
        head = [StageGroup(self, "conv_head", "bn2")] if head_chs else []
        self.set_stages(StageGroup(self, "conv_stem", "bn1"), *(f"blocks.{i}" for i in range(len(stages))), *head)


# -- torchvision checkpoints --------------------------------------------------------------------------------------


def _tv_v2_prefix_map() -> dict[str, str]:
    """torchvision ``mobilenet_v2`` module prefixes -> native ones, built from Table 2."""
    mapping = {"features.0.0": "conv_stem", "features.0.1": "bn1"}
    # torchvision's features.1 is the t=1 block: [ConvBNReLU(dw), conv(pw), bn]
    mapping.update(
        {
            "features.1.conv.0.0": "blocks.0.0.conv_dw",
            "features.1.conv.0.1": "blocks.0.0.bn1",
            "features.1.conv.1": "blocks.0.0.conv_pw",
            "features.1.conv.2": "blocks.0.0.bn2",
        }
    )
    # features.2 ... features.17: [ConvBNReLU(pw), ConvBNReLU(dw), conv(pwl), bn], numbered through the rows
    tv_idx = 2
    for stage, (_, _, _, n, _) in enumerate(V2_ARCH[1:], start=1):
        for j in range(n):
            src, dst = f"features.{tv_idx}.conv", f"blocks.{stage}.{j}"
            mapping.update(
                {
                    f"{src}.0.0": f"{dst}.conv_pw",
                    f"{src}.0.1": f"{dst}.bn1",
                    f"{src}.1.0": f"{dst}.conv_dw",
                    f"{src}.1.1": f"{dst}.bn2",
                    f"{src}.2": f"{dst}.conv_pwl",
                    f"{src}.3": f"{dst}.bn3",
                }
            )
            tv_idx += 1
    mapping.update({f"features.{tv_idx}.0": "conv_head", f"features.{tv_idx}.1": "bn2", "classifier.1": "classifier"})
    return mapping


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """Map a torchvision ``mobilenet_v2`` state dict to native keys, checking every shape against the native model.

    Raises:
        KeyError: a key that is not part of torchvision's MobileNetV2.
        ValueError: a tensor whose shape differs from the native one (another width multiplier, say).
    """
    prefixes = _tv_v2_prefix_map()
    with torch.device("meta"):  # shapes only, no memory
        own = MobileNet(V2_ARCH, num_classes=1000, head_chs=1280).state_dict()
    out: StateDict = {}
    for key, value in state_dict.items():
        prefix, _, suffix = key.rpartition(".")
        if prefix not in prefixes:
            raise KeyError(f"unexpected key {key!r} in a torchvision MobileNetV2 state dict")
        new = f"{prefixes[prefix]}.{suffix}"
        want = own[new].shape
        # the classifier may have any number of classes (and the stem any number of input channels)
        ok = value.shape[1:] == want[1:] if new in ("classifier.weight", "conv_stem.weight") else value.shape == want
        if new == "classifier.bias":
            ok = value.ndim == 1
        if not ok:
            raise ValueError(f"{key} -> {new}: shape {tuple(value.shape)}, native {tuple(want)}")
        out[new] = value
    return out


# -- builders -----------------------------------------------------------------------------------------------------


@register_model(
    family="mobilenet",
    paper=V1_PAPER,
    arxiv="1704.04861",
    year=2017,
    num_params=4_231_976,
    timm="mobilenetv1_100.ra4_e3600_r224_in1k",
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    first_conv="conv_stem",
    classifier="classifier",
    min_size=32,
    paper_params=4_200_000,
    paper_macs=569_000_000,
    paper_input_size=(3, 224, 224),
    aliases=("mobilenet_v1",),
)
def mobilenetv1_100(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNet:
    """MobileNetV1 at width multiplier 1.0 (Table 1), with ReLU6 as timm's weights.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`MobileNet` options (``drop_rate``, ``drop_path_rate``).
    """
    return MobileNet(V1_ARCH, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    family="mobilenet",
    paper=V2_PAPER,
    arxiv="1801.04381",
    year=2018,
    num_params=3_504_872,
    timm="mobilenetv2_100.ra_in1k",
    torchvision="mobilenet_v2",
    interpolation="bicubic",
    first_conv="conv_stem",
    classifier="classifier",
    min_size=32,
    paper_params=3_400_000,
    paper_macs=300_000_000,
    paper_input_size=(3, 224, 224),
    aliases=("mobilenet_v2",),
    convert_torchvision=convert_torchvision,
)
def mobilenetv2_100(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNet:
    """MobileNetV2 at width multiplier 1.0 (Table 2).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`MobileNet` options (``drop_rate``, ``drop_path_rate``).
    """
    return MobileNet(V2_ARCH, num_classes=num_classes, in_chans=in_chans, head_chs=1280, **kwargs)
