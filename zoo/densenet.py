"""DenseNet-BC: every layer receives the feature maps of all preceding layers of its dense block.

Paper: Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", arXiv:1608.06993,
2017 (CVPR). The ImageNet configurations are the paper's Table 1: a 7x7/2 conv + 3x3/2 max-pool stem, four
dense blocks of bottleneck layers (BN-ReLU-1x1 conv to ``bn_size * k`` channels, BN-ReLU-3x3 conv to ``k``),
joined by transitions (BN-ReLU-1x1 conv halving the channels, compression 0.5, then 2x2 average pool).
``memory_efficient=True`` recomputes the concatenation + bottleneck in the backward pass instead of storing it
(Pleiss et al., "Memory-Efficient Implementation of DenseNets", arXiv:1707.06990, 2017).

Weights:
    * timm: ``densenet121.ra_in1k`` (and ``.tv_in1k``), ``densenet161.tv_in1k``, ``densenet169.tv_in1k``,
      ``densenet201.tv_in1k``; module names mirror timm's, so no remapping.
    * torchvision: ``densenet121``, ``densenet161``, ``densenet169``, ``densenet201`` through
      :func:`convert_torchvision` (the released checkpoints use the old ``denselayerN.norm.1`` key style).
    * ``densenet264`` (Table 1, k=32) has no released ImageNet weights; timm's ``densenet264d`` is another
      architecture (deep 3x3 stem, k=48), so it is native only.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import StateDict, register_model
from zoo.layers import BatchNormAct2d

PAPER = "Densely Connected Convolutional Networks"


@contextmanager
def _frozen_running_stats(bn: nn.BatchNorm2d) -> Iterator[None]:
    """Batch statistics still normalise, but running mean/var and the batch counter stay as they are."""
    momentum, count = bn.momentum, bn.num_batches_tracked
    saved = count.clone() if count is not None else None
    bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        bn.momentum = momentum
        if count is not None and saved is not None:
            count.copy_(saved)


class DenseLayer(nn.Module):
    """Bottleneck layer: BN-ReLU-1x1 conv (``bn_size * growth_rate``), BN-ReLU-3x3 conv (``growth_rate``)."""

    def __init__(
        self, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0, memory_efficient: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, 1, bias=False)
        self.norm2 = BatchNormAct2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        # the concatenation is what grows quadratically with depth; it lives only inside this function
        return self.conv1(self.norm1(torch.cat(features, 1)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and any(f.requires_grad for f in features):
            # the backward pass runs the bottleneck again; that rerun must not update BatchNorm's running stats
            out = checkpoint(
                self.bottleneck,
                *features,
                use_reentrant=False,
                context_fn=lambda: (nullcontext(), _frozen_running_stats(self.norm1)),
            )
        else:
            out = self.bottleneck(*features)
        out = self.conv2(self.norm2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the output concatenates the input and every layer's ``growth_rate`` maps."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, bn_size: int, **layer_kwargs: Any) -> None:
        super().__init__(
            {
                f"denselayer{i + 1}": DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size, **layer_kwargs)
                for i in range(num_layers)
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseTransition(nn.Sequential):
    """BN-ReLU-1x1 conv (compression) then 2x2 average pooling."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(
            OrderedDict(
                norm=BatchNormAct2d(in_chs),
                conv=nn.Conv2d(in_chs, out_chs, 1, bias=False),
                pool=nn.AvgPool2d(2, 2),
            )
        )


