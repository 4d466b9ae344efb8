"""MSDNet: a multi-scale dense network with classifiers at increasing depth, for anytime and budgeted prediction.

Paper: Huang, Chen, Li, Wu, van der Maaten, Weinberger, "Multi-Scale Dense Networks for Resource Efficient Image
Classification", arXiv:1703.09844, 2018 (ICLR). The network keeps feature maps at S scales from the first layer
on; layer ``l`` at scale ``s`` concatenates (dense connectivity) a regular conv of scale ``s`` and a strided conv of
scale ``s-1`` (Sec. 4, Fig. 2). Every classifier reads the coarsest scale, so an early exit already sees
high-level features. Scales no longer needed by later classifiers are dropped as depth grows, each drop followed
by a 1x1 transition halving the channels.

Configuration: the paper's ImageNet network (Sec. 5, Appendix A), exactly as the authors' ImageNet recipe
(github.com/kalviny/MSDNet-PyTorch, README): 4 scales, 5 blocks (5 exits), ``base=4`` layers before the first
exit then ``step=4`` layers per exit, 32 stem channels, growth rate 16, growth / bottleneck factors 1-2-4-4 per
scale, ``prune=max`` and transition reduction 0.5. The stem is a 7x7/2 conv + 3x3/2 max pool (scale 1) and
3x3/2 convs for scales 2-4; each exit is two 3x3/2 conv-BN-ReLU, average pooling and a linear layer. Module names
mirror the authors' code, so their ImageNet checkpoints load as local files. One deliberate difference: the
exits end in global average pooling instead of a fixed ``AvgPool2d(2)``; at 224x224 both pool the same 2x2 map,
and global pooling lets the network run on small inputs.

Paper numbers: the MSDNet paper shows its ImageNet results as curves of accuracy against multiply-adds (Figs. 5
and 7) and prints no table for this network. The per-exit counts of exactly this network (ImageNet, 5 exits,
step 4) are tabulated by the authors' follow-up, Li, Zhang, Qi, Yang, Huang, "Improved Techniques for Training
Adaptive Deep Networks", arXiv:1908.06294, 2019 (ICCV): 4.24 / 8.77 / 13.07 / 16.75 / 23.96M parameters and
0.34 / 0.69 / 1.01 / 1.25 / 1.36G multiply-adds at exits 1-5. ``paper_params`` records the full network
(23.96M). The 1.36G of the last exit includes the four earlier exits (all of them run on the way in anytime
prediction), while ``forward`` runs only the last one (1.26G), so ``paper_macs`` is not set; the family tests
check :meth:`MSDNet.exit_macs` (0.34 / 0.68 / 1.00 / 1.25 / 1.36G) against the table instead.

Contract: ``forward`` returns the last exit's logits, ``forward_exits`` all exits' logits, :meth:`MSDNet.loss`
the paper's training objective (unweighted sum of all exits' cross-entropy), :meth:`MSDNet.predict_anytime`
the confidence-thresholded early exit of the budgeted batch setting (Sec. 3). ``stages()`` is the stem and the
five blocks; exits 1-4 belong to their block's stage and the last exit is ``head_modules()``. In training mode
``forward`` also runs exits 1-4 and ties them into the graph with zero gradient, so every parameter is used
(DDP without ``find_unused_parameters``); only ``loss``/``forward_exits`` train them. ``forward_features`` (and
every ``forward_stages`` entry) is the coarsest scale, the map the exits read.

Weights: native only (no timm or torchvision weights).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zoo._backbone import Backbone, FeatureInfo, StageGroup
from zoo._registry import register_model

PAPER = "Multi-Scale Dense Networks for Resource Efficient Image Classification"
Scales = list[torch.Tensor]


class ConvBasic(nn.Module):
    """Conv-BN-ReLU (official ``ConvBasic``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    """Bottleneck conv: 1x1 conv-BN-ReLU to ``min(in, bn_width * out)``, then 3x3 conv-BN-ReLU (stride 1 or 2)."""

    def __init__(self, in_chs: int, out_chs: int, down: bool, bn_width: int) -> None:
        super().__init__()
        mid = min(in_chs, bn_width * out_chs)
        self.net = nn.Sequential(
            nn.Conv2d(in_chs, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(True),
            nn.Conv2d(mid, out_chs, 3, 2 if down else 1, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDownNormal(nn.Module):
    """Scale ``s`` of a layer: concat(own input, strided conv of scale s-1, regular conv of scale s)."""

    def __init__(self, in_fine: int, in_coarse: int, out_chs: int, bn_fine: int, bn_coarse: int) -> None:
        super().__init__()
        self.conv_down = ConvBN(in_fine, out_chs // 2, True, bn_fine)
        self.conv_normal = ConvBN(in_coarse, out_chs // 2, False, bn_coarse)

    def forward(self, x: Scales) -> torch.Tensor:
        return torch.cat([x[1], self.conv_down(x[0]), self.conv_normal(x[1])], 1)


class ConvNormal(nn.Module):
    """The finest kept scale of a layer: concat(own input, regular conv)."""

    def __init__(self, in_chs: int, out_chs: int, bn_width: int) -> None:
        super().__init__()
        self.conv_normal = ConvBN(in_chs, out_chs, False, bn_width)

    def forward(self, x: Scales) -> torch.Tensor:
        return torch.cat([x[0], self.conv_normal(x[0])], 1)


class MSDNFirstLayer(nn.Module):
    """Stem: 7x7/2 conv + 3x3/2 max pool for the finest scale, then one 3x3/2 conv-BN-ReLU per coarser scale."""

    def __init__(self, in_chans: int, chs: int, gr_factor: tuple[int, ...]) -> None:
        super().__init__()
        first = chs * gr_factor[0]
        # the authors' ImageNet stem conv keeps PyTorch's default bias
        self.layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_chans, first, 7, 2, 3), nn.BatchNorm2d(first), nn.ReLU(True), nn.MaxPool2d(3, 2, 1)
                )
            ]
        )
        for i in range(1, len(gr_factor)):
            self.layers.append(ConvBasic(chs * gr_factor[i - 1], chs * gr_factor[i], 3, 2, 1))

    def forward(self, x: torch.Tensor) -> Scales:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class MSDNLayer(nn.Module):
    """One multi-scale dense layer from ``in_scales`` to ``out_scales`` (the finest scale is dropped if fewer)."""

    def __init__(
        self, in_chs: int, growth: int, gr: tuple[int, ...], bn: tuple[int, ...], in_scales: int, out_scales: int
    ) -> None:
        super().__init__()
        n = len(gr)
        self.discard = in_scales - out_scales
        self.out_scales = out_scales
        off = n - out_scales
        self.layers = nn.ModuleList()
        if self.discard > 0:
            self.layers.append(
                ConvDownNormal(in_chs * gr[off - 1], in_chs * gr[off], growth * gr[off], bn[off - 1], bn[off])
            )
        else:
            self.layers.append(ConvNormal(in_chs * gr[off], growth * gr[off], bn[off]))
        for i in range(off + 1, n):
            self.layers.append(ConvDownNormal(in_chs * gr[i - 1], in_chs * gr[i], growth * gr[i], bn[i - 1], bn[i]))

    def forward(self, x: Scales) -> Scales:
        if self.discard > 0:
            pairs = [[x[i - 1], x[i]] for i in range(1, self.out_scales + 1)]
        else:
            pairs = [[x[0]]] + [[x[i - 1], x[i]] for i in range(1, self.out_scales)]
        return [layer(p) for layer, p in zip(self.layers, pairs)]


class ParallelModule(nn.Module):
    """One module per scale (the 1x1 transitions)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.m = nn.ModuleList(modules)

    def forward(self, x: Scales) -> Scales:
        return [m(t) for m, t in zip(self.m, x)]


class ClassifierModule(nn.Module):
    """Exit: two 3x3/2 conv-BN-ReLU on the coarsest scale, global average pool, linear."""

    def __init__(self, chs: int, num_classes: int) -> None:
        super().__init__()
        self.m = nn.Sequential(ConvBasic(chs, chs, 3, 2, 1), ConvBasic(chs, chs, 3, 2, 1), nn.AdaptiveAvgPool2d(1))
        self.linear: nn.Module = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pre_logits(x))


class _TieExits(torch.autograd.Function):
    """Returns the last exit's logits; backward sends zero gradients to the other exits.

    In training mode ``forward`` uses it so that every parameter takes part in the graph: DDP without
    ``find_unused_parameters`` and code that inspects gradients then work when a trainer calls plain ``forward``
    (the other exits learn only through :meth:`MSDNet.loss` / ``forward_exits``).
    """

    @staticmethod
    def forward(ctx: Any, last: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        ctx.shapes = [o.shape for o in others]
        return last.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (grad, *(grad.new_zeros(s) for s in ctx.shapes))


class AnytimeOutput(NamedTuple):
    """Result of :meth:`MSDNet.predict_anytime`: per-image logits, exit index and multiply-adds spent."""

    logits: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor


class MSDNet(Backbone):
    """Multi-Scale Dense Network (ImageNet form: 7x7 stem, exits of two strided convs + pool + linear).

    Args:
        num_classes: width of every exit's classifier (0: no classifiers, exits return pooled features).
        in_chans: input channels.
        n_blocks: blocks, one exit after each.
        base: layers in the first block.
        step: layers in every later block (``stepmode=even``).
        channels: stem channels at the finest scale.
        growth: growth rate at the finest scale.
        gr_factor: per-scale growth-rate multipliers (its length is the number of scales).
        bn_factor: per-scale bottleneck widths.
        reduction: channel compression of the transitions after a scale is dropped.
        drop_rate: dropout before each exit's linear layer.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        n_blocks: int = 5,
        base: int = 4,
        step: int = 4,
        channels: int = 32,
        growth: int = 16,
        gr_factor: tuple[int, ...] = (1, 2, 4, 4),
        bn_factor: tuple[int, ...] = (1, 2, 4, 4),
        reduction: float = 0.5,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        n_scales = len(gr_factor)
        steps = [base] + [step] * (n_blocks - 1)
        n_all, n_cur = sum(steps), 0
        interval = math.ceil(n_all / n_scales)  # prune=max: drop the finest scale every `interval` layers
        chs = channels
        self.blocks = nn.ModuleList()
        self.classifier = nn.ModuleList()
        for i, n in enumerate(steps):
            layers: list[nn.Module] = [MSDNFirstLayer(in_chans, chs, gr_factor)] if i == 0 else []
            for _ in range(n):
                n_cur += 1
                in_s = n_scales - max(0, n_cur - 2) // interval
                out_s = n_scales - (n_cur - 1) // interval
                layers.append(MSDNLayer(chs, growth, gr_factor, bn_factor, in_s, out_s))
                chs += growth
                if in_s > out_s and reduction > 0:
                    off, new = n_scales - out_s, math.floor(reduction * chs)
                    layers.append(
                        ParallelModule(
                            [
                                ConvBasic(chs * gr_factor[off + j], new * gr_factor[off + j], 1, 1, 0)
                                for j in range(out_s)
                            ]
                        )
                    )
                    chs = new
            self.blocks.append(nn.Sequential(*layers))
            self.classifier.append(ClassifierModule(chs * gr_factor[-1], num_classes))
        self.num_features = chs * gr_factor[-1]
        reduction_last = 4 * 2 ** (n_scales - 1)  # stem /4, then /2 per scale
        self.feature_info = [FeatureInfo(channels * gr_factor[-1], reduction_last)]
        self.feature_info += [FeatureInfo(c.m[0].net[0].in_channels, reduction_last) for c in self.classifier]
        self._macs_cache: dict[tuple[int, ...], list[int]] = {}
        for m in self.modules():  # the authors' init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        # The stem (block 0's first layer), then each block with its exit as an ``extra`` member: the exit trains
        # with its block but the stage maps scales to scales (the exits run in ``forward_exits``).
        first = [f"blocks.0.{j}" for j in range(1, len(self.blocks[0]))]
        self.set_stages(
            "blocks.0.0",
            *(
                StageGroup(self, *(first if i == 0 else [f"blocks.{i}"]), extra={"exit": f"classifier.{i}"})
                for i in range(n_blocks - 1)
            ),
            StageGroup(self, *(first if n_blocks == 1 else [f"blocks.{n_blocks - 1}"])),
        )

    # -- Backbone contract -------------------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier[-1]]

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1].linear

    def reset_classifier(self, num_classes: int) -> None:
        """Re-make every exit's linear layer for ``num_classes`` (0: identity)."""
        self.num_classes = num_classes
        for c in self.classifier:
            chs = c.m[0].net[0].in_channels
            c.linear = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        self._macs_cache.clear()

    def _run(self, i: int, x: Any) -> Scales:
        """Block ``i`` (block 0 includes the stem) on an image batch or a list of scales, through its stage."""
        stages = self._stage_modules()
        return stages[1](stages[0](x)) if i == 0 else stages[i + 1](x)

    def _exit(self, i: int, x: Scales) -> torch.Tensor:
        c = self.classifier[i]
        feats = (
            F.dropout(c.pre_logits(x[-1]), self.drop_rate, self.training) if self.drop_rate > 0 else c.pre_logits(x[-1])
        )
        return c.linear(feats)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self._stage_modules():
            x = stage(x)
            outs.append(x[-1])
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_exits):
            x = self._run(i, x)
        return x[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        c = self.classifier[-1]
        x = c.pre_logits(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else c.linear(x)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, shallowest first."""
        outs = []
        for i in range(self.num_exits):
            x = self._run(i, x)
            outs.append(self._exit(i, x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            outs = self.forward_exits(x)
            return _TieExits.apply(outs[-1], *outs[:-1])
        return self.forward_head(self.forward_features(x))

    def loss(self, x: torch.Tensor, target: torch.Tensor, weights: list[float] | None = None) -> torch.Tensor:
        """The paper's training objective: the (by default unweighted) sum of every exit's cross-entropy."""
        weights = weights or [1.0] * self.num_exits
        return sum(w * F.cross_entropy(o, target) for w, o in zip(weights, self.forward_exits(x)))  # type: ignore[return-value]

    # -- budgeted prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def exit_macs(self, input_size: tuple[int, ...]) -> list[int]:
        """Cumulative multiply-adds of one image that leaves at each exit (stem, blocks and all exits up to it).

        Counted once per input size with ``torch.utils.flop_counter`` (convolutions and linear layers).
        """
        from torch.utils.flop_counter import FlopCounterMode

        key = tuple(input_size)
        if key not in self._macs_cache:
            p = next(self.parameters())
            x: Any = torch.zeros(1, *key, device=p.device, dtype=p.dtype)
            was_training, total, costs = self.training, 0, []
            self.eval()
            for i in range(self.num_exits):
                counter = FlopCounterMode(display=False)
                with counter:
                    x = self._run(i, x)
                    self._exit(i, x)
                total += counter.get_total_flops() // 2
                costs.append(total)
            self.train(was_training)
            self._macs_cache[key] = costs
        return list(self._macs_cache[key])

    @torch.no_grad()
    def predict_anytime(self, x: torch.Tensor, threshold: float) -> AnytimeOutput:
        """Early exit per image: stop at the first exit whose max softmax probability is ``>= threshold``.

        Later blocks run only on the images still in flight (the batch shrinks), so the compute saved is real.
        Call it in eval mode (BatchNorm then treats images independently).

        Args:
            x: image batch (N, C, H, W).
            threshold: confidence threshold; 0 exits everything at the first exit, > 1 runs every image to the last.

        Returns:
            :class:`AnytimeOutput` with the logits of the exit each image used, that exit's index and the
            multiply-adds it cost (:meth:`exit_macs`).
        """
        costs = self.exit_macs(tuple(x.shape[1:]))
        n = x.shape[0]
        logits: torch.Tensor | None = None
        exits = torch.full((n,), -1, dtype=torch.long, device=x.device)
        macs = torch.zeros(n, dtype=torch.long, device=x.device)
        alive = torch.arange(n, device=x.device)
        feats: Any = x
        for i in range(self.num_exits):
            feats = self._run(i, feats)
            out = self._exit(i, feats)
            if logits is None:
                logits = out.new_zeros(n, out.shape[1])
            last = i == self.num_exits - 1
            done = torch.ones_like(alive, dtype=torch.bool) if last else out.softmax(1).amax(1) >= threshold
            logits[alive[done]] = out[done]
            exits[alive[done]] = i
            macs[alive[done]] = costs[i]
            alive, feats = alive[~done], [t[~done] for t in feats]
            if alive.numel() == 0:
                break
        assert logits is not None
        return AnytimeOutput(logits, exits, macs)


@register_model(
    family="msdnet",
    paper=PAPER,
    arxiv="1703.09844",
    year=2018,
    num_params=23_958_440,
    paper_params=23_960_000,
    paper_input_size=(3, 224, 224),
    first_conv="blocks.0.0.layers.0.0",
    classifier="classifier.4.linear",
    min_size=32,
)
def msdnet(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MSDNet:
    """MSDNet for ImageNet: 4 scales, 5 exits, base 4 / step 4, 32 channels, growth 16, factors 1-2-4-4.

    Args:
        num_classes: width of every exit's classifier.
        in_chans: input channels.
        **kwargs: :class:`MSDNet` options (``n_blocks``, ``step``, ``growth``, ``drop_rate``, ...).
    """
    return MSDNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
