"""CondenseNet: a DenseNet whose 1x1 convolutions learn, then keep, a sparse group structure.

Paper: Huang, Liu, van der Maaten, Weinberger, "CondenseNet: An Efficient DenseNet using Learned Group
Convolutions", arXiv:1711.09224, 2018 (CVPR). The ImageNet network (Sec. 4, Fig. 5) is a 3x3/2 stem conv to
``2 * k_0`` channels, five dense blocks of 4-6-8-10-8 layers with exponentially increasing growth rates
8-16-32-64-128, 2x2 average pooling between blocks (no transition convs: the blocks are fully dense), and a final
BN-ReLU, global pooling and a linear classifier. Each layer is a *learned group convolution* (BN-ReLU-1x1, G
groups, condensation factor C, 4k output channels) followed by a BN-ReLU-3x3 group convolution (G groups, k
outputs).

Two forms live here:

* the training form (:class:`LearnedGroupConv`, built by :func:`condensenet_learned`): dense 1x1 convs with a
  mask. During the first half of training (``set_progress``), C-1 condensing stages each drop, per group, the
  ``1/C`` of the input channels with the smallest L1 weight; a group-lasso term (``lasso_loss``) pushes whole
  groups of weights towards zero beforehand (Sec. 3.1). When condensing ends every group keeps ``1/C`` of the
  inputs, and the classifier drops the half of its inputs with the smallest L1 weight (the official code's
  ``CondensingLinear``).
* the condensed inference form (:class:`CondenseConv`, the registered ``condensenet``): an index select of the
  kept input channels, BN-ReLU, a standard grouped 1x1 conv and a channel shuffle that restores the learned
  output order (Sec. 3.1, Fig. 3). :func:`condense` turns a trained training-form model into it; both compute the
  same function.

State-dict keys follow the authors' code (github.com/ShichenLiu/CondenseNet, ``models/condensenet.py`` and
``models/condensenet_converted.py``), so their converted ImageNet checkpoints load as local files.

Paper numbers (Table 5, ImageNet, 224x224; the same numbers in the authors' README):

* CondenseNet (G=C=4): 529M multiply-adds, 4.8M parameters, 26.2% top-1 error -> ``condensenet``.
* CondenseNet (G=C=8): 274M multiply-adds, 2.9M parameters, 29.0% top-1 error -> ``condensenet_g8``.

Weights: native only (no timm or torchvision weights).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup
from zoo._registry import register_model
from zoo.layers import channel_shuffle

PAPER = "CondenseNet: An Efficient DenseNet using Learned Group Convolutions"


class Conv(nn.Sequential):
    """BN-ReLU-conv (pre-activation), the official ``layers.Conv``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)


