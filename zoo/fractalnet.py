"""FractalNet: ultra-deep networks built by a fractal expansion rule, with no residual connections.

Paper: Larsson, Maire, Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without Residuals",
arXiv:1605.07648, 2017 (ICLR).

Expansion rule (Sec. 2): ``f_1(z) = conv(z)`` and ``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))``, where ``join`` is
the element-wise mean and adjacent joins are merged into one join of several inputs. A block ``f_C`` therefore has
C columns, column ``c`` holding ``2^c`` conv-BN-ReLU layers (``2^C - 1`` in all); B blocks, each followed by 2x2
max pooling, make a network whose deepest path has ``B * 2^(C-1)`` conv layers.

Drop-path (Sec. 3): in training each join drops each of its inputs with probability ``drop_path_rate`` (local,
at least one input survives), or, for images picked for *global* drop-path, keeps only the inputs of one column
chosen per image for the whole network, so the image trains a single plain column. Both act per image: each image
of a batch is global with probability ``global_drop_ratio`` (the paper mixes 50% local and 50% global; the
authors' Caffe layer draws the choice per mini-batch). At test time every join averages all its inputs.
:meth:`FractalNet.forward_column` runs one column alone (the paper's "deepest column" subnetwork).

Configuration: the paper's CIFAR network (Sec. 4.1, Table 1 row "FractalNet (20 layers)"), chosen because it is
the configuration the paper specifies completely and the one of the authors' released generator
(github.com/gustavla/fractalnet, ``generation/fractalnet.py``): B=5 blocks, C=3 columns (20 layers deep), 64,
128, 256, 512, 512 channels, 3x3 conv -> dropout -> BN -> ReLU, each column pooled before the block's last join,
a linear classifier on the 1x1 map; 32x32 input. The ImageNet FractalNet-34 is specified only in outline (ResNet-34's
first and last layers around B=4, C=4 blocks), and the paper gives no parameter or multiply-add figure for it.

Paper numbers: Table 1 lists 38.6M parameters for the 20-layer network, but the layers the paper and the
authors' generator specify count 33.7M (an independent reproduction, github.com/khanrc/pt.fractalnet, notes the
same gap), and the paper gives no multiply-adds; ``paper_params``/``paper_macs`` are therefore not set. The
paper's regularisers are options: ``drop_path_rate=0.15`` and ``global_drop_ratio=0.5`` (defaults), per-block
``dropout=(0.0, 0.1, 0.2, 0.3, 0.4)`` (default off).

Weights: native only (no timm or torchvision weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo._backbone import Backbone, FeatureInfo
from zoo._registry import register_model
from zoo.layers import NormLayer, get_norm_layer

PAPER = "FractalNet: Ultra-Deep Neural Networks without Residuals"


class FractalConv(nn.Module):
    """3x3 conv, dropout, norm, ReLU (the authors' order)."""

    def __init__(self, in_chs: int, out_chs: int, dropout: float, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn = norm_layer(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.drop(self.conv(x))))


class FractalBlock(nn.Module):
    """Fractal block ``f_C`` followed by 2x2 max pooling; ``columns[c]`` holds column c's ``2^c`` layers.

    ``global_columns`` (set by :class:`FractalNet` for the duration of one forward pass) gives, per image, the
    column kept by global drop-path, or -1 for local drop-path; when None, every join uses local drop-path.
    """

    def __init__(
        self, in_chs: int, out_chs: int, num_columns: int, dropout: float, drop_path_rate: float, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.num_columns, self.drop_path_rate = num_columns, drop_path_rate
        self.columns = nn.ModuleList(
            nn.ModuleList(FractalConv(in_chs if j == 0 else out_chs, out_chs, dropout, norm_layer) for j in range(2**c))
            for c in range(num_columns)
        )
        self.pool = nn.MaxPool2d(2)
        self.global_columns: torch.Tensor | None = None

    @property
    def depth(self) -> int:
        """Conv layers on the deepest path."""
        return 2 ** (self.num_columns - 1)

    def join(self, xs: list[torch.Tensor], cols: list[int]) -> torch.Tensor:
        """Element-wise mean of the inputs that drop-path keeps (all of them at test time)."""
        if not self.training or (self.drop_path_rate == 0.0 and self.global_columns is None):
            return torch.stack(xs).mean(0)
        n, b = len(xs), xs[0].shape[0]
        keep = torch.rand(n, b, device=xs[0].device) >= self.drop_path_rate
        rescue = torch.randint(n, (b,), device=keep.device)  # local drop-path keeps at least one input
        keep[rescue, torch.arange(b, device=keep.device)] |= ~keep.any(0)
        g = self.global_columns
        if g is not None:
            on_column = torch.stack([g == c for c in cols])  # an image on a global path keeps its column only
            keep = torch.where(g >= 0, on_column, keep)
        # images on a global path through a column outside this join get 0 here; no later layer of their path
        # reads this join's output, so it never reaches their prediction
        w = keep.to(xs[0].dtype)
        w = w / w.sum(0).clamp(min=1.0)
        return sum(wk.view(b, 1, 1, 1) * x for wk, x in zip(w, xs))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cur = [x] * self.num_columns
        for i in range(self.depth):
            # column c has a layer at depth i when (i + 1) is a multiple of 2^(C-1-c): always a suffix of columns
            active = [c for c in range(self.num_columns) if (i + 1) % 2 ** (self.num_columns - 1 - c) == 0]
            for c in active:
                cur[c] = self.columns[c][(i + 1) // 2 ** (self.num_columns - 1 - c) - 1](cur[c])
            if i == self.depth - 1:
                cur = [self.pool(t) for t in cur]  # pool, then join (the authors' implementation)
            if len(active) > 1:
                joined = self.join([cur[c] for c in active], active)
                for c in active:
                    cur[c] = joined
        return cur[-1]

    def forward_column(self, x: torch.Tensor, column: int) -> torch.Tensor:
        """Column ``column`` alone: its layers, then pooling."""
        for layer in self.columns[column]:
            x = layer(x)
        return self.pool(x)


class FractalNet(Backbone):
    """FractalNet: B fractal blocks of C columns, each followed by 2x2 max pooling, then a linear classifier.

    Args:
        num_classes: classifier width (0: no classifier).
        in_chans: input channels.
        num_columns: columns C of every block.
        channels: output channels of each block (one block per entry).
        dropout: per-block dropout rate after each conv (the paper's regularised runs: 0, .1, .2, .3, .4).
        drop_path_rate: local drop-path probability of each join input (paper: 0.15).
        global_drop_ratio: probability that an image uses global drop-path (paper: 0.5).
        drop_rate: dropout before the classifier.
        norm_layer: normalisation (``"batchnorm"`` as in the paper, ``"groupnorm"`` or a callable).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        num_columns: int = 3,
        channels: tuple[int, ...] = (64, 128, 256, 512, 512),
        dropout: tuple[float, ...] | None = None,
        drop_path_rate: float = 0.15,
        global_drop_ratio: float = 0.5,
        drop_rate: float = 0.0,
        norm_layer: str | NormLayer | None = None,
    ) -> None:
        super().__init__()
        norm = get_norm_layer(norm_layer)
        dropout = tuple(dropout) if dropout is not None else (0.0,) * len(channels)
        self.num_columns, self.global_drop_ratio = num_columns, global_drop_ratio
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.blocks = nn.ModuleList()
        self.feature_info = []
        prev = in_chans
        for i, (chs, p) in enumerate(zip(channels, dropout)):
            self.blocks.append(FractalBlock(prev, chs, num_columns, p, drop_path_rate, norm))
            self.feature_info.append(FeatureInfo(chs, 2 ** (i + 1)))
            prev = chs
        self.num_features = prev
        self.fc = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
        self.last_global_columns: torch.Tensor | None = None
        self.set_stages(*(f"blocks.{i}" for i in range(len(self.blocks))))

    @property
    def depth(self) -> int:
        """Conv layers on the deepest path (``B * 2^(C-1)``)."""
        return sum(b.depth for b in self.blocks)

    def _sample_global(self, x: torch.Tensor) -> None:
        """Draw, per image, the column of global drop-path (-1: local) and hand it to every block."""
        g = None
        if self.training and self.global_drop_ratio > 0:
            b = x.shape[0]
            is_global = torch.rand(b, device=x.device) < self.global_drop_ratio
            col = torch.randint(self.num_columns, (b,), device=x.device)
            g = torch.where(is_global, col, torch.full_like(col, -1))
        self.last_global_columns = g  # kept for inspection (the family tests read it)
        for block in self.blocks:
            block.global_columns = g

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._sample_global(x)
        outs = []
        try:
            for block in self.blocks:
                x = block(x)
                outs.append(x)
        finally:  # a block called on its own (e.g. as a stage) falls back to local drop-path
            for block in self.blocks:
                block.global_columns = None
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_column(self, x: torch.Tensor, column: int = -1) -> torch.Tensor:
        """Logits of the plain network formed by one column of every block (default: the deepest, Sec. 4.2)."""
        column = column % self.num_columns
        for block in self.blocks:
            x = block.forward_column(x, column)
        return self.forward_head(x)


@register_model(
    family="fractalnet",
    paper=PAPER,
    arxiv="1605.07648",
    year=2017,
    num_params=34_232_488,
    input_size=(3, 32, 32),
    crop_pct=1.0,
    first_conv="blocks.0.columns.0.0.conv",
    classifier="fc",
    min_size=32,
    aliases=("fractalnet20",),
)
def fractalnet(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> FractalNet:
    """FractalNet-20 of the paper's CIFAR experiments: B=5, C=3, channels 64-128-256-512-512, 32x32 input.

    Args:
        num_classes: classifier width.
        in_chans: input channels.
        **kwargs: :class:`FractalNet` options (``drop_path_rate``, ``global_drop_ratio``, ``dropout``, ...).
    """
    return FractalNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
