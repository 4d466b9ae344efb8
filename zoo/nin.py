"""Network In Network (NIN).

Paper: Lin, Chen & Yan, "Network In Network", arXiv 1312.4400, 2013 (ICLR 2014). Section 3 defines the mlpconv
layer (a convolution followed by a small multilayer perceptron, i.e. 1x1 convolutions, all ReLU) and global average
pooling in place of fully connected layers: the last mlpconv layer emits one map per class and their averages are
the logits.

The paper reports CIFAR, SVHN and MNIST networks only; the ImageNet network is the authors' Caffe Model Zoo model
"Network in Network Imagenet Model" (gist mavenlin/d802a5849de39225bcc6, ``nin_imagenet``), which this file follows
layer for layer:

=========  ==========================================  ==================
block      layers                                      output at 224
=========  ==========================================  ==================
mlpconv 1  conv1 96@11x11/4, cccp1 96, cccp2 96        max-pool -> 27x27
mlpconv 2  conv2 256@5x5 pad 2, cccp3 256, cccp4 256   max-pool -> 13x13
mlpconv 3  conv3 384@3x3 pad 1, cccp5 384, cccp6 384   max-pool -> 6x6, dropout 0.5
mlpconv 4  conv4 1024@3x3 pad 1, cccp7 1024, cccp8 C   ReLU, average pool -> C
=========  ==========================================  ==================

Every convolution is followed by a ReLU (the class maps of cccp8 too, as in the Caffe model); max-pools are 3x3/2
rounding up (Caffe's convention). Caffe's 6x6 average pool is written as a global mean so any input size works.

Weights: native only (the Caffe weights are not on timm or torchvision). Module names are the Caffe layer names
(``conv4``/``cccp7``/``cccp8`` for Caffe's ``conv4-1024``/``cccp7-1024``/``cccp8-1024``), so a converted Caffe
checkpoint maps one to one.

Counts: the model zoo entry reports a 29 MB snapshot, i.e. 7.6M float32 parameters (``paper_params``); the layer
table gives 7,595,176. Neither source reports multiply-adds: ``paper_macs`` (1.10G at 224) is computed by hand from
the table above.

Stages and head: stages are ``[mlpconv 1, mlpconv 2, mlpconv 3 (+ dropout), conv4 + cccp7]``; the classifier is
cccp8, the 1x1 conv that makes the class maps, and the head is cccp8, ReLU, global average pool. ``forward_features``
gives the 1024 maps of cccp7, ``forward_head(pre_logits=True)`` their global average (what a linear probe sees) and
``reset_classifier(n)`` replaces cccp8 by a fresh 1024 -> n 1x1 conv (Identity for n = 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup
from zoo._registry import IMAGENET_MEAN, IMAGENET_STD, register_model


def _class_maps(in_chs: int, num_classes: int) -> nn.Module:
    """NIN's classifier: a 1x1 conv with one output map per class (Identity when there are no classes)."""
    return nn.Conv2d(in_chs, num_classes, 1) if num_classes > 0 else nn.Identity()


class NIN(Backbone):
    """Network In Network, the four-mlpconv ImageNet model.

    Args:
        num_classes: number of class maps made by the last 1x1 conv.
        in_chans: input channels.
        drop_rate: dropout after the third mlpconv block (0.5 in the Caffe model).
    """

    classifier_attr = "cccp8"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, 96, 11, 4)
        self.cccp1 = nn.Conv2d(96, 96, 1)
        self.cccp2 = nn.Conv2d(96, 96, 1)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2)
        self.cccp3 = nn.Conv2d(256, 256, 1)
        self.cccp4 = nn.Conv2d(256, 256, 1)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.cccp5 = nn.Conv2d(384, 384, 1)
        self.cccp6 = nn.Conv2d(384, 384, 1)
        self.conv4 = nn.Conv2d(384, 1024, 3, padding=1)
        self.cccp7 = nn.Conv2d(1024, 1024, 1)
        self.cccp8 = _class_maps(1024, num_classes)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = 1024
        self.feature_info = [FeatureInfo(96, 8), FeatureInfo(256, 16), FeatureInfo(384, 32), FeatureInfo(1024, 32)]
        # He initialisation keeps the signal alive through twelve un-normalised ReLU layers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

        def mlpconv(*convs: str, then: tuple[str, ...] = ()) -> StageGroup:
            # one ReLU and one pool module serve every block (no parameters), as in the Caffe model's in-place layers
            return StageGroup(self, *(m for conv in convs for m in (conv, "act")), *then)

        self.set_stages(
            mlpconv("conv1", "cccp1", "cccp2", then=("pool",)),
            mlpconv("conv2", "cccp3", "cccp4", then=("pool",)),
            mlpconv("conv3", "cccp5", "cccp6", then=("pool", "drop")),
            mlpconv("conv4", "cccp7"),
        )

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.cccp8 = _class_maps(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x.mean((2, 3))
        # One map per class, ReLU (as the Caffe model), then global average pooling gives the logits.
        return F.relu(self.cccp8(x)).mean((2, 3))


@register_model(
    family="nin",
    paper="Network In Network",
    arxiv="1312.4400",
    year=2013,
    num_params=7_595_176,
    timm=None,
    torchvision=None,
    input_size=(3, 224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    crop_pct=0.875,
    first_conv="conv1",
    classifier="cccp8",
    min_size=39,
    paper_params=7_600_000,
    paper_macs=1_100_000_000,
    paper_input_size=(3, 224, 224),
    aliases=("network_in_network",),
)
def nin(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> NIN:
    """Network In Network (Lin et al. 2013), the Caffe Model Zoo ImageNet model, native only.

    Args:
        num_classes: number of class maps (the classifier is the last 1x1 conv before global average pooling).
        in_chans: input channels.
        **kwargs: ``drop_rate`` (default 0.5, after the third mlpconv block).
    """
    return NIN(num_classes=num_classes, in_chans=in_chans, **kwargs)
