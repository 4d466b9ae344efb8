"""Inception-v4 and Inception-ResNet-v2: uniform Inception modules, and Inception modules as residual branches.

Paper: Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning", arXiv:1602.07261, 2016. Inception-v4 is Figures 3-9 (stem, 4x Inception-A, Reduction-A, 7x
Inception-B, Reduction-B, 3x Inception-C); Inception-ResNet-v2 is Figures 3, 7 and 16-19 (10x block35, 20x
block17, 10x block8), with residuals scaled by 0.17 / 0.10 / 0.20 before the sum (Section 3.3, "scaling of the
residuals") to keep training of very wide residual Inception nets stable. The paper gives no parameter or
multiply-add table.

Weights: timm ``inception_v4.tf_in1k`` and ``inception_resnet_v2.tf_in1k`` (also ``tf_ens_adv_in1k``), ports of
the TF-slim checkpoints. Module names mirror timm's (``features.N`` for v4, ``conv2d_1a`` ... ``classif`` for
Inception-ResNet-v2), so the checkpoints load with no remapping. Neither has torchvision weights.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, register_model
from zoo.layers import ConvNormAct

PAPER = "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning"
_COMMON: dict[str, Any] = dict(
    family="inception_v4",
    paper=PAPER,
    arxiv="1602.07261",
    year=2016,
    torchvision=None,
    input_size=(3, 299, 299),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    min_size=75,
)


def _conv(
    in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], stride: int = 1, padding: Any = 0
) -> nn.Module:
    """Conv-BN(eps 1e-3, as the TF-slim weights)-ReLU; 'valid' padding unless given, as in the paper's figures."""
    return ConvNormAct(in_chs, out_chs, kernel_size, stride, padding, norm_layer=partial(nn.BatchNorm2d, eps=1e-3))


