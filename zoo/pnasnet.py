"""PNASNet-5 Large, the cell found by progressive (sequential model-based) architecture search.

Paper: Chenxi Liu, Barret Zoph, Maxim Neumann, Jonathon Shlens, Wei Hua, Li-Jia Li, Li Fei-Fei, Alan Yuille,
Jonathan Huang, Kevin Murphy, "Progressive Neural Architecture Search", arXiv:1712.00559, ECCV 2018.

Weights: timm ``pnasnet5large.tf_in1k`` (the TF-slim ImageNet checkpoint, ported by Cadene; 331x331 input, Inception
normalisation). Module names mirror timm's ``pnasnet.py`` so its checkpoints load with no remapping.

Paper numbers: Table 5 (ImageNet large setting, 331x331), PNASNet-5 (N=4, F=216): 86.1M parameters, 25.0B
mult-adds.

Layout: a 3x3 stride-2 stem conv, two reduction stem cells, then three stacks of four cells (the first cell of the
second and third stacks strides by 2). Unlike NASNet there is one cell type: the same five combinations serve as
normal and, with stride 2, as reduction cell. Each cell reads the outputs of the two previous cells; where their
resolutions differ the older one passes through a factorized reduction. Padding is TensorFlow's 'SAME'.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, register_model
from zoo.layers import (
    ActConvBn,
    BranchSeparables,
    CellStage,
    ConvNormAct,
    FactorizedReduction,
    cell_stages,
    create_conv2d_same,
    create_pool2d_same,
)

_BN = partial(nn.BatchNorm2d, eps=1e-3)


class _CellBase(nn.Module):
    """PNASNet-5's five combinations (paper Fig. 1): ``x_left`` is the older input, ``x_right`` the newer."""

    comb_iter_4_right: nn.Module | None

    def cell_forward(self, x_left: torch.Tensor, x_right: torch.Tensor) -> torch.Tensor:
        x0 = self.comb_iter_0_left(x_left) + self.comb_iter_0_right(x_left)
        x1 = self.comb_iter_1_left(x_right) + self.comb_iter_1_right(x_right)
        x2 = self.comb_iter_2_left(x_right) + self.comb_iter_2_right(x_right)
        x3 = self.comb_iter_3_left(x2) + self.comb_iter_3_right(x_right)
        right = self.comb_iter_4_right(x_right) if self.comb_iter_4_right is not None else x_right
        x4 = self.comb_iter_4_left(x_left) + right
        return torch.cat([x0, x1, x2, x3, x4], 1)


class CellStem0(_CellBase):
    """First stem cell: both inputs are the stem conv output (raw on the left, squeezed by a 1x1 on the right)."""

    def __init__(self, in_chs_left: int, out_chs_left: int, in_chs_right: int, out_chs_right: int) -> None:
        super().__init__()
        self.conv_1x1 = ActConvBn(in_chs_right, out_chs_right)
        self.comb_iter_0_left = BranchSeparables(in_chs_left, out_chs_left, 5, 2, mid_chs=out_chs_left)
        self.comb_iter_0_right = nn.Sequential(
            OrderedDict(
                [
                    ("max_pool", create_pool2d_same("max", 3, 2)),
                    ("conv", create_conv2d_same(in_chs_left, out_chs_left, 1)),
                    ("bn", _BN(out_chs_left)),
                ]
            )
        )
        self.comb_iter_1_left = BranchSeparables(out_chs_right, out_chs_right, 7, 2)
        self.comb_iter_1_right = create_pool2d_same("max", 3, 2)
        self.comb_iter_2_left = BranchSeparables(out_chs_right, out_chs_right, 5, 2)
        self.comb_iter_2_right = BranchSeparables(out_chs_right, out_chs_right, 3, 2)
        self.comb_iter_3_left = BranchSeparables(out_chs_right, out_chs_right, 3)
        self.comb_iter_3_right = create_pool2d_same("max", 3, 2)
        self.comb_iter_4_left = BranchSeparables(in_chs_right, out_chs_right, 3, 2, mid_chs=out_chs_right)
        self.comb_iter_4_right = ActConvBn(out_chs_right, out_chs_right, 1, stride=2)

    def forward(self, x_left: torch.Tensor) -> torch.Tensor:
        return self.cell_forward(x_left, self.conv_1x1(x_left))


