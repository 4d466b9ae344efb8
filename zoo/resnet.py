"""ResNet and its direct descendants: ResNeXt, Wide ResNet, SE-ResNet(X)t, SENet-154, dilated and deformable ResNet.

Papers:
    * He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", arXiv:1512.03385 (2015).
      ResNet-18/34/50/101/152. Multiply-adds: Table 1 ("FLOPs" row, counted as multiply-adds).
    * Zagoruyko, Komodakis, "Wide Residual Networks", arXiv:1605.07146 (2016). WRN-50-2-bottleneck; parameters:
      the ImageNet table (68.9M).
    * Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural Networks",
      arXiv:1611.05431 (2016). ResNeXt-50 (32x4d): Table 1 (25.0M parameters, 4.2 GFLOPs).
    * Hu, Shen, Albanie, Sun, Wu, "Squeeze-and-Excitation Networks", arXiv:1709.01507 (2017). SE-ResNet-50,
      SE-ResNeXt-50, SENet-154. Multiply-adds: Table 2 (SE-ResNeXt-50: 4.25 GFLOPs); SE-ResNet-50's parameters:
      Section 4 (~2.5M on top of ResNet-50's ~25M).
    * Yu, Koltun, Funkhouser, "Dilated Residual Networks", arXiv:1705.09914 (2017), after Yu & Koltun,
      "Multi-Scale Context Aggregation by Dilated Convolutions", arXiv:1511.07122 (2015). DRN-A-50 (ResNet-50 with
      the strides of the last two stages turned into dilation, output stride 8); parameters: Table 1 (25.6M).
    * Dai, Qi, Xiong, Li, Zhang, Hu, Wei, "Deformable Convolutional Networks", arXiv:1703.06211 (2017).
      Deformable convolution v1 in the 3x3 convs of res5 (the paper's default, "last three layers").

The paper counts are set only where the weights' architecture is the paper's: the ResNet and SE papers count
ResNet-50 with the stride on the first 1x1 conv of a block (3.8 / 3.86 GFLOPs); every checkpoint here (torchvision,
timm) is "v1.5", with the stride on the 3x3 conv (4.1 GMACs), so ResNet-50 and SE-ResNet-50 carry no MAC count.

Weights: timm ``resnet{18,34,50}.a1_in1k``, ``resnet{101,152}.a1h_in1k``, ``wide_resnet50_2.racm_in1k``,
``wide_resnet101_2.tv_in1k``, ``resnext50_32x4d.a1h_in1k``, ``resnext101_32x8d.tv_in1k``, ``seresnet50.a1_in1k``,
``seresnext50_32x4d.racm_in1k``, ``senet154.gluon_in1k`` (timm's ``resnet.py`` SENet-154 from MXNet Gluon, whose
keys are this module's; ``legacy_senet154`` is the Caffe port with another stem and is not used); torchvision
``resnet18``..``resnet152``, ``wide_resnet{50,101}_2``, ``resnext50_32x4d``, ``resnext101_32x8d``, all with the
same keys (timm's resnet.py began as a copy of torchvision's). The dilated and deformable variants load ResNet-50's
weights unchanged (the deformable offsets start at zero and are the only new keys).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import StateDict, register_model
from zoo.layers import DeformableConv2d, DropPath, NormLayer, SqueezeExcite, dilate_strides, get_norm_layer

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "convert_torchvision"]


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or projection) shortcut: ResNet-18/34's block (paper Fig. 2)."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        se: bool = False,
        conv3x3: type[nn.Module] = nn.Conv2d,
        drop_path: float = 0.0,
        **_: Any,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.se = SqueezeExcite(planes) if se else None
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so the block starts as its shortcut (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, with the stride on the 3x3 ("v1.5", as every checkpoint).

    ``groups`` and ``base_width`` give ResNeXt's cardinality and width per group (width = planes * base_width / 64
    * groups); ``reduce_first`` narrows the first 1x1 (SENet-154); ``conv3x3`` may be a deformable conv.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        se: bool = False,
        conv3x3: type[nn.Module] = nn.Conv2d,
        drop_path: float = 0.0,
        groups: int = 1,
        base_width: int = 64,
        reduce_first: int = 1,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * groups)
        first_planes = width // reduce_first
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, first_planes, 1, bias=False)
        self.bn1 = norm_layer(first_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(first_planes, width, 3, stride, first_dilation, first_dilation, groups, bias=False)
        self.bn2 = norm_layer(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.se = SqueezeExcite(out_chs) if se else None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so the block starts as its shortcut (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act3(x + shortcut)


def _downsample(
    in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int, norm_layer: NormLayer
) -> nn.Sequential:
    """Projection shortcut (the paper's option B): strided conv + norm, keys ``downsample.0`` / ``downsample.1``."""
    kernel_size = 1 if stride == 1 and dilation == 1 else kernel_size
    dilation = dilation if kernel_size > 1 else 1
    padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, bias=False), norm_layer(out_chs)
    )


