"""AlexNet and ZFNet: five convolutions (ReLU, overlapping max-pooling, local response normalisation) and three
fully connected layers with dropout.

Papers:

* AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks",
  NIPS 2012 (no arXiv id). Section 3 and Fig. 2 give the layers.
* torchvision's AlexNet is the single-GPU variant of Krizhevsky, "One weird trick for parallelizing convolutional
  neural networks", arXiv 1404.5997, 2014: conv widths 64/192/384/256/256, no LRN, no grouped convolutions.
* ZFNet: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", arXiv 1311.2901, 2013 (ECCV 2014).
  Fig. 3 gives the layers; Table 2 row "(b)" widens conv3-5 to 512/1024/512 maps, its best single model.

Weights: ``alexnet`` loads torchvision's ``alexnet`` (``IMAGENET1K_V1``) through :func:`convert_torchvision`;
``alexnet(variant="paper")`` and ``zfnet`` are native only (no public weights in timm or torchvision).

``alexnet`` variants (the ``variant`` keyword):

* ``"torchvision"`` (default, the registered metadata and weights): the one-weird-trick network, conv1 64@11x11/4
  padded by 2, then 192, 384, 256, 256 maps, no LRN, dense convolutions, dropout before fc6 and fc7.
* ``"paper"``: the 2012 network at its effective 227x227 input (the paper's "224" does not give 55x55 with an
  11x11/4 unpadded conv): conv1 96@11x11/4 -> 55x55x96, then 256, 384, 384, 256 maps; LRN (k=2, n=5, alpha=1e-4,
  beta=0.75) after the ReLU of conv1 and conv2, each followed by 3x3/2 overlapping max-pooling; the two-GPU split
  kept as groups=2 in conv2, conv4 and conv5 (Fig. 2: those layers read only kernel maps of their own GPU);
  dropout (0.5) on the outputs of fc6 and fc7; weights N(0, 0.01), biases 1 in conv2, conv4, conv5 and the hidden
  fully connected layers (Section 5).

``zfnet``: conv1 96@7x7/2 (padding 1: 224 -> 110), 3x3/2 max-pool -> 55, contrast normalisation across maps
(implemented as AlexNet's LRN), conv2 256@5x5/2 -> 26, pool -> 13, LRN, conv3-5 dense (one GPU) with 512/1024/512
maps (``conv_widths=(384, 384, 256)`` gives Fig. 3's network), pool -> 6, fc 4096-4096, dropout 0.5. Max-pools
round up (Caffe's convention), which is what gives the paper's 55 and 13. Weights N(0, 0.01), biases 0.

PyTorch's ``LocalResponseNorm`` divides alpha by the window size; the papers' formula does not, so alpha = 5e-4
is passed to reproduce the papers' alpha = 1e-4.

Counts: ``paper_params`` is the paper's "60 million parameters" (abstract); ``paper_macs`` is 724M multiply-adds
for AlexNet at 227x227 (Sze et al., "Efficient Processing of Deep Neural Networks: A Tutorial and Survey",
arXiv 1703.09039, Table IV). The torchvision variant is within 2% of both (61.1M, 0.71G) and the paper variant
within 2% (61.0M, 724M, checked in tests/zoo/test_alexnet.py). ZFNet's paper reports no counts: its
``paper_params`` (107.6M) and ``paper_macs`` (2.477G at 224) are computed by hand from the layer sizes of Fig. 3
with Table 2 (b)'s widths.

Stages: ``[conv1 block, conv2 block, conv3, conv4, conv5 block]`` (each block: conv, ReLU, LRN and max-pool where
the paper has them). The head is the 6x6 adaptive average pool (identity at the paper's input size), fc6, fc7
(pre-logits, 4096) and the classifier ``fc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import StateDict, register_model


@dataclass(frozen=True)
class AlexNetCfg:
    """Layer configuration of an AlexNet-style network."""

    widths: tuple[int, int, int, int, int]
    conv1: tuple[int, int, int]  # kernel, stride, padding
    conv2: tuple[int, int, int]
    groups: tuple[int, int, int, int, int] = (1, 1, 1, 1, 1)
    lrn: str | None = None  # None, "before_pool" (AlexNet) or "after_pool" (ZFNet)
    ceil_mode: bool = False
    drop_after_fc: bool = False  # dropout on fc6/fc7 outputs (papers) rather than on their inputs (torchvision)
    init: str = "default"  # "default" (PyTorch's, as torchvision), "alexnet" or "zfnet" (the papers')


CFGS = {
    "torchvision": AlexNetCfg(widths=(64, 192, 384, 256, 256), conv1=(11, 4, 2), conv2=(5, 1, 2)),
    "paper": AlexNetCfg(
        widths=(96, 256, 384, 384, 256),
        conv1=(11, 4, 0),
        conv2=(5, 1, 2),
        groups=(1, 2, 1, 2, 2),
        lrn="before_pool",
        drop_after_fc=True,
        init="alexnet",
    ),
}


class AlexNet(Backbone):
    """AlexNet-style network: five convolutions, overlapping max-pooling, optional LRN, three FC layers.

    Args:
        cfg: the layer configuration (:data:`CFGS` or ZFNet's).
        num_classes: classifier width.
        in_chans: input channels.
        drop_rate: dropout in the fully connected layers (0.5 in both papers).
    """

    def __init__(self, cfg: AlexNetCfg, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        w, g = cfg.widths, cfg.groups
        self.conv1 = nn.Conv2d(in_chans, w[0], cfg.conv1[0], cfg.conv1[1], cfg.conv1[2], groups=g[0])
        self.conv2 = nn.Conv2d(w[0], w[1], cfg.conv2[0], cfg.conv2[1], cfg.conv2[2], groups=g[1])
        self.conv3 = nn.Conv2d(w[1], w[2], 3, padding=1, groups=g[2])
        self.conv4 = nn.Conv2d(w[2], w[3], 3, padding=1, groups=g[3])
        self.conv5 = nn.Conv2d(w[3], w[4], 3, padding=1, groups=g[4])
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=cfg.ceil_mode)  # overlapping pooling (Section 3.4)
        # Papers' alpha = 1e-4 on the plain sum of squares; PyTorch averages it over the window of 5.
        self.lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if cfg.lrn else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.fc6 = nn.Linear(w[4] * 36, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc = linear_or_identity(4096, num_classes)
        self.num_features = w[4]
        self.head_hidden_size = 4096
        r1 = cfg.conv1[1] * 2
        r2 = r1 * cfg.conv2[1] * 2
        self.feature_info = [FeatureInfo(w[0], r1)] + [FeatureInfo(c, r2) for c in w[1:4]] + [FeatureInfo(w[4], r2 * 2)]
        # One ReLU and one pool module serve every layer (no parameters), so they appear in several stages.
        self.set_stages(
            self._block("conv1"),
            self._block("conv2"),
            StageGroup(self, "conv3", "act"),
            StageGroup(self, "conv4", "act"),
            StageGroup(self, "conv5", "act", "pool"),
        )
        if cfg.init != "default":
            self._init_paper(ones=("conv2", "conv4", "conv5", "fc6", "fc7") if cfg.init == "alexnet" else ())

    def _init_paper(self, ones: tuple[str, ...]) -> None:
        """Weights N(0, 0.01); biases 1 in ``ones`` (AlexNet Section 5, to give ReLUs positive inputs), else 0."""
        for name, m in self.named_children():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)

    def _block(self, conv: str) -> StageGroup:
        if self.cfg.lrn == "before_pool":
            return StageGroup(self, conv, "act", "lrn", "pool")
        if self.cfg.lrn == "after_pool":
            return StageGroup(self, conv, "act", "pool", "lrn")
        return StageGroup(self, conv, "act", "pool")

    def head_modules(self) -> list[nn.Module]:
        return [self.fc6, self.fc7, self.fc]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)
        p, training = self.drop_rate, self.training
        if not self.cfg.drop_after_fc:
            x = F.dropout(x, p, training)
        x = F.dropout(F.relu(self.fc6(x)), p, training)
        x = F.relu(self.fc7(x))
        if self.cfg.drop_after_fc:
            x = F.dropout(x, p, training)
        return x if pre_logits else self.fc(x)


# torchvision's Sequential indices -> native names.
_TV_KEYS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc",
}


def convert_torchvision(state_dict: StateDict) -> StateDict:
    """Map torchvision's ``alexnet`` state dict (``features.N``/``classifier.N``) to native names."""
    out: StateDict = {}
    for key, value in state_dict.items():
        prefix, _, suffix = key.rpartition(".")
        if prefix not in _TV_KEYS or suffix not in ("weight", "bias"):
            raise KeyError(f"unexpected key {key!r} in a torchvision alexnet checkpoint")
        name = _TV_KEYS[prefix]
        if suffix == "weight":
            assert value.ndim == (4 if name.startswith("conv") else 2), f"{key}: unexpected shape {tuple(value.shape)}"
        out[f"{name}.{suffix}"] = value
    # Consecutive convolutions must chain (dense convs: out of one = in of the next).
    for a, b in zip(("conv1", "conv2", "conv3", "conv4"), ("conv2", "conv3", "conv4", "conv5")):
        assert out[f"{a}.weight"].shape[0] == out[f"{b}.weight"].shape[1], f"{a} -> {b} widths do not chain"
    return out


_META: dict[str, Any] = dict(
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv1",
    classifier="fc",
)


@register_model(
    family="alexnet",
    paper="ImageNet Classification with Deep Convolutional Neural Networks",
    arxiv=None,
    year=2012,
    num_params=61_100_840,
    timm=None,
    torchvision="alexnet",
    input_size=(3, 224, 224),
    min_size=63,
    paper_params=60_000_000,
    paper_macs=724_000_000,
    paper_input_size=(3, 227, 227),
    convert_torchvision=convert_torchvision,
    **_META,
)
def alexnet(num_classes: int = 1000, in_chans: int = 3, variant: str = "torchvision", **kwargs: Any) -> AlexNet:
    """AlexNet; ``variant="torchvision"`` (default, loads torchvision's weights) or ``"paper"`` (the 2012 network).

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        variant: ``"torchvision"`` (one-weird-trick widths, no LRN) or ``"paper"`` (96-256-384-384-256 maps, LRN,
            grouped conv2/4/5, for 227x227 input).
        **kwargs: ``drop_rate`` (default 0.5).
    """
    if variant not in CFGS:
        raise ValueError(f"unknown alexnet variant {variant!r}: use one of {', '.join(CFGS)}")
    return AlexNet(CFGS[variant], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    family="alexnet",
    paper="Visualizing and Understanding Convolutional Networks",
    arxiv="1311.2901",
    year=2013,
    num_params=107_627_624,
    timm=None,
    torchvision=None,
    input_size=(3, 224, 224),
    min_size=47,
    paper_params=107_600_000,
    paper_macs=2_477_000_000,
    paper_input_size=(3, 224, 224),
    **_META,
)
def zfnet(
    num_classes: int = 1000,
    in_chans: int = 3,
    conv_widths: tuple[int, int, int] = (512, 1024, 512),
    **kwargs: Any,
) -> AlexNet:
    """ZFNet (Zeiler & Fergus 2013), native only: Table 2 (b)'s 512/1024/512 maps in conv3-5 by default.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        conv_widths: maps of conv3, conv4, conv5; ``(384, 384, 256)`` is Fig. 3's network.
        **kwargs: ``drop_rate`` (default 0.5).
    """
    cfg = AlexNetCfg(
        widths=(96, 256, *conv_widths),
        conv1=(7, 2, 1),
        conv2=(5, 2, 0),
        lrn="after_pool",
        ceil_mode=True,
        drop_after_fc=True,
        init="zfnet",
    )
    return AlexNet(cfg, num_classes=num_classes, in_chans=in_chans, **kwargs)
