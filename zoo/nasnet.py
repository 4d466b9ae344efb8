"""NASNet-A Large, the architecture found by reinforcement-learned cell search.

Paper: Barret Zoph, Vijay Vasudevan, Jonathon Shlens, Quoc V. Le, "Learning Transferable Architectures for Scalable
Image Recognition", arXiv:1707.07012, CVPR 2018.

Weights: timm ``nasnetalarge.tf_in1k`` (the TF-slim ImageNet checkpoint, ported by Cadene; 331x331 input, Inception
normalisation). Module names mirror timm's ``nasnet.py`` so its checkpoints load with no remapping.

Paper numbers: Table 2 (ImageNet, 331x331), NASNet-A (N=6, F=168, "6 @ 4032"): 88.9M parameters, 23.8B mult-adds.

Layout: a 3x3 stride-2 stem conv, two reduction "stem cells", then three stacks of six normal cells separated by two
reduction cells; channels double at every reduction. Each cell reads the outputs of the two previous cells
(``x``, ``x_prev``), so the trunk is not a plain sequence: each cell stage (a :class:`~zoo.layers.CellStage`) maps
the pair to the pair, and ``forward_features``/``forward_stages`` carry it from stage to stage.
Padding is TensorFlow's 'SAME' (asymmetric at stride 2), as the ported weights expect.
"""

from __future__ import annotations

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
    cell_stages,
    create_pool2d_same,
    factorized_paths,
)

_BN = partial(nn.BatchNorm2d, eps=1e-3)


