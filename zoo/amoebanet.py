"""AmoebaNet-A, the cell found by regularized (aging) evolution.

Paper: Esteban Real, Alok Aggarwal, Yanping Huang, Quoc V. Le, "Regularized Evolution for Image Classifier
Architecture Search", arXiv:1802.01548, AAAI 2019.

Weights: none (native only). timm and torchvision have no AmoebaNet; the paper's checkpoints are TF-Hub modules.

Configuration: AmoebaNet-A (N=6, F=190) at 331x331, the row of the paper's Table 2 (ImageNet) that is comparable to
NASNet-A Large and PNASNet-5 Large: 86.7M parameters, 23.1B mult-adds, 82.8 / 96.1 top-1 / top-5. This code gives
86,718,797 parameters and 23.13B multiply-adds; it also reproduces the other rows: (N=6, F=448) 468.2M parameters
(paper 469M) and the mobile (N=4, F=50) at 224x224 5.09M / 555M (paper 5.1M / 555M, Table 3).

The normal and reduction cells (paper Fig. 4) are built from their genotype as in the authors' TensorFlow code
(``tensorflow/tpu`` ``models/official/amoeba_net``: ``model_specs.py`` for the cells, ``network_utils.BaseCell`` for
how a genotype becomes layers): each of five combinations adds two ops applied to two earlier hidden states; the
cell output concatenates the hidden states no combination consumed. The network is that code's ImageNet model: a
32-channel 3x3 stride-2 stem conv, two reduction cells as stem (widths F/4, F/2), then three stacks of N normal
cells (widths F, 2F, 4F) with a reduction cell before the second and third. Differences from that code, none of
which changes a parameter count: the auxiliary head (training only) is left out; a factorized reduction to an odd
width (F/2 = 95 here, which the TF code would reject) gives its first path the extra channel; and as in timm's
NASNet ports, zero padding counts in the stride-2 average pools.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, register_model
from zoo.layers import (
    ActConvBn,
    BranchSeparables,
    ConvNormAct,
    DropPath,
    FactorizedReduction,
    cell_stages,
    create_conv2d_same,
    create_pool2d_same,
)

_BN = partial(nn.BatchNorm2d, eps=1e-3)


class Genotype(NamedTuple):
    """A cell as the TF code specifies it (its flat lists, paired here by combination).

    Combination ``i`` applies ``ops[i][0]``/``ops[i][1]`` to hidden states ``inputs[i][0]``/``inputs[i][1]`` and
    sums them into hidden state ``i + 2`` (states 0 and 1 are the current and previous cell inputs); the output
    concatenates the states whose ``used`` flag is 0.
    """

    ops: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[int, int], ...]
    used: tuple[int, ...]


# model_specs.py, cell_name 'amoeba_net_a' (a.k.a. 'evol_net_g').
AMOEBA_A_NORMAL = Genotype(
    ops=(
        ("avg_pool_3x3", "max_pool_3x3"),
        ("separable_3x3_2", "none"),
        ("none", "avg_pool_3x3"),
        ("separable_3x3_2", "separable_5x5_2"),
        ("avg_pool_3x3", "separable_3x3_2"),
    ),
    inputs=((0, 0), (1, 1), (0, 1), (0, 2), (5, 0)),
    used=(1, 0, 1, 0, 0, 1, 0),
)
AMOEBA_A_REDUCTION = Genotype(
    ops=(
        ("separable_3x3_2", "avg_pool_3x3"),
        ("max_pool_3x3", "separable_7x7_2"),
        ("max_pool_3x3", "max_pool_3x3"),
        ("separable_3x3_2", "1x7_7x1"),
        ("avg_pool_3x3", "separable_7x7_2"),
    ),
    inputs=((1, 0), (0, 2), (1, 0), (4, 0), (1, 0)),
    used=(1, 1, 0, 0, 0, 0, 0),
)


class _PoolProject(nn.Sequential):
    """Pooling, then a 1x1 conv-BN where the input width differs from the cell's (only in the first stem cell)."""

    def __init__(self, kind: str, stride: int, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.pool = create_pool2d_same(kind, 3, stride)
        if in_chs != out_chs:
            self.conv = create_conv2d_same(in_chs, out_chs, 1)
            self.bn = _BN(out_chs)


def make_op(op: str, in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """One genotype op as layers, following ``network_utils.BaseCell._apply_operation``."""
    if op.startswith("separable_"):  # 'separable_KxK_2': two ReLU-sepconv-BN layers, the first strided
        return BranchSeparables(in_chs, out_chs, int(op.split("_")[1][0]), stride, mid_chs=out_chs)
    if op.endswith("pool_3x3"):
        return _PoolProject(op.split("_")[0], stride, in_chs, out_chs)
    if op == "none":
        return nn.Identity() if stride == 1 and in_chs == out_chs else ActConvBn(in_chs, out_chs, 1, stride)
    if op == "1x7_7x1":  # bottlenecked to a quarter of the width around the factorized 7x7, if that leaves any
        mid = out_chs // 4
        if mid < 1:
            return nn.Sequential(
                ActConvBn(in_chs, out_chs, (1, 7), (1, stride)), ActConvBn(out_chs, out_chs, (7, 1), (stride, 1))
            )
        return nn.Sequential(
            ActConvBn(in_chs, mid, 1),
            ActConvBn(mid, mid, (1, 7), (1, stride)),
            ActConvBn(mid, mid, (7, 1), (stride, 1)),
            ActConvBn(mid, out_chs, 1),
        )
    raise ValueError(f"unknown AmoebaNet op {op!r}")


class AmoebaCell(nn.Module):
    """A normal or reduction cell built from a :class:`Genotype`.

    Args:
        genotype: the cell's ops and wiring.
        prev_chs: channels of the previous cell's input ``x_prev`` (hidden state 1).
        cur_chs: channels of the input ``x`` (squeezed to ``chs`` as hidden state 0).
        chs: the cell width F; the output has ``chs`` times the number of unused states channels.
        reduction: ops on the two inputs stride by 2.
        prev_resolution: ``x_prev`` has twice the resolution of ``x`` (factorized reduction), ``None`` when the
            cell has no previous input (the first stem cell: ``x`` itself is used, unprocessed).
        drop_path_rate: stochastic depth on every op output but the identity (the paper's drop-connect).
    """

    def __init__(
        self,
        genotype: Genotype,
        prev_chs: int,
        cur_chs: int,
        chs: int,
        reduction: bool,
        prev_resolution: int | None = 1,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.genotype, self.has_prev = genotype, prev_resolution is not None
        if prev_resolution is None:
            prev_chs = cur_chs
            self.conv_prev_1x1: nn.Module = nn.Identity()
        elif prev_resolution == 2:
            self.conv_prev_1x1 = FactorizedReduction(prev_chs, chs)
            prev_chs = chs
        elif prev_chs != chs:
            self.conv_prev_1x1 = ActConvBn(prev_chs, chs)
            prev_chs = chs
        else:
            self.conv_prev_1x1 = nn.Identity()
        self.conv_1x1 = ActConvBn(cur_chs, chs)
        state_chs = [chs, prev_chs] + [chs] * 5
        for i, (ops, srcs) in enumerate(zip(genotype.ops, genotype.inputs)):
            for side, op, src in zip(("left", "right"), ops, srcs):
                stride = 2 if reduction and src < 2 else 1  # only the cell inputs are strided
                self.add_module(f"comb_iter_{i}_{side}", make_op(op, state_chs[src], chs, stride))
        self.concat = [i for i, u in enumerate(genotype.used) if not u]
        if any(state_chs[i] != chs or (reduction and i < 2) for i in self.concat):
            raise NotImplementedError("concatenating a cell input of another shape needs a factorized reduction")
        self.out_chs = chs * len(self.concat)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        states = [self.conv_1x1(x), self.conv_prev_1x1(x_prev if self.has_prev else x)]
        for i, srcs in enumerate(self.genotype.inputs):
            h = []
            for side, src in zip(("left", "right"), srcs):
                op = getattr(self, f"comb_iter_{i}_{side}")
                h.append(states[src] if isinstance(op, nn.Identity) else self.drop_path(op(states[src])))
            states.append(h[0] + h[1])
        return torch.cat([states[i] for i in self.concat], 1)


class AmoebaNet(Backbone):
    """AmoebaNet (ImageNet layout of the authors' TF code) for a normal and a reduction genotype.

    Stages (``stages()``/``feature_info``): the stem conv (r2), the first stem cell (r4), then [cell_stem_1 +
    stack 0] (r8), [reduction_cell_0 + stack 1] (r16), [reduction_cell_1 + stack 2 + final ReLU] (r32), the last
    three ``CellStage`` views that map ``(x, x_prev)`` to ``(x, x_prev)``. Intermediate stage outputs are
    ReLU-activated (every consumer applies that ReLU first).

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        num_cells: normal cells per stack (the paper's N).
        width: the width F of the first stack (doubled by each reduction).
        stem_size: channels of the stem conv.
        normal, reduction: the cells' genotypes.
        drop_rate: dropout before the classifier (the TF ImageNet recipe keeps 0.5).
        drop_path_rate: drop-connect rate of the cell ops (the paper trains with 0.3 = keep prob 0.7).
    """

    classifier_attr = "last_linear"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        num_cells: int = 6,
        width: int = 190,
        stem_size: int = 32,
        normal: Genotype = AMOEBA_A_NORMAL,
        reduction: Genotype = AMOEBA_A_REDUCTION,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.conv0 = ConvNormAct(in_chans, stem_size, 3, stride=2, padding=0, norm_layer=_BN, act_layer=None)
        cell = partial(AmoebaCell, drop_path_rate=drop_path_rate)
        self.cell_stem_0 = cell(reduction, stem_size, stem_size, width // 4, True, prev_resolution=None)
        # (name, genotype, width, reduction, prev_resolution) in forward order; every cell reads (x, x_prev) of the
        # two cells before it, the cell after a reduction through a factorized reduction of x_prev.
        plan = [("cell_stem_1", reduction, width // 2, True, 2)]
        for stack in range(3):
            w = width * 2**stack
            if stack > 0:
                plan.append((f"reduction_cell_{stack - 1}", reduction, w, True, 1))
            plan += [(f"cell_{stack * num_cells + i}", normal, w, False, 2 if i == 0 else 1) for i in range(num_cells)]
        prev_chs, cur_chs = stem_size, self.cell_stem_0.out_chs
        self.layer_names = []
        for name, genotype, w, is_reduction, prev_res in plan:
            c = cell(genotype, prev_chs, cur_chs, w, is_reduction, prev_res)
            setattr(self, name, c)
            self.layer_names.append(name)
            prev_chs, cur_chs = cur_chs, c.out_chs
        self.num_features = cur_chs
        self.act = nn.ReLU(inplace=True)
        self.last_linear = linear_or_identity(self.num_features, num_classes)
        self._stage_ends = tuple(f"cell_{(s + 1) * num_cells - 1}" for s in range(3))
        self.feature_info = [FeatureInfo(stem_size, 2), FeatureInfo(self.cell_stem_0.out_chs, 4)] + [
            FeatureInfo(getattr(self, n).out_chs, 8 * 2**s) for s, n in enumerate(self._stage_ends)
        ]
        # conv0, cell_stem_0, then three CellStages ((x, x_prev) -> (x, x_prev), run by forward_stages)
        self.set_stages(*cell_stages(self, ["conv0", "cell_stem_0"]))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv0, cell_stem_0, *stages = self._stage_modules()
        x_prev = conv0(x)
        x = cell_stem_0(x_prev, x_prev)
        outs = [x_prev, F.relu(x)]
        for i, stage in enumerate(stages):
            x, x_prev = stage(x, x_prev)
            outs.append(F.relu(x) if i < len(stages) - 1 else self.act(x))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@register_model(
    family="amoebanet",
    paper="Regularized Evolution for Image Classifier Architecture Search",
    arxiv="1802.01548",
    year=2019,
    num_params=86_718_797,
    input_size=(3, 331, 331),
    mean=INCEPTION_MEAN,  # the TF code's Inception preprocessing: scale to [-1, 1], central crop 0.875
    std=INCEPTION_STD,
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv0.conv",
    classifier="last_linear",
    paper_params=86_700_000,
    paper_macs=23_100_000_000,
    min_size=32,
    aliases=("amoebanet",),
)
def amoebanet_a(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AmoebaNet:
    """AmoebaNet-A (N=6, F=190) at 331x331, native only (no pretrained weights anywhere).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate``, ``drop_path_rate``, ``num_cells``, ``width`` (other rows of the paper's tables,
            e.g. ``num_cells=6, width=448`` or the mobile ``num_cells=4, width=50``).
    """
    return AmoebaNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