def _avg_pool() -> nn.Module:
    # TF's 'SAME' average pool ignores the padding in the mean
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _Concat(nn.Module):
    """Runs the ``branch*`` children on the same input and concatenates their outputs (in name order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for n, m in self.named_children() if n.startswith("branch")], 1)


# ---------------------------------------------------------------------------------------------------------------
# Inception-v4
# ---------------------------------------------------------------------------------------------------------------


class Mixed3a(nn.Module):
    """Stem, first split (Figure 3): 3x3/2 max-pool beside a 3x3/2 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = _conv(64, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed4a(_Concat):
    """Stem, second split (Figure 3): 1x1-3x3 beside 1x1-7x1-1x7-3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(_conv(160, 64, 1), _conv(64, 96, 3))
        self.branch1 = nn.Sequential(
            _conv(160, 64, 1),
            _conv(64, 64, (1, 7), padding=(0, 3)),
            _conv(64, 64, (7, 1), padding=(3, 0)),
            _conv(64, 96, 3),
        )


class Mixed5a(nn.Module):
    """Stem, third split (Figure 3): 3x3/2 conv beside a 3x3/2 max-pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


class InceptionA(_Concat):
    """35x35 Inception-A (Figure 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(384, 96, 1)
        self.branch1 = nn.Sequential(_conv(384, 64, 1), _conv(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(_conv(384, 64, 1), _conv(64, 96, 3, padding=1), _conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(_avg_pool(), _conv(384, 96, 1))


class ReductionA(_Concat):
    """35 -> 17 reduction (Figure 7, k=192, l=224, m=256, n=384)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(_conv(384, 192, 1), _conv(192, 224, 3, padding=1), _conv(224, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)


class InceptionB(_Concat):
    """17x17 Inception-B (Figure 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(1024, 384, 1)
        self.branch1 = nn.Sequential(
            _conv(1024, 192, 1), _conv(192, 224, (1, 7), padding=(0, 3)), _conv(224, 256, (7, 1), padding=(3, 0))
        )
        self.branch2 = nn.Sequential(
            _conv(1024, 192, 1),
            _conv(192, 192, (7, 1), padding=(3, 0)),
            _conv(192, 224, (1, 7), padding=(0, 3)),
            _conv(224, 224, (7, 1), padding=(3, 0)),
            _conv(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(_avg_pool(), _conv(1024, 128, 1))


class ReductionB(_Concat):
    """17 -> 8 reduction (Figure 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(_conv(1024, 192, 1), _conv(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            _conv(1024, 256, 1),
            _conv(256, 256, (1, 7), padding=(0, 3)),
            _conv(256, 320, (7, 1), padding=(3, 0)),
            _conv(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)


class InceptionC(nn.Module):
    """8x8 Inception-C (Figure 6): the 3x3s split into parallel 1x3 and 3x1 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(1536, 256, 1)
        self.branch1_0 = _conv(1536, 384, 1)
        self.branch1_1a = _conv(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = _conv(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = _conv(1536, 384, 1)
        self.branch2_1 = _conv(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = _conv(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = _conv(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = _conv(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(_avg_pool(), _conv(1536, 256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        parts = [self.branch0(x), self.branch1_1a(x1), self.branch1_1b(x1), self.branch2_3a(x2), self.branch2_3b(x2)]
        return torch.cat([*parts, self.branch3(x)], 1)


class InceptionV4(Backbone):
    """Inception-v4 (Figure 9), one ``features`` sequence as timm's.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper keeps 0.8 of the activations).
    """

    classifier_attr = "last_linear"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.features = nn.Sequential(
            _conv(in_chans, 32, 3, stride=2),
            _conv(32, 32, 3),
            _conv(32, 64, 3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA() for _ in range(4)],
            ReductionA(),
            *[InceptionB() for _ in range(7)],
            ReductionB(),
            *[InceptionC() for _ in range(3)],
        )
        self.num_features = 1536
        self.last_linear = linear_or_identity(self.num_features, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2),
            FeatureInfo(160, 4),
            FeatureInfo(384, 8),
            FeatureInfo(1024, 16),
            FeatureInfo(1536, 32),
        ]
        # timm's feature_info split of ``features``: [0:3], [3], [4:10], [10:18], [18:22].
        cuts = ((0, 3), (3, 4), (4, 10), (10, 18), (18, 22))
        self.set_stages(*(StageGroup(self, *(f"features.{i}" for i in range(a, b))) for a, b in cuts))


@register_model(
    num_params=42_679_816,
    timm="inception_v4.tf_in1k",
    crop_pct=0.875,
    first_conv="features.0.conv",
    classifier="last_linear",
    **_COMMON,
)
def inception_v4(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> InceptionV4:
    """Inception-v4 at 299x299.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`InceptionV4` options (``drop_rate``).
    """
    return InceptionV4(num_classes=num_classes, in_chans=in_chans, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Inception-ResNet-v2
# ---------------------------------------------------------------------------------------------------------------


class Mixed_5b(_Concat):  # noqa: N801 -- timm's class and key name
    """35x35 Inception module between the stem and the first residual blocks (TF-slim's Mixed_5b)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(192, 96, 1)
        self.branch1 = nn.Sequential(_conv(192, 48, 1), _conv(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(_conv(192, 64, 1), _conv(64, 96, 3, padding=1), _conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(_avg_pool(), _conv(192, 64, 1))


class _Residual(nn.Module):
    """Inception-ResNet block: the branches' concatenation, projected by a 1x1 conv, scaled, added to the input.

    Subclasses add ``branch*`` modules and the projection ``conv2d``.
    """

    conv2d: nn.Conv2d

    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [m(x) for n, m in self.named_children() if n.startswith("branch")]
        out = self.conv2d(torch.cat(branches, 1)) * self.scale + x
        return torch.relu(out) if self.relu else out


class Block35(_Residual):
    """35x35 Inception-ResNet-A (Figure 16)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = _conv(320, 32, 1)
        self.branch1 = nn.Sequential(_conv(320, 32, 1), _conv(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(_conv(320, 32, 1), _conv(32, 48, 3, padding=1), _conv(48, 64, 3, padding=1))
        self.conv2d = nn.Conv2d(128, 320, 1)


class Mixed_6a(_Concat):  # noqa: N801 -- timm's class and key name
    """35 -> 17 reduction (Figure 7, k=256, l=256, m=384, n=384)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(_conv(320, 256, 1), _conv(256, 256, 3, padding=1), _conv(256, 384, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)


class Block17(_Residual):
    """17x17 Inception-ResNet-B (Figure 17)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = _conv(1088, 192, 1)
        self.branch1 = nn.Sequential(
            _conv(1088, 128, 1), _conv(128, 160, (1, 7), padding=(0, 3)), _conv(160, 192, (7, 1), padding=(3, 0))
        )
        self.conv2d = nn.Conv2d(384, 1088, 1)


class Mixed_7a(_Concat):  # noqa: N801 -- timm's class and key name
    """17 -> 8 reduction (Figure 18)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(_conv(1088, 256, 1), _conv(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, padding=1), _conv(288, 320, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)


class Block8(_Residual):
    """8x8 Inception-ResNet-C (Figure 19); the last one has no ReLU, a 1x1 conv follows it."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False) -> None:
        super().__init__(scale, relu=not no_relu)
        self.branch0 = _conv(2080, 192, 1)
        self.branch1 = nn.Sequential(
            _conv(2080, 192, 1), _conv(192, 224, (1, 3), padding=(0, 1)), _conv(224, 256, (3, 1), padding=(1, 0))
        )
        self.conv2d = nn.Conv2d(448, 2080, 1)


class InceptionResnetV2(Backbone):
    """Inception-ResNet-v2 in TF-slim's / timm's layout (the stem is Inception-v3's, as in the released model).

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper keeps 0.8 of the activations).
    """

    classifier_attr = "classif"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv2d_1a = _conv(in_chans, 32, 3, stride=2)
        self.conv2d_2a = _conv(32, 32, 3)
        self.conv2d_2b = _conv(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = _conv(64, 80, 1)
        self.conv2d_4a = _conv(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        self.repeat = nn.Sequential(*[Block35(scale=0.17) for _ in range(10)])
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*[Block17(scale=0.10) for _ in range(20)])
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*[Block8(scale=0.20) for _ in range(9)])
        self.block8 = Block8(no_relu=True)
        self.num_features = 1536
        self.conv2d_7b = _conv(2080, self.num_features, 1)
        self.classif = linear_or_identity(self.num_features, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2),
            FeatureInfo(192, 4),
            FeatureInfo(320, 8),
            FeatureInfo(1088, 16),
            FeatureInfo(1536, 32),
        ]
        # timm's feature_info split, ending at conv2d_2b, conv2d_4a, repeat, repeat_1 and conv2d_7b (timm's names).
        self.set_stages(
            StageGroup(self, "conv2d_1a", "conv2d_2a", "conv2d_2b"),
            StageGroup(self, "maxpool_3a", "conv2d_3b", "conv2d_4a"),
            StageGroup(self, "maxpool_5a", "mixed_5b", "repeat"),
            StageGroup(self, "mixed_6a", "repeat_1"),
            StageGroup(self, "mixed_7a", "repeat_2", "block8", "conv2d_7b"),
        )


@register_model(
    num_params=55_843_464,
    timm="inception_resnet_v2.tf_in1k",
    crop_pct=0.8975,
    first_conv="conv2d_1a.conv",
    classifier="classif",
    **_COMMON,
)
def inception_resnet_v2(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> InceptionResnetV2:
    """Inception-ResNet-v2 at 299x299.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`InceptionResnetV2` options (``drop_rate``).
    """
    return InceptionResnetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)