class _ReductionOps(nn.Module):
    """The five stride-2 combinations of NASNet-A's reduction cell (paper Fig. 4, right).

    ``comb_iter_*_left`` ops read the current input ``cur``, ``comb_iter_*_right`` ops the previous one ``prev``.
    """

    def _add_reduction_ops(self, prev_chs: int, chs: int) -> None:
        self.comb_iter_0_left = BranchSeparables(chs, chs, 5, 2)
        self.comb_iter_0_right = BranchSeparables(prev_chs, chs, 7, 2, mid_chs=chs)
        self.comb_iter_1_left = create_pool2d_same("max", 3, 2)
        self.comb_iter_1_right = BranchSeparables(prev_chs, chs, 7, 2, mid_chs=chs)
        self.comb_iter_2_left = create_pool2d_same("avg", 3, 2)
        self.comb_iter_2_right = BranchSeparables(prev_chs, chs, 5, 2, mid_chs=chs)
        self.comb_iter_3_right = create_pool2d_same("avg", 3, 1)
        self.comb_iter_4_left = BranchSeparables(chs, chs, 3, 1)
        self.comb_iter_4_right = create_pool2d_same("max", 3, 2)

    def _reduce(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        x0 = self.comb_iter_0_left(cur) + self.comb_iter_0_right(prev)
        x1 = self.comb_iter_1_left(cur) + self.comb_iter_1_right(prev)
        x2 = self.comb_iter_2_left(cur) + self.comb_iter_2_right(prev)
        x3 = self.comb_iter_3_right(x0) + x1
        x4 = self.comb_iter_4_left(x0) + self.comb_iter_4_right(cur)
        return torch.cat([x1, x2, x3, x4], 1)


class _NormalOps(nn.Module):
    """The five stride-1 combinations of NASNet-A's normal cell (paper Fig. 4, left); output is 6x the width."""

    def _add_normal_ops(self, chs: int) -> None:
        self.comb_iter_0_left = BranchSeparables(chs, chs, 5, 1)
        self.comb_iter_0_right = BranchSeparables(chs, chs, 3, 1)
        self.comb_iter_1_left = BranchSeparables(chs, chs, 5, 1)
        self.comb_iter_1_right = BranchSeparables(chs, chs, 3, 1)
        self.comb_iter_2_left = create_pool2d_same("avg", 3, 1)
        self.comb_iter_3_left = create_pool2d_same("avg", 3, 1)
        self.comb_iter_3_right = create_pool2d_same("avg", 3, 1)
        self.comb_iter_4_left = BranchSeparables(chs, chs, 3, 1)

    def _normal(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        x0 = self.comb_iter_0_left(cur) + self.comb_iter_0_right(prev)
        x1 = self.comb_iter_1_left(prev) + self.comb_iter_1_right(prev)
        x2 = self.comb_iter_2_left(cur) + prev
        x3 = self.comb_iter_3_left(prev) + self.comb_iter_3_right(prev)
        x4 = self.comb_iter_4_left(cur) + cur
        return torch.cat([prev, x0, x1, x2, x3, x4], 1)


class CellStem0(_ReductionOps):
    """First stem cell: a reduction cell whose only input is the stem conv output."""

    def __init__(self, stem_size: int, num_channels: int) -> None:
        super().__init__()
        self.conv_1x1 = ActConvBn(stem_size, num_channels)
        self._add_reduction_ops(stem_size, num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(self.conv_1x1(x), x)


class CellStem1(_ReductionOps):
    """Second stem cell: a reduction cell reading the first stem cell and, factorized-reduced, the stem conv."""

    def __init__(self, stem_size: int, num_channels: int) -> None:
        super().__init__()
        self.conv_1x1 = ActConvBn(2 * num_channels, num_channels)
        self.act = nn.ReLU()
        self.path_1, self.path_2 = factorized_paths(stem_size, num_channels)
        self.final_path_bn = _BN(num_channels)
        self._add_reduction_ops(num_channels, num_channels)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        x_prev = self.act(x_prev)  # the stem conv output
        prev = self.final_path_bn(torch.cat([self.path_1(x_prev), self.path_2(x_prev)], 1))
        return self._reduce(self.conv_1x1(x), prev)


class FirstCell(_NormalOps):
    """Normal cell after a reduction: ``x_prev`` has twice the resolution, so it is factorized-reduced first."""

    def __init__(self, in_chs_left: int, out_chs_left: int, in_chs_right: int, out_chs_right: int) -> None:
        super().__init__()
        self.conv_1x1 = ActConvBn(in_chs_right, out_chs_right)
        self.act = nn.ReLU()
        self.path_1, self.path_2 = factorized_paths(in_chs_left, 2 * out_chs_left)
        self.final_path_bn = _BN(2 * out_chs_left)
        self._add_normal_ops(out_chs_right)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        x_prev = self.act(x_prev)
        prev = self.final_path_bn(torch.cat([self.path_1(x_prev), self.path_2(x_prev)], 1))
        return self._normal(self.conv_1x1(x), prev)


class NormalCell(_NormalOps):
    """Normal cell: both inputs squeezed to the cell width by a ReLU-1x1 conv-BN, then five combinations."""

    def __init__(self, in_chs_left: int, out_chs_left: int, in_chs_right: int, out_chs_right: int) -> None:
        super().__init__()
        self.conv_prev_1x1 = ActConvBn(in_chs_left, out_chs_left)
        self.conv_1x1 = ActConvBn(in_chs_right, out_chs_right)
        self._add_normal_ops(out_chs_right)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        return self._normal(self.conv_1x1(x), self.conv_prev_1x1(x_prev))


class ReductionCell(_ReductionOps):
    """Reduction cell: halves the resolution; output is 4x the cell width."""

    def __init__(self, in_chs_left: int, out_chs_left: int, in_chs_right: int, out_chs_right: int) -> None:
        super().__init__()
        self.conv_prev_1x1 = ActConvBn(in_chs_left, out_chs_left)
        self.conv_1x1 = ActConvBn(in_chs_right, out_chs_right)
        self._add_reduction_ops(out_chs_left, out_chs_right)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        return self._reduce(self.conv_1x1(x), self.conv_prev_1x1(x_prev))


class _NASNetStage(CellStage):
    @staticmethod
    def step(cell: nn.Module, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A reduction cell leaves x_prev in place, so the cell after it still sees the last full-resolution output
        # (through its factorized reduction).
        if isinstance(cell, ReductionCell):
            return cell(x, x_prev), x_prev
        return cell(x, x_prev), x


class NASNetALarge(Backbone):
    """NASNet-A Large (N=6 normal cells per stack, 4032 final channels).

    Stages (``stages()``/``feature_info``): the stem conv (r2), the first stem cell (r4), then one stage per
    resolution (r8, r16, r32), each opening with its reduction cell; the three are ``CellStage`` views that map
    ``(x, x_prev)`` to ``(x, x_prev)``. Intermediate stage outputs are ReLU-activated, as every consumer cell
    activates them first (timm's ``forward_intermediates`` taps the same tensors).

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        stem_size: width of the stem conv.
        num_features: final width, 24x the width F of the first stack.
        cells_per_stack: normal cells per resolution (the paper's N).
        drop_rate: dropout before the classifier (the paper uses 0.5 when training).
    """

    classifier_attr = "last_linear"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_size: int = 96,
        num_features: int = 4032,
        cells_per_stack: int = 6,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_features, self.drop_rate = num_classes, num_features, drop_rate
        c = num_features // 24
        self.conv0 = ConvNormAct(in_chans, stem_size, 3, stride=2, padding=0, norm_layer=_BN, act_layer=None)
        self.cell_stem_0 = CellStem0(stem_size, c // 4)
        self.cell_stem_1 = CellStem1(stem_size, c // 2)
        # Forward order of the cells: each reads (x, x_prev) (see _NASNetStage.step for a reduction cell's).
        self.layer_names = ["cell_stem_1"]
        prev_chs, cur_chs, idx = c, 2 * c, 0
        for stack in range(3):
            w = c * 2**stack
            if stack > 0:
                name = f"reduction_cell_{stack - 1}"
                setattr(self, name, ReductionCell(prev_chs, w, cur_chs, w))
                cur_chs = 4 * w
                self.layer_names.append(name)
            for i in range(cells_per_stack):
                if i == 0:
                    cell: nn.Module = FirstCell(prev_chs, w // 2, cur_chs, w)
                else:
                    cell = NormalCell(prev_chs, w, cur_chs, w)
                setattr(self, f"cell_{idx}", cell)
                self.layer_names.append(f"cell_{idx}")
                prev_chs, cur_chs, idx = cur_chs, 6 * w, idx + 1
        self.act = nn.ReLU(inplace=True)
        self.last_linear = linear_or_identity(num_features, num_classes)
        n = cells_per_stack
        self._stage_ends = (f"cell_{n - 1}", f"cell_{2 * n - 1}", f"cell_{3 * n - 1}")
        self.feature_info = [
            FeatureInfo(stem_size, 2),
            FeatureInfo(c, 4),
            FeatureInfo(6 * c, 8),
            FeatureInfo(12 * c, 16),
            FeatureInfo(24 * c, 32),
        ]
        # conv0, cell_stem_0, then [cell_stem_1 + stack 0], [reduction_cell_0 + stack 1], [... + act]; the cell
        # stages map (x, x_prev) to (x, x_prev), so forward_stages runs them rather than a plain chain.
        self.set_stages(*cell_stages(self, ["conv0", "cell_stem_0"], _NASNetStage))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv0, cell_stem_0, *stages = self._stage_modules()
        x_prev = conv0(x)
        x = cell_stem_0(x_prev)
        outs = [x_prev, F.relu(x)]
        for i, stage in enumerate(stages):
            x, x_prev = stage(x, x_prev)
            outs.append(F.relu(x) if i < len(stages) - 1 else self.act(x))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@register_model(
    family="nasnet",
    paper="Learning Transferable Architectures for Scalable Image Recognition",
    arxiv="1707.07012",
    year=2018,
    num_params=88_753_150,
    timm="nasnetalarge.tf_in1k",
    input_size=(3, 331, 331),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    crop_pct=0.911,
    first_conv="conv0.conv",
    classifier="last_linear",
    paper_params=88_900_000,
    paper_macs=23_800_000_000,
    min_size=32,
    aliases=("nasnet_large",),
)
def nasnetalarge(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> NASNetALarge:
    """NASNet-A Large (6 @ 4032), 331x331 ImageNet weights from timm.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate`` (dropout before the classifier).
    """
    return NASNetALarge(num_classes=num_classes, in_chans=in_chans, **kwargs)
