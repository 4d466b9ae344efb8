"""HRNet for image classification: parallel multi-resolution branches, repeatedly fused.

Paper: Jingdong Wang, Ke Sun, Tianheng Cheng, Borui Jiang, Chaorui Deng, Yang Zhao, Dong Liu, Yadong Mu, Mingkui Tan,
Xinggang Wang, Wenyu Liu, Bin Xiao, "Deep High-Resolution Representation Learning for Visual Recognition",
arXiv:1908.07919, TPAMI 2020.

Weights: timm ``hrnet_w18_small.ms_in1k``, ``hrnet_w18.ms_aug_in1k``, ``hrnet_w32.ms_in1k`` (Microsoft's
HRNet-Image-Classification checkpoints). Module names mirror timm's ``hrnet.py`` so its checkpoints load with no
remapping.

Paper numbers (ImageNet, 224x224; the paper's classification table and the authors' HRNet-Image-Classification
model table): HRNet-W18-C-Small-v1 13.2M parameters, HRNet-W18-C 21.3M, HRNet-W32-C 41.2M. The reported
1.49 / 3.99 / 8.31 GFLOPs are ~7% below the convolution multiply-adds of these very networks (1.60 / 4.28 / 8.92 G
by ``torch.utils.flop_counter`` at 224x224; timm lists 1.61 / 4.32 / 8.97), more than the 5% the paper test allows,
so only the parameter counts are checked against the paper.

Layout: a two-conv stride-4 stem, stage 1 (bottleneck blocks on one branch), then stages 2-4, which add a branch at
half the lowest resolution (a transition) and run HighResolutionModules: residual blocks per branch, then every
branch receives the sum of all branches, up- or down-sampled. The classification head of the paper ("HRNet-C")
widens each of the four branches with a bottleneck (incre modules), merges them from high to low resolution by
strided convs (downsample modules) and lifts the result to 2048 channels (final layer).

Stages (``stages()``): stem (r4), layer1 (r4), then stage 2, 3, 4 each with the transition before it, then the
fusion head (incre + downsample + final layer, r32, 2048 channels) as the last stage, so ``forward_features`` is
the 2048-channel map that timm pools. A multi-branch stage outputs a list of branches; ``forward_stages`` reports
its lowest-resolution (newest) branch, which every fusion has already mixed with all the others, so the stage
outputs form an ordinary r4/r4/r8/r16/r32/r32 pyramid and ``feature_info`` describes those tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, StageView, linear_or_identity
from zoo._registry import register_model

_HEAD_CHANNELS = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual (timm's ResNet ``BasicBlock`` keys)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual (timm's ResNet ``Bottleneck`` keys)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.act3(self.bn3(self.conv3(x)) + shortcut)


Block = type[BasicBlock] | type[Bottleneck]
BLOCKS: dict[str, Block] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def make_layer(block: Block, in_chs: int, planes: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first projects the shortcut when the shape changes."""
    downsample = None
    if stride != 1 or in_chs != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(in_chs, planes * block.expansion, 1, stride, bias=False), nn.BatchNorm2d(planes * block.expansion)
        )
    layers = [block(in_chs, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int, relu: bool, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_chs),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Residual blocks on every branch, then the multi-resolution fusion (paper Fig. 3).

    Branch ``i`` of the output sums all branches brought to its resolution: lower ones by 1x1 conv-BN and nearest
    upsampling, higher ones by a chain of stride-2 3x3 conv-BNs (ReLU between them).
    """

    def __init__(self, block: Block, num_blocks: tuple[int, ...], in_chs: list[int], channels: tuple[int, ...]) -> None:
        super().__init__()
        n = self.num_branches = len(channels)
        self.branches = nn.ModuleList(make_layer(block, in_chs[i], channels[i], num_blocks[i]) for i in range(n))
        chs = self.out_chs = [c * block.expansion for c in channels]
        if n == 1:
            self.fuse_layers: nn.Module = nn.Identity()
        else:
            fuse_layers = []
            for i in range(n):
                row: list[nn.Module] = []
                for j in range(n):
                    if j > i:
                        up = nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")
                        row.append(nn.Sequential(*_conv_bn(chs[j], chs[i], 1, 1, relu=False), up))
                    elif j == i:
                        row.append(nn.Identity())
                    else:
                        downs = [_conv_bn(chs[j], chs[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                        row.append(nn.Sequential(*downs, _conv_bn(chs[j], chs[i], 3, 2, relu=False)))
                fuse_layers.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(fuse_layers)
        self.fuse_act = nn.ReLU(False)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        if self.num_branches == 1:
            return x
        out = []
        for row in self.fuse_layers:
            y = row[0](x[0])
            for j in range(1, self.num_branches):
                y = y + row[j](x[j])
            out.append(self.fuse_act(y))
        return out


def make_transition(pre_chs: list[int], cur_chs: list[int]) -> nn.ModuleList:
    """Adapt existing branches (3x3 conv where the width changes) and grow new ones from the lowest resolution."""
    layers: list[nn.Module] = []
    for i, c in enumerate(cur_chs):
        if i < len(pre_chs):
            layers.append(_conv_bn(pre_chs[i], c, 3, 1, relu=True) if c != pre_chs[i] else nn.Identity())
        else:
            n_down = i + 1 - len(pre_chs)
            layers.append(
                nn.Sequential(
                    *[_conv_bn(pre_chs[-1], c if k == n_down - 1 else pre_chs[-1], 3, 2, True) for k in range(n_down)]
                )
            )
    return nn.ModuleList(layers)


class _TransitionStage(StageView):
    """A transition then a stage's HighResolutionModules: a view on the model's ``transition{s-1}`` and ``stage{s}``."""

    def __init__(self, owner: nn.Module, s: int) -> None:
        super().__init__(owner, {"transition": f"transition{s - 1}", "stage": f"stage{s}"})

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        yl = x if isinstance(x, list) else [x]
        # timm applies a non-identity transition to the newest branch (the only case the configs have is a new
        # branch, where that is the branch it grows from)
        xl = [yl[i] if isinstance(t, nn.Identity) else t(yl[-1]) for i, t in enumerate(self.transition)]
        return self.stage(xl)


class _FusionHead(StageView):
    """HRNet-C's head trunk: widen each branch, merge high to low by strided convs, lift to 2048 channels.

    A view on the model's ``incre_modules``, ``downsamp_modules`` and ``final_layer`` (timm's keys).
    """

    def __init__(self, owner: nn.Module) -> None:
        names = ("incre_modules", "downsamp_modules", "final_layer")
        super().__init__(owner, {n: n for n in names})

    def forward(self, yl: list[torch.Tensor]) -> torch.Tensor:
        y = self.incre_modules[0](yl[0])
        for i in range(1, len(self.incre_modules)):
            y = self.incre_modules[i](yl[i]) + self.downsamp_modules[i - 1](y)
        return self.final_layer(y)


class HighResolutionNet(Backbone):
    """HRNet with the classification head (HRNet-C).

    Args:
        cfg: per stage (``stage1``..``stage4``): ``(num_modules, block, num_blocks, num_channels)``.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        head_conv_bias: bias in the head's downsample / final convs (the released checkpoints have it).
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        cfg: dict[str, tuple],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        head_conv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_features, self.drop_rate = num_classes, 2048, drop_rate
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)

        _, block, num_blocks, channels = cfg["stage1"]
        self.layer1 = make_layer(BLOCKS[block], 64, channels[0], num_blocks[0])
        pre_chs = [channels[0] * BLOCKS[block].expansion]
        self.feature_info = [FeatureInfo(64, 4), FeatureInfo(pre_chs[0], 4)]
        for s in (2, 3, 4):
            num_modules, block, num_blocks, channels = cfg[f"stage{s}"]
            cur_chs = [c * BLOCKS[block].expansion for c in channels]
            setattr(self, f"transition{s - 1}", make_transition(pre_chs, cur_chs))
            modules = []
            for _ in range(num_modules):
                modules.append(HighResolutionModule(BLOCKS[block], num_blocks, cur_chs, channels))
                cur_chs = modules[-1].out_chs
            setattr(self, f"stage{s}", nn.Sequential(*modules))
            pre_chs = cur_chs
            self.feature_info.append(FeatureInfo(pre_chs[-1], 4 * 2 ** (len(pre_chs) - 1)))

        head_chs = [c * Bottleneck.expansion for c in _HEAD_CHANNELS]
        self.incre_modules = nn.ModuleList(
            make_layer(Bottleneck, c, _HEAD_CHANNELS[i], 1) for i, c in enumerate(pre_chs)
        )
        self.downsamp_modules = nn.ModuleList(
            _conv_bn(head_chs[i], head_chs[i + 1], 3, 2, relu=True, bias=head_conv_bias)
            for i in range(len(pre_chs) - 1)
        )
        self.final_layer = _conv_bn(head_chs[-1], self.num_features, 1, 1, relu=True, bias=head_conv_bias)
        self.feature_info.append(FeatureInfo(self.num_features, 32))
        self.classifier = linear_or_identity(self.num_features, num_classes)

        for m in self.modules():  # timm's init: He (fan-out) convs, unit BN
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # stem, layer1, [transition1 + stage2], [transition2 + stage3], [transition3 + stage4], fusion head; the
        # groups are views, so every module keeps its top-level timm name
        self.set_stages(
            StageGroup(self, "conv1", "bn1", "act1", "conv2", "bn2", "act2"),
            "layer1",
            *(_TransitionStage(self, s) for s in (2, 3, 4)),
            _FusionHead(self),
        )

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output; a multi-branch stage reports its lowest-resolution branch."""
        outs = []
        for stage in self._stage_modules():
            x = stage(x)
            outs.append(x[-1] if isinstance(x, list) else x)
        return outs


def _cfg(width: int, small: bool = False) -> dict[str, tuple]:
    """Stage configs ``(num_modules, block, num_blocks, num_channels)`` of timm's ``cfg_cls``."""
    w = (width, 2 * width, 4 * width, 8 * width)
    if small:  # HRNet-W18-C-Small-v1: one module per stage, two blocks per branch
        return {
            "stage1": (1, "BOTTLENECK", (1,), (32,)),
            "stage2": (1, "BASIC", (2, 2), w[:2]),
            "stage3": (1, "BASIC", (2, 2, 2), w[:3]),
            "stage4": (1, "BASIC", (2, 2, 2, 2), w),
        }
    return {
        "stage1": (1, "BOTTLENECK", (4,), (64,)),
        "stage2": (1, "BASIC", (4, 4), w[:2]),
        "stage3": (4, "BASIC", (4, 4, 4), w[:3]),
        "stage4": (3, "BASIC", (4, 4, 4, 4), w),
    }