def _stem_conv(in_chans: int, out_chs: int, deep: bool, norm: NormLayer) -> nn.Module:
    """The stem's convolution: one 7x7, or (ResNet-D's deep stem) three 3x3 with norms and ReLUs between them."""
    if not deep:
        return nn.Conv2d(in_chans, out_chs, 7, 2, 3, bias=False)
    return nn.Sequential(  # indices 0..6 as timm's Sequential, so keys read conv1.0, conv1.1, conv1.3, ...
        nn.Conv2d(in_chans, 64, 3, 2, 1, bias=False),
        norm(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, 1, 1, bias=False),
        norm(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, out_chs, 3, 1, 1, bias=False),
    )


class ResNet(Backbone):
    """ResNet / ResNeXt / Wide ResNet / SE-ResNet(X)t / SENet-154, with optional dilation and deformable convs.

    Module names are timm's (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``), which are also torchvision's.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        groups: cardinality of the 3x3 convs (ResNeXt).
        base_width: width per group (64 for ResNet, 128 for Wide ResNet-50-2, 4 for ResNeXt 32x4d).
        deep_stem: three 3x3 convs (64, 64, 128) instead of one 7x7 (SENet-154).
        reduce_first: narrowing of each bottleneck's first 1x1 conv (2 in SENet-154).
        down_kernel_size: kernel of the projection shortcuts after the first stage (3 in SENet-154).
        se: squeeze-and-excitation in every block.
        output_stride: 32, 16 or 8; below 32 the last strides become dilation (DRN).
        deformable_stages: stages (1-4) whose 3x3 convs are deformable (Dai et al. 2017).
        norm_layer: ``"batchnorm"`` (default), ``"groupnorm"`` (Wu & He's ResNet-50 setting) or a callable.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks (Huang et al. 2016).
        zero_init_last: zero the last norm of each residual branch.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        base_width: int = 64,
        deep_stem: bool = False,
        reduce_first: int = 1,
        down_kernel_size: int = 1,
        se: bool = False,
        output_stride: int = 32,
        deformable_stages: tuple[int, ...] = (),
        norm_layer: str | NormLayer | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        norm = get_norm_layer(norm_layer)
        self.num_classes, self.drop_rate = num_classes, drop_rate

        in_chs = 128 if deep_stem else 64
        self.conv1 = _stem_conv(in_chans, in_chs, deep_stem, norm)
        self.bn1 = norm(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = [FeatureInfo(in_chs, 4)]

        plan = dilate_strides((1, 2, 2, 2), output_stride, net_stride=4)
        total, idx, net_stride, prev_dilation = sum(layers), 0, 4, 1
        for i, ((stride, dilation), planes, depth) in enumerate(zip(plan, (64, 128, 256, 512), layers)):
            out_chs = planes * block.expansion
            downsample = None
            if stride != 1 or in_chs != out_chs:
                downsample = _downsample(in_chs, out_chs, down_kernel_size, stride, prev_dilation, norm)
            conv3x3 = DeformableConv2d if i + 1 in deformable_stages else nn.Conv2d
            blocks = []
            for j in range(depth):
                blocks.append(
                    block(
                        in_chs,
                        planes,
                        stride if j == 0 else 1,
                        downsample if j == 0 else None,
                        dilation=dilation,
                        first_dilation=prev_dilation,  # the first block bridges the previous stage's dilation
                        norm_layer=norm,
                        se=se,
                        conv3x3=conv3x3,
                        drop_path=drop_path_rate * idx / max(total - 1, 1),
                        groups=groups,
                        base_width=base_width,
                        reduce_first=reduce_first,
                    )
                )
                in_chs, prev_dilation, idx = out_chs, dilation, idx + 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            net_stride *= stride
            self.feature_info.append(FeatureInfo(out_chs, net_stride))

        self.num_features = in_chs
        self.fc = linear_or_identity(in_chs, num_classes)
        self._init_weights(zero_init_last)
        # The stem's modules stay top-level (timm's conv1/bn1 keys); a StageGroup runs them as one stage.
        stem = StageGroup(self, "conv1", "bn1", "act1", "maxpool")
        self.set_stages(stem, "layer1", "layer2", "layer3", "layer4")

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformableConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, DeformableConv2d):
                m.reset_offset()  # the loop above re-drew the offset conv; it must start at zero
            elif zero_init_last and hasattr(m, "zero_init_last"):
                m.zero_init_last()


_TV_KEY = re.compile(
    r"(conv1|bn1|fc|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"
)


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """torchvision ResNet checkpoint -> native keys.

    timm's ResNet (and so this one) kept torchvision's names, so the map is the identity; keys of any other layout
    are refused, so a foreign checkpoint fails here rather than half-loading.
    """
    foreign = [k for k in state_dict if not _TV_KEY.fullmatch(k)]
    if foreign:
        raise KeyError(f"not a torchvision ResNet checkpoint: unexpected keys {foreign[:3]}")
    return dict(state_dict)


def _paper(title: str, arxiv: str, year: int) -> dict[str, Any]:
    # Every variant runs down to 32x32 inputs (1x1 after the last stride), which keeps the tests fast.
    return dict(family="resnet", paper=title, arxiv=arxiv, year=year, min_size=32)


_RESNET = _paper("Deep Residual Learning for Image Recognition", "1512.03385", 2015)
_WRN = _paper("Wide Residual Networks", "1605.07146", 2016)
_RESNEXT = _paper("Aggregated Residual Transformations for Deep Neural Networks", "1611.05431", 2016)
_SE = _paper("Squeeze-and-Excitation Networks", "1709.01507", 2017)
_DRN = _paper("Dilated Residual Networks", "1705.09914", 2017)
_DCN = _paper("Deformable Convolutional Networks", "1703.06211", 2017)
# timm's "ResNet strikes back" (a1/a1h) and RandAugment/CutMix (racm, ra) recipes evaluate bicubic at crop 0.95
# or 0.875; the torchvision ports (tv) are bilinear at 0.875 (the ArchSpec defaults).
_RSB = dict(interpolation="bicubic", crop_pct=0.95)
_TV = dict(convert_torchvision=convert_torchvision)


@register_model(
    **_RESNET,
    **_RSB,
    **_TV,
    num_params=11_689_512,
    timm="resnet18.a1_in1k",
    torchvision="resnet18",
    paper_macs=1_800_000_000,
)
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-18 (paper Table 1): basic blocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_RESNET,
    **_RSB,
    **_TV,
    num_params=21_797_672,
    timm="resnet34.a1_in1k",
    torchvision="resnet34",
    paper_macs=3_600_000_000,
)
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-34 (paper Table 1): basic blocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_RESNET, **_RSB, **_TV, num_params=25_557_032, timm="resnet50.a1_in1k", torchvision="resnet50")
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-50 (paper Table 1): bottlenecks [3, 4, 6, 3]. No MAC count: the paper's 3.8G is ResNet v1 (see top)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_RESNET,
    **_RSB,
    **_TV,
    num_params=44_549_160,
    timm="resnet101.a1h_in1k",
    torchvision="resnet101",
    paper_macs=7_600_000_000,
)
def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-101 (paper Table 1): bottlenecks [3, 4, 23, 3]."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_RESNET,
    **_RSB,
    **_TV,
    num_params=60_192_808,
    timm="resnet152.a1h_in1k",
    torchvision="resnet152",
    paper_macs=11_300_000_000,
)
def resnet152(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-152 (paper Table 1): bottlenecks [3, 8, 36, 3]."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_WRN,
    **_TV,
    num_params=68_883_240,
    timm="wide_resnet50_2.racm_in1k",
    torchvision="wide_resnet50_2",
    interpolation="bicubic",
    paper_params=68_900_000,
    aliases=("wrn50_2", "wide_resnet50"),
)
def wide_resnet50_2(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """WRN-50-2-bottleneck: ResNet-50 with every bottleneck's inner width doubled (outer widths unchanged)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), base_width=128, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_WRN,
    **_TV,
    num_params=126_886_696,
    timm="wide_resnet101_2.tv_in1k",
    torchvision="wide_resnet101_2",
    aliases=("wrn101_2", "wide_resnet101"),
)
def wide_resnet101_2(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """WRN-101-2-bottleneck (torchvision's; the paper trains only the 50-layer one on ImageNet)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), base_width=128, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_RESNEXT,
    **_RSB,
    **_TV,
    num_params=25_028_904,
    timm="resnext50_32x4d.a1h_in1k",
    torchvision="resnext50_32x4d",
    paper_params=25_000_000,
    paper_macs=4_200_000_000,
    aliases=("resnext50",),
)
def resnext50_32x4d(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNeXt-50 (32x4d), Table 1: ResNet-50 with 32 groups of 4 channels in each 3x3 (width 128 at stage 1)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), groups=32, base_width=4, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(
    **_RESNEXT,
    **_TV,
    num_params=88_791_336,
    timm="resnext101_32x8d.tv_in1k",
    torchvision="resnext101_32x8d",
)
def resnext101_32x8d(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNeXt-101 (32x8d): 32 groups of 8 channels (torchvision's; the paper's tables list 32x4d and 64x4d)."""
    return ResNet(
        Bottleneck, (3, 4, 23, 3), groups=32, base_width=8, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(
    **_SE,
    **_RSB,
    num_params=28_088_024,
    timm="seresnet50.a1_in1k",
    paper_params=27_500_000,
    aliases=("se_resnet50",),
)
def seresnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """SE-ResNet-50: ResNet-50 with squeeze-and-excitation (reduction 16) on each residual branch (paper Fig. 3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), se=True, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_SE,
    num_params=27_559_896,
    timm="seresnext50_32x4d.racm_in1k",
    interpolation="bicubic",
    paper_macs=4_250_000_000,
    aliases=("se_resnext50_32x4d",),
)
def seresnext50_32x4d(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """SE-ResNeXt-50 (32x4d): ResNeXt-50 with squeeze-and-excitation (paper Table 2)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), groups=32, base_width=4, se=True, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(
    **_SE,
    num_params=115_088_984,
    timm="senet154.gluon_in1k",
    interpolation="bicubic",
    first_conv="conv1.0",
    aliases=("se_net154",),
)
def senet154(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """SENet-154 (paper Appendix), the ILSVRC 2017 winner: SE-ResNeXt-152 (64x4d) with a three-3x3 stem, the first
    1x1 of each bottleneck halved and 3x3 stride-2 projection shortcuts."""
    return ResNet(
        Bottleneck,
        (3, 8, 36, 3),
        groups=64,
        base_width=4,
        deep_stem=True,
        reduce_first=2,
        down_kernel_size=3,
        se=True,
        num_classes=num_classes,
        in_chans=in_chans,
        **kwargs,
    )


@register_model(
    **_DRN,
    **_RSB,
    num_params=25_557_032,
    timm="resnet50.a1_in1k",
    timm_kwargs={"output_stride": 8},
    paper_params=25_600_000,
    aliases=("drn_a_50", "resnet50_os8"),
)
def resnet50_dilated(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """DRN-A-50: ResNet-50 whose last two stages dilate (2, 4) instead of striding, so features stay at 1/8.

    Same weights as ResNet-50 (dilation changes no shapes); ``output_stride=16`` dilates only the last stage.
    """
    kwargs.setdefault("output_stride", 8)
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_DCN,
    **_RSB,
    **_TV,
    num_params=25_805_918,
    timm="resnet50.a1_in1k",
    torchvision="resnet50",
    new_keys=("layer*.conv2.conv_offset.*",),
    aliases=("dcn_resnet50", "resnet50_deformable"),
)
def resnet50_dcn(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-50 with deformable 3x3 convs in res5 (``deformable_stages=(3, 4)`` adds res4).

    The offset convs start at zero, so with ResNet-50's weights the model computes exactly ResNet-50 until
    fine-tuning moves the offsets.
    """
    kwargs.setdefault("deformable_stages", (4,))
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)