class Cell(_CellBase):
    """A PNASNet-5 cell; ``is_reduction`` strides every op by 2, ``match_prev_layer_dims`` halves the older input.

    Args:
        in_chs_left: channels of the older input.
        out_chs_left: width it is squeezed to.
        in_chs_right: channels of the newer input.
        out_chs_right: width it is squeezed to (the cell output is 5x this).
        is_reduction: stride 2 (a reduction cell).
        match_prev_layer_dims: the older input has twice the resolution: factorized reduction instead of a 1x1.
    """

    def __init__(
        self,
        in_chs_left: int,
        out_chs_left: int,
        in_chs_right: int,
        out_chs_right: int,
        is_reduction: bool = False,
        match_prev_layer_dims: bool = False,
    ) -> None:
        super().__init__()
        stride = 2 if is_reduction else 1
        if match_prev_layer_dims:
            self.conv_prev_1x1: nn.Module = FactorizedReduction(in_chs_left, out_chs_left)
        else:
            self.conv_prev_1x1 = ActConvBn(in_chs_left, out_chs_left)
        self.conv_1x1 = ActConvBn(in_chs_right, out_chs_right)
        self.comb_iter_0_left = BranchSeparables(out_chs_left, out_chs_left, 5, stride)
        self.comb_iter_0_right = create_pool2d_same("max", 3, stride)
        self.comb_iter_1_left = BranchSeparables(out_chs_right, out_chs_right, 7, stride)
        self.comb_iter_1_right = create_pool2d_same("max", 3, stride)
        self.comb_iter_2_left = BranchSeparables(out_chs_right, out_chs_right, 5, stride)
        self.comb_iter_2_right = BranchSeparables(out_chs_right, out_chs_right, 3, stride)
        self.comb_iter_3_left = BranchSeparables(out_chs_right, out_chs_right, 3)
        self.comb_iter_3_right = create_pool2d_same("max", 3, stride)
        self.comb_iter_4_left = BranchSeparables(out_chs_left, out_chs_left, 3, stride)
        self.comb_iter_4_right = ActConvBn(out_chs_right, out_chs_right, 1, stride=stride) if is_reduction else None

    def forward(self, x_left: torch.Tensor, x_right: torch.Tensor) -> torch.Tensor:
        return self.cell_forward(self.conv_prev_1x1(x_left), self.conv_1x1(x_right))


class _PNASNetStage(CellStage):
    @staticmethod
    def step(cell: nn.Module, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cell(x_prev, x), x  # timm's argument order: (left = previous, right = current)


class PNASNet5Large(Backbone):
    """PNASNet-5 Large (N=4 cells per stack, F=216, 4320 final channels).

    Stages (``stages()``/``feature_info``): the stem conv (r2), the first stem cell (r4), then [cell_stem_1 +
    cells 0-3] (r8), [cells 4-7] (r16), [cells 8-11 + final ReLU] (r32), the last three ``CellStage`` views that
    map ``(x, x_prev)`` to ``(x, x_prev)``. Intermediate stage outputs are ReLU-activated, as timm's
    ``forward_intermediates`` taps them.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier (the paper uses 0.5 when training).
    """

    classifier_attr = "last_linear"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.num_features, self.drop_rate = num_classes, 4320, drop_rate
        self.conv_0 = ConvNormAct(in_chans, 96, 3, stride=2, padding=0, norm_layer=_BN, act_layer=None)
        self.cell_stem_0 = CellStem0(96, 54, 96, 54)
        # (name, width, is_reduction, match_prev_layer_dims) in forward order; each cell reads (x_prev, x).
        plan = [("cell_stem_1", 108, True, True)]
        for i in range(12):
            stack, j = divmod(i, 4)
            plan.append((f"cell_{i}", 216 * 2**stack, stack > 0 and j == 0, j == (1 if stack else 0)))
        prev_chs, cur_chs = 96, 270
        self.layer_names = []
        for name, w, is_reduction, match_prev in plan:
            setattr(self, name, Cell(prev_chs, w, cur_chs, w, is_reduction, match_prev))
            self.layer_names.append(name)
            prev_chs, cur_chs = cur_chs, 5 * w
        self.act = nn.ReLU()
        self.last_linear = linear_or_identity(self.num_features, num_classes)
        self._stage_ends = ("cell_3", "cell_7", "cell_11")
        self.feature_info = [
            FeatureInfo(96, 2),
            FeatureInfo(270, 4),
            FeatureInfo(1080, 8),
            FeatureInfo(2160, 16),
            FeatureInfo(4320, 32),
        ]
        # conv_0, cell_stem_0, then three CellStages ((x, x_prev) -> (x, x_prev), run by forward_stages)
        self.set_stages(*cell_stages(self, ["conv_0", "cell_stem_0"], _PNASNetStage))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv_0, cell_stem_0, *stages = self._stage_modules()
        x_prev = conv_0(x)
        x = cell_stem_0(x_prev)
        outs = [x_prev, F.relu(x)]
        for i, stage in enumerate(stages):
            x, x_prev = stage(x, x_prev)
            outs.append(F.relu(x) if i < len(stages) - 1 else self.act(x))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@register_model(
    family="pnasnet",
    paper="Progressive Neural Architecture Search",
    arxiv="1712.00559",
    year=2018,
    num_params=86_057_668,
    timm="pnasnet5large.tf_in1k",
    input_size=(3, 331, 331),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    crop_pct=0.911,
    first_conv="conv_0.conv",
    classifier="last_linear",
    paper_params=86_100_000,
    paper_macs=25_000_000_000,
    min_size=32,
    aliases=("pnasnet",),
)
def pnasnet5large(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PNASNet5Large:
    """PNASNet-5 Large (N=4, F=216), 331x331 ImageNet weights from timm.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate`` (dropout before the classifier).
    """
    return PNASNet5Large(num_classes=num_classes, in_chans=in_chans, **kwargs)
