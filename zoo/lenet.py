"""LeNet-5.

Paper: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
Proceedings of the IEEE 86(11), 1998 (no arXiv id). Section II-B and Fig. 2 give the layers; Table I gives the
partial connection table between S2 and C3.

Weights: native only (neither timm nor torchvision ship LeNet-5).

Layers at the paper's 32x32 input: C1 6@28x28 (5x5 conv), S2 6@14x14 (2x2 subsampling), C3 16@10x10 (5x5 conv
over the Table I subsets of S2), S4 16@5x5, C5 120@1x1 (5x5 conv), F6 84 (fully connected), output.

Choices, each faithful unless said otherwise:

* Subsampling (S2, S4) is the paper's: the four inputs are summed, multiplied by one trainable coefficient and
  shifted by one trainable bias per map (12 and 32 parameters), then squashed.
* Every layer up to F6 is squashed by the paper's scaled tanh ``1.7159 * tanh(2/3 * a)`` (Appendix A), and weights
  start uniform in +-2.4 / fan-in as in the paper.
* C3 uses the paper's partial connection table by default (``c3_table=True``, 1,516 parameters): maps 0-5 see
  three contiguous S2 maps, 6-11 four contiguous, 12-14 four discontinuous, 15 all six. The table breaks symmetry
  and saves parameters; ``c3_table=False`` gives the dense 16x6 conv (2,416 parameters) most modern ports use.
* Deviation: the output layer is a linear classifier, not the paper's Euclidean RBF units with fixed 7x12 bitmap
  prototypes, so ``reset_classifier`` and cross-entropy fine-tuning work as for every other zoo model.
* The paper reads 1-channel 32x32 images (28x28 digits padded); the zoo contract builds ``in_chans=3`` by default,
  so the spec's ``input_size`` is (3, 32, 32). Pass ``in_chans=1`` for the paper's grey input.
* Normalisation is mean 0.5 / std 0.5, which maps pixels to [-1, 1], close to the paper's scaling of the input to
  roughly zero mean and unit variance (background -0.1, ink 1.175).

Counts: the paper reports 60,000 trainable parameters and 340,908 connections for its 10-class network. At the
zoo's 1000 classes the output layer alone has 85,000 parameters, so ``paper_params``/``paper_macs`` are not set on
the spec (they would describe another network); ``tests/zoo/test_lenet.py`` checks both counts at 10 classes.

Stages: ``[C1+S2, C3+S4, C5]``; the head is F6 (pre-logits, 84) and the classifier ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup, linear_or_identity
from zoo._registry import INCEPTION_MEAN, INCEPTION_STD, register_model

# Table I of the paper: which S2 maps (rows) each C3 map (column) reads.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (0, 4, 5),
    (0, 1, 5),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (0, 3, 4, 5),
    (0, 1, 4, 5),
    (0, 1, 2, 5),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class ScaledTanh(nn.Module):
    """The paper's squashing function ``A tanh(S a)`` with A = 1.7159 and S = 2/3 (Appendix A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsample(nn.Module):
    """LeNet's subsampling: sum of each 2x2 window times a trainable coefficient plus a bias, per feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -2.4 / 4, 2.4 / 4)  # fan-in of a subsampling unit is 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv2d(nn.Module):
    """C3 with the paper's connection table: one grouped conv per run of equal-size input subsets.

    Each C3 map reads only its subset of S2 maps. Maps whose subsets have the same size share one grouped conv
    whose input is the concatenation of their subsets (gathered with a fixed index), so parameters are exactly
    the table's (1,516 for Table I) and the output keeps the paper's map order.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], kernel_size: int = 5) -> None:
        super().__init__()
        runs: list[list[tuple[int, ...]]] = []
        for subset in table:
            if runs and len(runs[-1][0]) == len(subset):
                runs[-1].append(subset)
            else:
                runs.append([subset])
        self.convs = nn.ModuleList()
        for i, run in enumerate(runs):
            size = len(run[0])
            self.register_buffer(f"index{i}", torch.tensor([c for s in run for c in s]), persistent=False)
            self.convs.append(nn.Conv2d(size * len(run), len(run), kernel_size, groups=len(run)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x.index_select(1, getattr(self, f"index{i}"))) for i, conv in enumerate(self.convs)]
        return torch.cat(outs, 1)


class LeNet5(Backbone):
    """LeNet-5 (LeCun et al. 1998) with the paper's subsampling, squashing and C3 connection table.

    Args:
        num_classes: classifier width (the paper's 10 digits; 1000 by zoo convention).
        in_chans: input channels (the paper's 1; 3 by zoo convention).
        c3_table: use the paper's partial S2-to-C3 connection table (Table I) instead of a dense conv.
        drop_rate: dropout before the classifier (the paper uses none).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, c3_table: bool = True, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.act = ScaledTanh()
        self.c1 = nn.Conv2d(in_chans, 6, 5)
        self.s2 = Subsample(6)
        self.c3 = PartialConv2d(C3_TABLE) if c3_table else nn.Conv2d(6, 16, 5)
        self.s4 = Subsample(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.fc = linear_or_identity(84, num_classes)
        self.num_features = 120
        self.head_hidden_size = 84
        # Valid convolutions: 32 -> 28 -> 14 -> 10 -> 5 -> 1; reductions are the strides (2, 4, 4).
        self.feature_info = [FeatureInfo(6, 2), FeatureInfo(16, 4), FeatureInfo(120, 4)]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                nn.init.uniform_(m.weight, -2.4 / fan_in, 2.4 / fan_in)
                nn.init.zeros_(m.bias)
        # One squashing module serves every layer, so it appears in each stage (it holds no parameters).
        self.set_stages(
            StageGroup(self, "c1", "act", "s2", "act"),
            StageGroup(self, "c3", "act", "s4", "act"),
            StageGroup(self, "c5", "act"),
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.f6, self.fc]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # At 32x32 C5 is 1x1 and the mean is the identity; larger inputs are averaged before F6.
        x = self.act(self.f6(x.mean((2, 3))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


@register_model(
    family="lenet",
    paper="Gradient-Based Learning Applied to Document Recognition",
    arxiv=None,
    year=1998,
    num_params=145_300,
    input_size=(3, 32, 32),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    interpolation="bilinear",
    crop_pct=1.0,
    first_conv="c1",
    classifier="fc",
    min_size=32,
    aliases=("lenet",),
)
def lenet5(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998), native only; pass ``in_chans=1, num_classes=10`` for the paper's network."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, **kwargs)
