"""Blocks shared by two or more families.

Module attribute names follow timm's (``conv``/``bn`` in a conv-norm-act, ``fc1``/``fc2`` in squeeze-excitation,
``conv_dw``/``conv_pw`` in separable convs) so timm checkpoints load without remapping.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import StageGroup

NormLayer = Callable[[int], nn.Module]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round channel counts to a multiple of ``divisor`` without dropping more than 10% (MobileNet's rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def get_norm_layer(norm_layer: str | NormLayer | None) -> NormLayer:
    """Resolve ``norm_layer``: ``"batchnorm"`` (default), ``"groupnorm"`` (32 groups, Wu & He 2018) or a callable."""
    if norm_layer is None or norm_layer in ("batchnorm", "bn"):
        return nn.BatchNorm2d
    if norm_layer in ("groupnorm", "gn"):
        return lambda c: nn.GroupNorm(min(32, c), c) if c % min(32, c) == 0 else nn.GroupNorm(1, c)
    if callable(norm_layer):
        return norm_layer
    raise ValueError(f"unknown norm_layer {norm_layer!r}: use 'batchnorm', 'groupnorm' or a callable")


class ConvNormAct(nn.Module):
    """Conv2d, normalisation, activation (timm's ``ConvNormAct`` key layout: ``conv``, ``bn``)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn = norm_layer(out_chs)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., arXiv:1709.01507): channel gates from globally pooled features."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None) -> None:
        super().__init__()
        rd_channels = rd_channels or make_divisible(channels * rd_ratio, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.bn = nn.Identity()  # timm's SEModule slot, kept so key layout matches
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s.sigmoid()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across groups so grouped convs exchange information (ShuffleNet, Zhang et al. 2017)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample, scaling survivors by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SeparableConv2d(nn.Module):
    """Depthwise conv then pointwise conv (Chollet 2017; MobileNet's building block)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, padding, dilation, groups=in_chs, bias=bias)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding, asymmetric where needed (TF-ported weights expect it)."""
    ih, iw = x.shape[-2:]
    pad_h = max((-(-ih // stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - ih, 0)
    pad_w = max((-(-iw // stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - iw, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation, with BatchNorm's own state-dict keys (timm's ``BatchNormAct2d``).

    Pre-activation nets (DenseNet) and the MobileNets store norm+act as one module, so checkpoints carry
    ``bn1.weight`` rather than ``bn1.bn.weight``; subclassing BatchNorm2d keeps exactly that layout.
    """

    def __init__(self, num_features: int, act_layer: Callable[..., nn.Module] | None = nn.ReLU, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with BatchNorm (MobileNetV1, Howard et al. arXiv:1704.04861).

    timm's key layout (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``). ``pw_act=False`` leaves the projection linear
    (MobileNetV2's first block); a residual is added when shapes allow unless ``noskip`` (MobileNetV1 has none).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        pw_act: bool = True,
        noskip: bool = False,
        act_layer: Callable[..., nn.Module] = nn.ReLU6,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs and not noskip
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, kernel_size // 2, groups=in_chs, bias=False)
        self.bn1 = BatchNormAct2d(in_chs, act_layer=act_layer)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = BatchNormAct2d(out_chs, act_layer=act_layer if pw_act else None)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return self.drop_path(out) + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual with linear bottleneck (Sandler et al. arXiv:1801.04381).

    Expand 1x1 -> depthwise kxk -> project 1x1 with no activation after the projection (a ReLU there would
    destroy information in the narrow bottleneck, the paper's Sec. 3.2), residual when stride 1 and widths match.
    timm's key layout: ``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``conv_pwl``, ``bn3``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        exp_ratio: float = 6.0,
        noskip: bool = False,
        act_layer: Callable[..., nn.Module] = nn.ReLU6,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs and not noskip
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid_chs, act_layer=act_layer)
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False)
        self.bn2 = BatchNormAct2d(mid_chs, act_layer=act_layer)
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = BatchNormAct2d(out_chs, act_layer=None)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(out))
        return self.drop_path(out) + x if self.has_skip else out


# NAS cell ops shared by NASNet-A, PNASNet-5 and AmoebaNet-A. TF 'SAME' padding as timm's ``create_conv2d`` /
# ``create_pool2d`` with ``padding='same'`` (static symmetric where TF's padding is symmetric, else computed from the
# input size) and timm's NASNet key names (``depthwise_conv2d``, ``bn_sep_1``, ``path_1``, ``final_path_bn``, ...).
def _same_pads(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """F.pad amounts (left, right, top, bottom) of TF 'SAME' for a (h, w) input."""
    pads = [max((-(-s // st) - 1) * st + k - s, 0) for s, k, st in zip(size, kernel, stride)]
    return [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding computed from the input size (asymmetric for stride 2; timm's ``Conv2dSame``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_pads(tuple(x.shape[-2:]), self.kernel_size, self.stride))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d_same(
    in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1, groups: int = 1
) -> nn.Conv2d:
    """A bias-free conv with TF 'SAME' padding: plain symmetric padding where that equals TF's, else dynamic."""
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    st = (stride, stride) if isinstance(stride, int) else stride
    if all(s == 1 and (k - 1) % 2 == 0 for k, s in zip(ks, st)):
        return nn.Conv2d(in_chs, out_chs, ks, st, (ks[0] // 2, ks[1] // 2), groups=groups, bias=False)
    return Conv2dSame(in_chs, out_chs, ks, st, 0, groups=groups, bias=False)


class Pool2dSame(nn.Module):
    """Max or average pooling with TF 'SAME' padding computed from the input size.

    As timm's ``AvgPool2dSame`` the zero padding counts in the average (TF would leave it out); timm's NASNet and
    PNASNet ports, whose weights these models load, were validated that way.
    """

    def __init__(self, kind: str, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kind, self.kernel_size, self.stride = kind, kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        if self.kind == "max":
            return F.max_pool2d(F.pad(x, _same_pads(tuple(x.shape[-2:]), k, s), value=float("-inf")), k, s)
        return F.avg_pool2d(F.pad(x, _same_pads(tuple(x.shape[-2:]), k, s)), k, s)

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel_size={self.kernel_size}, stride={self.stride}"


def create_pool2d_same(kind: str, kernel_size: int, stride: int = 1) -> nn.Module:
    """``"max"`` or ``"avg"`` pooling with TF 'SAME' padding (padding left out of averages when static)."""
    if stride == 1 and kernel_size % 2 == 1:
        if kind == "max":
            return nn.MaxPool2d(kernel_size, 1, kernel_size // 2)
        return nn.AvgPool2d(kernel_size, 1, kernel_size // 2, count_include_pad=False)
    return Pool2dSame(kind, kernel_size, stride)


class ActConvBn(nn.Module):
    """ReLU, conv, BatchNorm: the pre-activated conv of NAS cells (keys ``conv``, ``bn``)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.act = nn.ReLU()  # not inplace: a cell feeds the same input to several branches
        self.conv = create_conv2d_same(in_chs, out_chs, kernel_size, stride)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.act(x)))


class NasSeparableConv2d(nn.Module):
    """Depthwise then pointwise conv with TF 'SAME' padding (keys ``depthwise_conv2d``, ``pointwise_conv2d``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise_conv2d = create_conv2d_same(in_chs, in_chs, kernel_size, stride, groups=in_chs)
        self.pointwise_conv2d = create_conv2d_same(in_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


class BranchSeparables(nn.Module):
    """Two stacked ReLU-separable conv-BN layers, the first strided: the 'sep kxk' op of NASNet-style cells.

    ``mid_chs`` defaults to ``in_chs`` (NASNet's cells); stem cells and AmoebaNet widen to ``out_chs`` at once.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, mid_chs: int | None = None
    ) -> None:
        super().__init__()
        mid_chs = in_chs if mid_chs is None else mid_chs
        self.act_1 = nn.ReLU()  # not inplace: the branch input is shared
        self.separable_1 = NasSeparableConv2d(in_chs, mid_chs, kernel_size, stride)
        self.bn_sep_1 = nn.BatchNorm2d(mid_chs, eps=1e-3)
        self.act_2 = nn.ReLU(inplace=True)
        self.separable_2 = NasSeparableConv2d(mid_chs, out_chs, kernel_size, 1)
        self.bn_sep_2 = nn.BatchNorm2d(out_chs, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_sep_1(self.separable_1(self.act_1(x)))
        return self.bn_sep_2(self.separable_2(self.act_2(x)))


def factorized_paths(in_chs: int, out_chs: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The two stride-2 1x1 paths of a factorized reduction (Zoph et al. 2018), the second shifted by one pixel.

    Together they see every input pixel that a single stride-2 1x1 conv would skip; ``out_chs`` is split between
    them (the first takes the odd channel out, e.g. AmoebaNet-A's F=190 stem at 95 channels).
    """
    path_1 = nn.Sequential()
    path_1.add_module("avgpool", nn.AvgPool2d(1, stride=2, count_include_pad=False))
    path_1.add_module("conv", nn.Conv2d(in_chs, out_chs - out_chs // 2, 1, bias=False))
    path_2 = nn.Sequential()
    path_2.add_module("pad", nn.ZeroPad2d((-1, 1, -1, 1)))  # shift by one pixel: drop first row/col, pad at the end
    path_2.add_module("avgpool", nn.AvgPool2d(1, stride=2, count_include_pad=False))
    path_2.add_module("conv", nn.Conv2d(in_chs, out_chs // 2, 1, bias=False))
    return path_1, path_2


class FactorizedReduction(nn.Module):
    """ReLU, then two shifted stride-2 1x1 paths concatenated and batch-normed (halves the resolution)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.path_1, self.path_2 = factorized_paths(in_chs, out_chs)
        self.final_path_bn = nn.BatchNorm2d(out_chs, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return self.final_path_bn(torch.cat([self.path_1(x), self.path_2(x)], 1))


def dilate_strides(strides: tuple[int, ...], output_stride: int, net_stride: int = 1) -> list[tuple[int, int]]:
    """Per-stage ``(stride, dilation)`` that stop the network's stride at ``output_stride``.

    Once the running stride reaches ``output_stride``, each later stride becomes a dilation instead, so later stages
    keep the resolution and the receptive field they would have had (dilated convolution, Yu & Koltun,
    arXiv:1511.07122; DRN, arXiv:1705.09914). Weights stay the same shape, so pretrained ones still load.

    Args:
        strides: the stride each stage would use.
        output_stride: the largest total stride wanted.
        net_stride: the stride already taken before the first stage (e.g. 4 after a ResNet stem).
    """
    plan, dilation = [], 1
    for stride in strides:
        if net_stride >= output_stride:
            dilation *= stride
            stride = 1
        else:
            net_stride *= stride
        plan.append((stride, dilation))
    return plan


class DeformableConv2d(nn.Module):
    """Deformable convolution v1 (Dai et al., arXiv:1703.06211): a conv whose sampling grid is shifted per pixel.

    A plain conv (``conv_offset``) predicts two offsets per kernel tap and output pixel; it starts at zero, so the
    module starts as the ordinary convolution stored in ``weight`` and a model built with it loads that conv's
    pretrained weights unchanged (mmcv's ``DeformConv2dPack`` key layout: ``weight``, ``conv_offset.*``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_chs)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_chs, 2 * offset_groups * kernel_size * kernel_size, kernel_size, stride, padding, dilation, bias=True
        )
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        self.reset_offset()

    def reset_offset(self) -> None:
        """Zero the offset predictor: the module then computes exactly its plain convolution."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import deform_conv2d  # imported here: only deformable models pay for torchvision.ops

        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i * self.groups}, {o}, kernel_size={k}, stride={self.stride[0]}, dilation={self.dilation[0]}"

    @property
    def groups(self) -> int:
        """Convolution groups, as the weight's shape implies (deform_conv2d infers them the same way)."""
        return self.conv_offset.in_channels // self.weight.shape[1]


class CellStage(StageGroup):
    """Consecutive cells of a NAS cell network (NASNet, PNASNet, AmoebaNet) run as one stage.

    A cell reads the outputs of the two cells before it, so a stage maps the pair ``(x, x_prev)`` to the pair and
    the next stage goes on from there. :meth:`step` is one cell's wiring (AmoebaNet's here; the families whose
    wiring differs override it). The cells keep their top-level timm names on the model; this is a view on them.
    """

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i in range(len(self)):
            x, x_prev = self.step(self[i], x, x_prev)
        return x, x_prev

    @staticmethod
    def step(cell: nn.Module, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one cell on ``(x, x_prev)``; return the new ``(x, x_prev)``."""
        return cell(x, x_prev), x


def cell_stages(model: nn.Module, stem: list[str], stage: type[CellStage] = CellStage) -> list[str | CellStage]:
    """Stages of a NAS cell network for ``set_stages``: the stem modules' names, then one :class:`CellStage` per
    resolution, cut after each name in ``model._stage_ends``; the final activation belongs to the last one (as an
    extra member: the family's ``forward_stages`` applies it, after the stage).
    """
    groups: list[list[str]] = [[]]
    for name in model.layer_names:
        groups[-1].append(name)
        if name in model._stage_ends:
            groups.append([])
    *firsts, last = groups[:-1]
    return [*stem, *(stage(model, *g) for g in firsts), stage(model, *last, extra={"act": "act"})]