_COMMON = dict(
    family="hrnet",
    paper="Deep High-Resolution Representation Learning for Visual Recognition",
    arxiv="1908.07919",
    year=2020,
    first_conv="conv1",
    classifier="classifier",
    min_size=32,
)


@register_model(
    **_COMMON,
    num_params=13_187_464,
    timm="hrnet_w18_small.ms_in1k",
    paper_params=13_200_000,
    aliases=("hrnet_w18_small_v1",),
)
def hrnet_w18_small(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> HighResolutionNet:
    """HRNet-W18-C-Small-v1 (branch widths 16/32/64/128, one module per stage).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate``.
    """
    return HighResolutionNet(_cfg(16, small=True), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_COMMON,
    num_params=21_299_004,
    timm="hrnet_w18.ms_aug_in1k",
    crop_pct=0.95,
    paper_params=21_300_000,
    aliases=("hrnet_w18_c",),
)
def hrnet_w18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> HighResolutionNet:
    """HRNet-W18-C (branch widths 18/36/72/144).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate``.
    """
    return HighResolutionNet(_cfg(18), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_COMMON,
    num_params=41_232_680,
    timm="hrnet_w32.ms_in1k",
    paper_params=41_200_000,
    aliases=("hrnet_w32_c",),
)
def hrnet_w32(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> HighResolutionNet:
    """HRNet-W32-C (branch widths 32/64/128/256).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: ``drop_rate``.
    """
    return HighResolutionNet(_cfg(32), num_classes=num_classes, in_chans=in_chans, **kwargs)
