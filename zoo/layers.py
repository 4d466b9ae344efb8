"""Blocks shared by two or more families.

Module attribute names follow timm's (``conv``/``bn`` in a conv-norm-act, ``fc1``/``fc2`` in squeeze-excitation,
``conv_dw``/``conv_pw`` in separable convs) so timm checkpoints load without remapping.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