class LearnedGroupConv(nn.Module):
    """BN-ReLU-1x1 conv whose input connections are pruned group by group during training (Sec. 3.1).

    Output channel ``o`` belongs to group ``o % groups`` (the authors' interleaved convention). Each condensing
    stage removes, for every group, the ``in_chs // condense_factor`` remaining input channels whose summed
    absolute weight over the group's outputs is smallest; after ``condense_factor - 1`` stages each group keeps
    ``in_chs // condense_factor`` inputs.
    """

    def __init__(self, in_chs: int, out_chs: int, groups: int, condense_factor: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_chs % condense_factor or in_chs % groups or out_chs % groups:
            raise ValueError(
                f"{in_chs} inputs / {out_chs} outputs do not split into {groups} groups, C={condense_factor}"
            )
        self.in_chs, self.out_chs, self.groups, self.condense_factor = in_chs, out_chs, groups, condense_factor
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        # float buffers named as in the authors' checkpoints
        self.register_buffer("_count", torch.zeros(1))
        self.register_buffer("_stage", torch.zeros(1))
        self.register_buffer("_mask", torch.ones(out_chs, in_chs, 1, 1))

    @property
    def stage(self) -> int:
        """Condensing stages done so far (0 .. ``condense_factor - 1``)."""
        return int(self._stage.item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.drop(self.relu(self.norm(x))), self.conv.weight * self._mask)

    @torch.no_grad()
    def condense_to(self, stage: int) -> None:
        """Run the condensing stages up to ``stage`` (no-op for stages already done)."""
        delta = self.in_chs // self.condense_factor
        while self.stage < min(stage, self.condense_factor - 1):
            importance = (self.conv.weight * self._mask).abs().flatten(1)  # (out, in)
            for g in range(self.groups):
                alive = self._mask[g, :, 0, 0] > 0
                score = importance[g :: self.groups].sum(0).masked_fill(~alive, float("inf"))
                self._mask[g :: self.groups, score.argsort()[:delta]] = 0.0
            self._count += delta
            self._stage += 1

    def lasso_loss(self) -> torch.Tensor:
        """Group lasso over (group, input channel) weight groups; zero once condensing is complete."""
        if self.stage >= self.condense_factor - 1:
            return self.conv.weight.new_zeros(())
        w = (self.conv.weight * self._mask).flatten(1).pow(2)
        return w.view(-1, self.groups, self.in_chs).sum(0).clamp(min=1e-6).sqrt().sum()


class CondenseConv(nn.Module):
    """Condensed learned group conv: index select, BN-ReLU, grouped 1x1 conv, channel shuffle (Fig. 3, test)."""

    def __init__(self, in_chs: int, out_chs: int, groups: int, condense_factor: int) -> None:
        super().__init__()
        kept = in_chs * groups // condense_factor
        self.groups = groups
        self.norm = nn.BatchNorm2d(kept)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(kept, out_chs, 1, groups=groups, bias=False)
        # an untrained condensed layer needs some selection: group g reads every G-th channel from offset g, so
        # each group sees features of every earlier layer (a trained selection replaces it through condense()).
        default = torch.arange(in_chs).view(-1, groups).t().reshape(-1).repeat(condense_factor)[:kept]
        self.register_buffer("index", default.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.norm(x.index_select(1, self.index))))
        return channel_shuffle(x, self.groups)  # group-major outputs back to the learned (interleaved) order