class DenseNet(Backbone):
    """DenseNet-BC (bottleneck layers, compression 0.5) for ImageNet.

    Stages follow timm's feature taps: the stem conv (stride 2), then each dense block preceded by what
    reduces its input (the stem max-pool, or the previous transition), so each stage ends on a dense block's
    full concatenated output; the last stage also holds the final BN-ReLU.

    Args:
        growth_rate: ``k``, channels each dense layer adds.
        block_config: dense layers in each of the four blocks.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        bn_size: bottleneck width as a multiple of ``k`` (4 in the paper).
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after each dense layer (the paper's 0.2 for CIFAR without augmentation).
        memory_efficient: recompute each bottleneck in the backward pass (checkpointing) to save memory.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_classes: int = 1000,
        in_chans: int = 3,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        chs = 2 * growth_rate
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_chans, chs, 7, stride=2, padding=3, bias=False),
            norm0=BatchNormAct2d(chs),
            pool0=nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.feature_info = [FeatureInfo(chs, 2)]
        stage_names: list[list[str]] = [["conv0", "norm0"], ["pool0"]]
        reduction = 4
        for i, num_layers in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = DenseBlock(
                num_layers, chs, growth_rate, bn_size, drop_rate=proj_drop_rate, memory_efficient=memory_efficient
            )
            stage_names[-1].append(f"denseblock{i + 1}")
            chs += num_layers * growth_rate
            self.feature_info.append(FeatureInfo(chs, reduction))
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = DenseTransition(chs, chs // 2)
                stage_names.append([f"transition{i + 1}"])
                chs //= 2
                reduction *= 2
        layers["norm5"] = BatchNormAct2d(chs)
        stage_names[-1].append("norm5")
        self.features = nn.Sequential(layers)
        self.num_features = chs
        self.classifier = linear_or_identity(chs, num_classes)

        # torchvision's (and timm's) init: He-normal convs, unit BN scale, zero linear bias
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        # Stages group children of ``features`` (timm's keys): stem conv, then pool/transition + dense block.
        self.set_stages(*(StageGroup(self, *(f"features.{n}" for n in names)) for names in stage_names))

    def set_memory_efficient(self, enable: bool = True) -> None:
        """Switch checkpointing of the dense-layer bottlenecks on or off."""
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = enable


# -- torchvision checkpoints --------------------------------------------------------------------------------------

# released torchvision files name a dense layer's modules 'norm.1', 'relu.1', 'conv.2', ...; the modules are
# 'norm1', 'conv2' today (torchvision rewrites the keys on load); everything else already has native names
_TV_OLD_KEY = re.compile(r"^(features\.denseblock\d+\.denselayer\d+\.(?:norm|conv))\.([12])\.(\w+)$")


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """Map a torchvision DenseNet state dict (old ``norm.1`` or new ``norm1`` key style) to native keys."""
    out: StateDict = {}
    for key, value in state_dict.items():
        m = _TV_OLD_KEY.match(key)
        new = f"{m.group(1)}{m.group(2)}.{m.group(3)}" if m else key
        if not (new.startswith("features.") or new.startswith("classifier.")):
            raise KeyError(f"unexpected key {key!r} in a torchvision DenseNet state dict")
        out[new] = value
    return out


# -- builders -----------------------------------------------------------------------------------------------------

_COMMON: dict[str, Any] = dict(
    family="densenet",
    paper=PAPER,
    arxiv="1608.06993",
    year=2017,
    interpolation="bicubic",
    first_conv="features.conv0",
    classifier="classifier",
    min_size=32,
    convert_torchvision=convert_torchvision,
)


def _densenet(growth_rate: int, block_config: tuple[int, ...], **kwargs: Any) -> DenseNet:
    return DenseNet(growth_rate=growth_rate, block_config=block_config, **kwargs)


@register_model(
    num_params=7_978_856, timm="densenet121.ra_in1k", torchvision="densenet121", aliases=("densenet-121",), **_COMMON
)
def densenet121(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16), Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`DenseNet` options (``drop_rate``, ``proj_drop_rate``, ``memory_efficient``, ...).
    """
    return _densenet(32, (6, 12, 24, 16), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    num_params=28_681_000, timm="densenet161.tv_in1k", torchvision="densenet161", aliases=("densenet-161",), **_COMMON
)
def densenet161(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks 6-12-36-24), Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`DenseNet` options.
    """
    return _densenet(48, (6, 12, 36, 24), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    num_params=14_149_480, timm="densenet169.tv_in1k", torchvision="densenet169", aliases=("densenet-169",), **_COMMON
)
def densenet169(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32), Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`DenseNet` options.
    """
    return _densenet(32, (6, 12, 32, 32), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    num_params=20_013_928, timm="densenet201.tv_in1k", torchvision="densenet201", aliases=("densenet-201",), **_COMMON
)
def densenet201(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32), Table 1.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`DenseNet` options.
    """
    return _densenet(32, (6, 12, 48, 32), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    num_params=33_337_704,
    aliases=("densenet-264",),
    **{**_COMMON, "interpolation": "bilinear", "convert_torchvision": None},
)
def densenet264(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-264 (k=32, blocks 6-12-64-48), Table 1; native only (no released ImageNet weights).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`DenseNet` options.
    """
    return _densenet(32, (6, 12, 64, 48), num_classes=num_classes, in_chans=in_chans, **kwargs)
