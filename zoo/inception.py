"""GoogLeNet (Inception-v1) and Inception-v3: parallel multi-scale branches concatenated along channels.

Papers:
    * Szegedy et al., "Going Deeper with Convolutions", arXiv:1409.4842, 2014 (GoogLeNet). Table 1 lists every
      layer's output shape at 224x224 and totals about 6.8M parameters and 1.5G multiply-adds.
    * Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer Vision",
      arXiv:1512.00567, 2015 (Inception-v3). The paper gives no parameter table; its count, 23,626,728, is in
      Table 3 of Chollet's Xception paper (arXiv:1610.02357, 2017), which benchmarks Inception V3 against Xception.

Weights:
    * googlenet: torchvision ``googlenet`` (``GoogLeNet_Weights.IMAGENET1K_V1``, a port of TF-slim's
      Inception-v1 with BatchNorm); timm has no GoogLeNet. Module names mirror torchvision's.
    * inception_v3: timm ``inception_v3.tv_in1k`` (torchvision's checkpoint; also ``tf_in1k``, ``tf_adv_in1k``,
      ``gluon_in1k``) and torchvision ``inception_v3``. timm and torchvision share the key layout, so both load
      through :func:`convert_inception_v3`, which only drops the auxiliary head.

Input normalisation: torchvision builds its pretrained GoogLeNet and Inception-v3 with ``transform_input=True``,
i.e. they take ImageNet-normalised input and re-normalise it inside the model to ``(x - 0.5) / 0.5``, the
normalisation the TF-trained weights expect. The specs here carry mean = std = 0.5 instead (as timm's
``inception_v3.tv_in1k`` cfg does): the same function of the raw image, with no rescaling inside the model.
``transform_input=True`` rebuilds torchvision's model exactly, for callers that feed ImageNet-normalised tensors.

Auxiliary classifiers (``aux_logits=True``, off by default): in training mode ``forward`` returns torchvision's
named tuples (``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, ``InceptionOutputs(logits, aux_logits)``);
``forward_aux`` returns them in any mode. Pretrained checkpoints never fill the auxiliary heads: torchvision's
GoogLeNet aux heads are untrained, and the heads are task-specific, so they start fresh for fine-tuning.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, StateDict, register_model
from zoo.layers import ConvNormAct

# TF-ported Inception weights use BatchNorm eps 1e-3 (torchvision's BasicConv2d, timm's norm_eps)
_conv = partial(ConvNormAct, norm_layer=partial(nn.BatchNorm2d, eps=1e-3))


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs of GoogLeNet with auxiliary heads (torchvision's field order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class InceptionOutputs(NamedTuple):
    """Training-mode outputs of Inception-v3 with its auxiliary head (torchvision's field order)."""

    logits: torch.Tensor
    aux_logits: torch.Tensor


class InputTransform(nn.Module):
    """Re-normalise ImageNet-normalised input to ``(x - 0.5) / 0.5`` (torchvision's ``transform_input=True``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.new_tensor([s / 0.5 for s in IMAGENET_STD]).view(1, 3, 1, 1)
        shift = x.new_tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN]).view(1, 3, 1, 1)
        return x * scale + shift


def _input_transform(enabled: bool, in_chans: int) -> nn.Module:
    if enabled and in_chans != 3:
        raise ValueError("transform_input=True re-normalises RGB input: it needs in_chans=3")
    return InputTransform() if enabled else nn.Identity()


# ---------------------------------------------------------------------------------------------------------------
# GoogLeNet
# ---------------------------------------------------------------------------------------------------------------


class Inception(nn.Module):
    """GoogLeNet's Inception module (Figure 2b): 1x1, 1x1-3x3, 1x1-"5x5" and 3x3 max-pool-1x1 branches.

    The "5x5" branch is a 3x3 conv, as in the TF-slim model torchvision's weights come from (torchvision issue
    #906); the paper's 5x5 would not load them.
    """

    def __init__(
        self, in_chs: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.branch1 = _conv(in_chs, ch1x1, 1)
        self.branch2 = nn.Sequential(_conv(in_chs, ch3x3red, 1), _conv(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(_conv(in_chs, ch5x5red, 1), _conv(ch5x5red, ch5x5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv(in_chs, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier (Section 5): 5x5/3 average pool (4x4 out), 1x1 conv 128, FC 1024, 70% dropout, FC."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.conv = _conv(in_chs, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = linear_or_identity(1024, num_classes)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # adaptive pooling gives the paper's 4x4 at 224 input and keeps the head usable at other sizes
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4))).flatten(1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
_GOOGLENET_CFG = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(Backbone):
    """GoogLeNet (Inception-v1) with BatchNorm, in torchvision's layout.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier (torchvision's 0.2; the paper used 0.4).
        aux_logits: add the two auxiliary classifiers (after inception4a and inception4d), used in training mode.
        aux_drop_rate: dropout inside the auxiliary classifiers (the paper's 0.7).
        transform_input: take ImageNet-normalised input, as torchvision's pretrained model does.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        aux_logits: bool = False,
        aux_drop_rate: float = 0.7,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.aux_logits = aux_logits
        self.input_transform = _input_transform(transform_input, in_chans)
        self.conv1 = _conv(in_chans, 64, 7, stride=2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = _conv(64, 64, 1)
        self.conv3 = _conv(64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("inception3a", "inception3b"):
            self.add_module(name, Inception(*_GOOGLENET_CFG[name]))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            self.add_module(name, Inception(*_GOOGLENET_CFG[name]))
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        for name in ("inception5a", "inception5b"):
            self.add_module(name, Inception(*_GOOGLENET_CFG[name]))
        if aux_logits:
            self.aux1 = GoogLeNetAux(512, num_classes, aux_drop_rate)
            self.aux2 = GoogLeNetAux(528, num_classes, aux_drop_rate)
        self.num_features = 1024
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.feature_info = [
            FeatureInfo(64, 2),
            FeatureInfo(192, 4),
            FeatureInfo(480, 8),
            FeatureInfo(832, 16),
            FeatureInfo(1024, 32),
        ]
        # Stem conv, then one stage per stride, each opening with the max-pool that enters it (torchvision's names).
        self.set_stages(
            StageGroup(self, "input_transform", "conv1"),
            StageGroup(self, "maxpool1", "conv2", "conv3"),
            StageGroup(self, "maxpool2", "inception3a", "inception3b"),
            StageGroup(self, "maxpool3", *(f"inception4{c}" for c in "abcde")),
            StageGroup(self, "maxpool4", "inception5a", "inception5b"),
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.aux1, self.aux2, self.fc] if self.aux_logits else [self.fc]

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux_logits:
            self.aux1.fc2 = linear_or_identity(1024, num_classes)
            self.aux2.fc2 = linear_or_identity(1024, num_classes)

    def forward_aux(self, x: torch.Tensor) -> GoogLeNetOutputs:
        """Logits and both auxiliary logits, in any mode (needs ``aux_logits=True``)."""
        if not self.aux_logits:
            raise RuntimeError("forward_aux needs a model built with aux_logits=True")
        # The auxiliary heads tap stage 3 (maxpool3, inception4a-4e) inside, so that stage runs module by module here.
        stem, s1, s2, _, s4 = self._stage_modules()
        x = self.maxpool3(s2(s1(stem(x))))
        x = self.inception4a(x)
        aux1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x)
        x = s4(self.inception4e(x))
        return GoogLeNetOutputs(self.forward_head(x), aux2, aux1)

    def forward(self, x: torch.Tensor) -> Any:
        if self.aux_logits and self.training:
            return self.forward_aux(x)
        return self.forward_head(self.forward_features(x))


def convert_googlenet_torchvision(state_dict: StateDict) -> StateDict:
    """torchvision's keys are the native ones; its auxiliary heads are dropped (torchvision ships them untrained)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("aux1.", "aux2."))}


@register_model(
    family="inception",
    paper="Going Deeper with Convolutions",
    arxiv="1409.4842",
    year=2014,
    num_params=6_624_904,
    timm=None,
    torchvision="googlenet",
    input_size=(3, 224, 224),
    mean=INCEPTION_MEAN,  # torchvision's ImageNet mean/std followed by its transform_input: see the module doc
    std=INCEPTION_STD,
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv1.conv",
    classifier="fc",
    min_size=15,
    paper_params=6_800_000,
    paper_macs=1_500_000_000,
    paper_input_size=(3, 224, 224),
    new_keys=("aux1.*", "aux2.*"),
    aliases=("inception_v1",),
    convert_torchvision=convert_googlenet_torchvision,
)
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet / Inception-v1 (Table 1), with BatchNorm as torchvision's weights.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`GoogLeNet` options (``drop_rate``, ``aux_logits``, ``aux_drop_rate``, ``transform_input``).
    """
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Inception-v3 (module and key names as timm's / torchvision's)
# ---------------------------------------------------------------------------------------------------------------


class InceptionA(nn.Module):
    """35x35 module (Figure 5): the 5x5 of v1 factorised into two 3x3 in one branch."""

    def __init__(self, in_chs: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _conv(in_chs, 64, 1)
        self.branch5x5_1 = _conv(in_chs, 48, 1)
        self.branch5x5_2 = _conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _conv(in_chs, 64, 1)
        self.branch3x3dbl_2 = _conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, padding=1)
        self.branch_pool = _conv(in_chs, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Figure 10): stride-2 conv branches beside a max-pool."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3 = _conv(in_chs, 384, 3, stride=2, padding=0)
        self.branch3x3dbl_1 = _conv(in_chs, 64, 1)
        self.branch3x3dbl_2 = _conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 module (Figure 6): 7x7 convs factorised into 1x7 and 7x1."""

    def __init__(self, in_chs: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _conv(in_chs, 192, 1)
        self.branch7x7_1 = _conv(in_chs, c7, 1)
        self.branch7x7_2 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _conv(in_chs, c7, 1)
        self.branch7x7dbl_2 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _conv(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3_1 = _conv(in_chs, 192, 1)
        self.branch3x3_2 = _conv(192, 320, 3, stride=2, padding=0)
        self.branch7x7x3_1 = _conv(in_chs, 192, 1)
        self.branch7x7x3_2 = _conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _conv(192, 192, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 module (Figure 7): expanded filter banks, 3x3 split into parallel 1x3 and 3x1."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch1x1 = _conv(in_chs, 320, 1)
        self.branch3x3_1 = _conv(in_chs, 384, 1)
        self.branch3x3_2a = _conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _conv(in_chs, 448, 1)
        self.branch3x3dbl_2 = _conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _conv(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid (Figure 8), which the paper found acts as a regulariser."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = _conv(in_chs, 128, 1)
        self.conv1 = _conv(128, 768, 5, padding=0)
        self.fc = linear_or_identity(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, stride=3)))
        return self.fc(x.mean((2, 3)))


class InceptionV3(Backbone):
    """Inception-v3 (Table 1 of the paper), the BatchNorm variant torchvision and timm ship.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        aux_logits: add the auxiliary classifier on the 17x17 grid, used in training mode (it needs inputs of
            299 pixels or more: its 5x5/3 pool and 5x5 conv need the full 17x17 grid).
        transform_input: take ImageNet-normalised input, as torchvision's pretrained model does.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        aux_logits: bool = False,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.aux_logits = aux_logits
        self.input_transform = _input_transform(transform_input, in_chans)
        self.Conv2d_1a_3x3 = _conv(in_chans, 32, 3, stride=2, padding=0)
        self.Conv2d_2a_3x3 = _conv(32, 32, 3, padding=0)
        self.Conv2d_2b_3x3 = _conv(32, 64, 3, padding=1)
        self.Pool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = _conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _conv(80, 192, 3, padding=0)
        self.Pool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        if aux_logits:
            self.AuxLogits = InceptionAux(768, num_classes)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.num_features = 2048
        self.fc = linear_or_identity(self.num_features, num_classes)
        # timm's feature_info taps: Conv2d_2b_3x3, Conv2d_4a_3x3, Mixed_5d, Mixed_6e, Mixed_7c
        self.feature_info = [
            FeatureInfo(64, 2),
            FeatureInfo(192, 4),
            FeatureInfo(288, 8),
            FeatureInfo(768, 16),
            FeatureInfo(2048, 32),
        ]
        # timm's feature_info split: stem convs, 73->71 convs, 35x35, 17x17 and 8x8 grids (timm's names).
        self.set_stages(
            StageGroup(self, "input_transform", "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
            StageGroup(self, "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
            StageGroup(self, "Pool2", "Mixed_5b", "Mixed_5c", "Mixed_5d"),
            StageGroup(self, "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
            StageGroup(self, "Mixed_7a", "Mixed_7b", "Mixed_7c"),
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.AuxLogits, self.fc] if self.aux_logits else [self.fc]

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux_logits:
            self.AuxLogits.fc = linear_or_identity(768, num_classes)

    def forward_aux(self, x: torch.Tensor) -> InceptionOutputs:
        """Logits and auxiliary logits, in any mode (needs ``aux_logits=True``)."""
        if not self.aux_logits:
            raise RuntimeError("forward_aux needs a model built with aux_logits=True")
        *trunk, last = self._stage_modules()
        for stage in trunk:
            x = stage(x)
        aux = self.AuxLogits(x)
        return InceptionOutputs(self.forward_head(last(x)), aux)

    def forward(self, x: torch.Tensor) -> Any:
        if self.aux_logits and self.training:
            return self.forward_aux(x)
        return self.forward_head(self.forward_features(x))


def convert_inception_v3(state_dict: StateDict) -> StateDict:
    """timm and torchvision checkpoints: same keys as the native model, less the auxiliary head."""
    return {k: v for k, v in state_dict.items() if not k.startswith("AuxLogits.")}


@register_model(
    family="inception",
    paper="Rethinking the Inception Architecture for Computer Vision",
    arxiv="1512.00567",
    year=2015,
    num_params=23_834_568,
    timm="inception_v3.tv_in1k",
    torchvision="inception_v3",
    input_size=(3, 299, 299),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bicubic",
    crop_pct=0.875,
    first_conv="Conv2d_1a_3x3.conv",
    classifier="fc",
    min_size=75,
    paper_params=23_626_728,  # Xception paper, Table 3 (the v3 paper only says "less than 25 million")
    new_keys=("AuxLogits.*",),
    convert_timm=convert_inception_v3,
    convert_torchvision=convert_inception_v3,
)
def inception_v3(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> InceptionV3:
    """Inception-v3 at 299x299.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`InceptionV3` options (``drop_rate``, ``aux_logits``, ``transform_input``).
    """
    return InceptionV3(num_classes=num_classes, in_chans=in_chans, **kwargs)