class MaskedLinear(nn.Linear):
    """Linear classifier of the training form; :meth:`condense_` prunes half its inputs like ``CondensingLinear``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    @torch.no_grad()
    def condense_(self, keep: float = 0.5) -> None:
        """Keep the ``keep`` fraction of input features with the largest L1 weight."""
        if self.mask.sum() < self.in_features:
            return
        top = (self.weight * self.mask).abs().sum(0).argsort(descending=True)[: int(self.in_features * keep)]
        self.mask.zero_()[top] = 1.0


class CondenseLinear(nn.Module):
    """Condensed classifier: select the kept features, then a linear layer (official ``CondenseLinear``)."""

    def __init__(self, in_features: int, num_classes: int, keep: float = 0.5) -> None:
        super().__init__()
        n = int(in_features * keep)
        self.linear = nn.Linear(n, num_classes)
        # untrained default: every other feature, so the classifier sees all layers' outputs
        self.register_buffer("index", torch.arange(in_features)[:: max(1, in_features // n)][:n].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(1, self.index))


class DenseLayer(nn.Module):
    """1x1 learned group conv (4k outputs) then BN-ReLU-3x3 group conv (k outputs), concatenated to the input."""

    def __init__(
        self,
        in_chs: int,
        growth: int,
        bottleneck: int,
        groups: int,
        condense_factor: int,
        learned: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        mid = bottleneck * growth
        if learned:
            self.conv_1: nn.Module = LearnedGroupConv(in_chs, mid, groups, condense_factor, dropout)
        else:
            self.conv_1 = CondenseConv(in_chs, mid, groups, condense_factor)
        self.conv_2 = Conv(mid, growth, 3, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv_2(self.conv_1(x))], 1)


class CondenseNet(Backbone):
    """CondenseNet, in its training (``learned=True``) or condensed inference form.

    Args:
        stages: dense layers per block.
        growth: growth rate per block.
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        groups: groups G of the 1x1 learned group convs and the 3x3 group convs.
        condense_factor: condensation factor C (default G).
        bottleneck: width of the 1x1 output in multiples of the growth rate.
        learned: build the training form (masked dense 1x1 convs) instead of the condensed one.
        dropout: dropout before each learned 1x1 conv (training form only; 0 in the paper's ImageNet runs).
        drop_rate: dropout before the classifier.
        keep: fraction of the classifier inputs kept after condensation.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        stages: tuple[int, ...] = (4, 6, 8, 10, 8),
        growth: tuple[int, ...] = (8, 16, 32, 64, 128),
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 4,
        condense_factor: int | None = None,
        bottleneck: int = 4,
        learned: bool = False,
        dropout: float = 0.0,
        drop_rate: float = 0.0,
        keep: float = 0.5,
    ) -> None:
        super().__init__()
        self.learned, self.keep, self.drop_rate, self.num_classes = learned, keep, drop_rate, num_classes
        self.cfg = dict(stages=tuple(stages), growth=tuple(growth), groups=groups, bottleneck=bottleneck)
        self.cfg["condense_factor"] = condense_factor = condense_factor or groups
        chs = 2 * growth[0]
        layers: OrderedDict[str, nn.Module] = OrderedDict(init_conv=nn.Conv2d(in_chans, chs, 3, 2, 1, bias=False))
        self.feature_info = [FeatureInfo(chs, 2)]
        for i, (n, k) in enumerate(zip(stages, growth)):
            if i > 0:
                layers[f"transition_{i}"] = nn.AvgPool2d(2, 2)
            block = nn.Sequential()
            for j in range(n):
                block.add_module(
                    f"denselayer_{j + 1}",
                    DenseLayer(chs + j * k, k, bottleneck, groups, condense_factor, learned, dropout),
                )
            layers[f"denseblock_{i + 1}"] = block
            chs += n * k
            self.feature_info.append(FeatureInfo(chs, 2 ** (i + 1)))
        layers["norm_last"] = nn.BatchNorm2d(chs)
        layers["relu_last"] = nn.ReLU(inplace=True)
        self.features = nn.Sequential(layers)
        self.num_features = chs
        self.classifier = self._make_classifier(num_classes)
        for m in self.modules():  # the authors' init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        # Stages group children of ``features`` (the authors' keys): the stem conv, then [pool +] dense block, the
        # last one with the final norm and ReLU.
        groups = [[*([f"transition_{i}"] if i > 0 else []), f"denseblock_{i + 1}"] for i in range(len(stages))]
        groups[-1] += ["norm_last", "relu_last"]
        self.set_stages("features.init_conv", *(StageGroup(self, *(f"features.{n}" for n in g)) for g in groups))

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.learned:
            return MaskedLinear(self.num_features, num_classes)
        return CondenseLinear(self.num_features, num_classes, self.keep)

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier; the condensed form keeps its feature selection (``index``) and re-makes the linear."""
        index = getattr(self.classifier, "index", None)
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        if index is not None and isinstance(self.classifier, CondenseLinear):
            self.classifier.index.copy_(index)

    def learned_convs(self) -> list[LearnedGroupConv]:
        """The learned group convs (empty in the condensed form)."""
        return [m for m in self.modules() if isinstance(m, LearnedGroupConv)]

    def set_progress(self, progress: float) -> None:
        """Advance condensation to the training progress in [0, 1] (call once per iteration, as the authors do).

        Condensing stage ``s`` starts at progress ``s / (2 (C - 1))``: the C-1 stages fill the first half of
        training, the second half optimises the pruned network.
        """
        for m in self.learned_convs():
            c = m.condense_factor
            stage = next((i for i in range(c - 1) if progress * 2 < (i + 1) / (c - 1)), c - 1)
            m.condense_to(stage)

    def lasso_loss(self) -> torch.Tensor:
        """Sum of the group-lasso terms of all learned group convs (add ``lambda *`` this to the loss)."""
        terms = [m.lasso_loss() for m in self.learned_convs()]
        return torch.stack(terms).sum() if terms else torch.zeros(())


def _checked(index: torch.Tensor, n: int) -> torch.Tensor:
    assert index.numel() == n, f"expected {n} kept channels, found {index.numel()}"
    return index


@torch.no_grad()
def condense(model: CondenseNet) -> CondenseNet:
    """Convert a trained training-form CondenseNet into the condensed inference form (same outputs).

    Condensing stages not yet run are run first (as at the end of the first half of training), and the
    classifier is pruned to ``model.keep`` of its inputs; both changes are made to ``model`` itself, so
    afterwards ``model`` and the returned network compute the same function.

    Args:
        model: a CondenseNet built with ``learned=True``.

    Returns:
        The condensed CondenseNet, in the mode (train/eval) of ``model``.
    """
    if not model.learned:
        raise ValueError("condense() needs the training form (learned=True); this model is condensed already")
    cfg = model.cfg
    model.set_progress(1.0)
    num_classes = model.num_classes
    out = CondenseNet(
        **cfg, num_classes=num_classes, in_chans=model.features.init_conv.in_channels, keep=model.keep
    ).to(next(model.parameters()).device)
    out.drop_rate = model.drop_rate
    src = dict(model.named_modules())
    for name, dst in out.named_modules():
        if isinstance(dst, CondenseConv):
            lgc: LearnedGroupConv = src[name]
            g, d_out = lgc.groups, lgc.out_chs // lgc.groups
            per_group = dst.index.numel() // g
            for i in range(g):
                # kept inputs of group i in ascending order; output k of group i was learned channel i + k * g
                chans = _checked(lgc._mask[i, :, 0, 0].nonzero().flatten(), per_group)
                sl = slice(i * per_group, (i + 1) * per_group)
                dst.index[sl] = chans
                dst.conv.weight[i * d_out : (i + 1) * d_out] = lgc.conv.weight[i::g][:, chans]
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(dst.norm, attr)[sl] = getattr(lgc.norm, attr)[chans]
            dst.norm.num_batches_tracked.copy_(lgc.norm.num_batches_tracked)
    # everything else (stem, 3x3 convs, BNs) has the same names and shapes
    own = out.state_dict()
    for k, v in model.state_dict().items():
        if k in own and own[k].shape == v.shape and not k.endswith("index") and ".conv_1." not in k:
            own[k].copy_(v)
    if isinstance(model.classifier, MaskedLinear):
        model.classifier.condense_(model.keep)
        kept = model.classifier.mask.nonzero().flatten()
        out.classifier.index.copy_(kept)
        out.classifier.linear.weight.copy_(model.classifier.weight[:, kept])
        out.classifier.linear.bias.copy_(model.classifier.bias)
    return out.train(model.training)


_COMMON: dict[str, Any] = dict(
    family="condensenet",
    paper=PAPER,
    arxiv="1711.09224",
    year=2018,
    first_conv="features.init_conv",
    classifier="classifier.linear",
    min_size=32,
    paper_input_size=(3, 224, 224),
)


def condensenet_learned(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> CondenseNet:
    """Training form of the ImageNet CondenseNet (G=C=4): masked dense 1x1 convs; see :func:`condense`.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`CondenseNet` options (``groups``, ``condense_factor``, ``dropout``, ...).
    """
    return CondenseNet(num_classes=num_classes, in_chans=in_chans, learned=True, **kwargs)


@register_model(
    num_params=4_773_944, paper_params=4_800_000, paper_macs=529_000_000, aliases=("condensenet_g4",), **_COMMON
)
def condensenet(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> CondenseNet:
    """Condensed ImageNet CondenseNet, G=C=4 (blocks 4-6-8-10-8, growth 8-16-32-64-128), Table 5.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`CondenseNet` options (``drop_rate``, ...).
    """
    return CondenseNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(num_params=2_935_416, paper_params=2_900_000, paper_macs=274_000_000, **_COMMON)
def condensenet_g8(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> CondenseNet:
    """Condensed ImageNet CondenseNet, G=C=8 (blocks 4-6-8-10-8, growth 8-16-32-64-128), Table 5.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`CondenseNet` options.
    """
    return CondenseNet(num_classes=num_classes, in_chans=in_chans, groups=8, **kwargs)
