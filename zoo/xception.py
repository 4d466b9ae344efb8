"""Xception: Inception modules taken to the limit, i.e. depthwise separable convolutions with residual connections.

Paper: Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", arXiv:1610.02357, 2017 (CVPR).
The architecture is Figure 5: an entry flow (two convs, then three residual blocks of separable convs that
downsample with a 3x3/2 max-pool and a strided 1x1 shortcut), a middle flow of eight 728-channel residual
blocks, and an exit flow (one downsampling block, then two separable convs to 1536 and 2048 channels). Table 3
gives 22,855,952 parameters (no multiply-add count).

Weights: timm ``legacy_xception.tf_in1k``, the Keras weights as ported by Cadene (timm's current ``xception41``,
``xception65``, ... are the DeepLab "aligned" Xceptions, other architectures). Module names mirror timm's
``legacy_xception`` (separable convs hold ``conv1`` (depthwise) and ``pointwise``), so the checkpoint loads with
no remapping. No torchvision weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, register_model


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, no norm or activation between them (Section 2: the paper found an
    intermediate ReLU hurts). Key layout of the Keras port (``conv1``, ``pointwise``), which zoo.layers'
    ``SeparableConv2d`` (``conv_dw``, ``conv_pw``) does not have.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, in_chs, kernel_size, 1, padding, groups=in_chs, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """Residual block of ``reps`` (ReLU, separable conv, BN) units; a strided one ends in a 3x3/2 max-pool and has
    a 1x1/2 conv + BN shortcut.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        reps: separable convs in the block.
        stride: 2 for the downsampling blocks of the entry and exit flows.
        start_with_relu: False for the first block, whose input is already activated by the stem.
        grow_first: change the width at the first separable conv (else at the last, as the exit-flow block).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_chs != in_chs or stride != 1:
            self.skip = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_chs)
        else:
            self.skip = None
        rep: list[nn.Module] = []
        for i in range(reps):
            if grow_first:
                inc, outc = (in_chs if i == 0 else out_chs), out_chs
            else:
                inc, outc = in_chs, (in_chs if i < reps - 1 else out_chs)
            # the first ReLU must not act in place: the shortcut still needs the block's input
            rep += [nn.ReLU(inplace=i > 0), SeparableConv2d(inc, outc), nn.BatchNorm2d(outc)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skipbn(self.skip(x)) if self.skip is not None else x
        return self.rep(x) + shortcut


class Xception(Backbone):
    """Xception (Figure 5) in the Keras port's layout.

    Stage outputs are the block outputs before the ReLU that opens the next block (timm's feature taps are that
    ReLU's output); the last stage ends activated.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper used 0.5 on ImageNet).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        # entry flow
        self.conv1 = nn.Conv2d(in_chans, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        # middle flow
        for i in range(4, 12):
            self.add_module(f"block{i}", Block(728, 728, 3, 1))
        # exit flow
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.num_features = 2048
        self.conv4 = SeparableConv2d(1536, self.num_features)
        self.bn4 = nn.BatchNorm2d(self.num_features)
        self.act4 = nn.ReLU(inplace=True)
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2),
            FeatureInfo(128, 4),
            FeatureInfo(256, 8),
            FeatureInfo(728, 16),
            FeatureInfo(2048, 32),
        ]
        for m in self.modules():  # timm's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # timm's feature_info split: stem, block1, block2, block3-11 (to stride 16), block12 + exit convs; the
        # modules keep timm's top-level names, StageGroups run them.
        self.set_stages(
            StageGroup(self, "conv1", "bn1", "act1", "conv2", "bn2", "act2"),
            "block1",
            "block2",
            StageGroup(self, *(f"block{i}" for i in range(3, 12))),
            StageGroup(self, "block12", "conv3", "bn3", "act3", "conv4", "bn4", "act4"),
        )


@register_model(
    family="xception",
    paper="Xception: Deep Learning with Depthwise Separable Convolutions",
    arxiv="1610.02357",
    year=2017,
    num_params=22_855_952,
    timm="legacy_xception.tf_in1k",
    torchvision=None,
    input_size=(3, 299, 299),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    crop_pct=0.8975,
    first_conv="conv1",
    classifier="fc",
    min_size=7,
    paper_params=22_855_952,
    paper_input_size=(3, 299, 299),
    aliases=("legacy_xception",),
)
def xception(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> Xception:
    """Xception at 299x299 (Figure 5).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`Xception` options (``drop_rate``).
    """
    return Xception(num_classes=num_classes, in_chans=in_chans, **kwargs)
