"""The model contract every zoo architecture implements.

``stages()`` is what partial fine-tuning, per-stage probes and the UI use: stem first, head excluded, and the
stages plus ``head()`` cover every parameter exactly once. A stage may group modules that sit at the top level
of the model (for example ResNet's ``conv1``, ``bn1`` and ``maxpool``): the group is made on the fly in
``stages()`` so that state-dict keys stay those of timm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """Output of one stage: channel count and total stride relative to the input."""

    num_chs: int
    reduction: int


class Backbone(nn.Module):
    """Base class of every zoo model.

    Subclasses set ``num_features`` (channels of ``forward_features``), ``feature_info`` (one entry per stage),
    implement ``stages()``, ``head()``, ``get_classifier()``, ``reset_classifier()`` and ``forward_head()``,
    and usually inherit ``forward_features`` (the stages applied in order).
    """

    num_features: int
    head_hidden_size: int | None = None  # width of forward_head(pre_logits=True) when it differs from num_features
    feature_info: list[FeatureInfo]
    num_classes: int

    def stages(self) -> list[nn.Module]:
        """The trunk as a list of modules, stem first, head excluded."""
        raise NotImplementedError

    # The default head is timm's most common one: global average pool, dropout, one linear layer stored under
    # the attribute named by ``classifier_attr``. Families with another head override the four methods below.
    classifier_attr: str = "fc"
    drop_rate: float = 0.0

    def head(self) -> list[nn.Module]:
        """The modules after the last stage (pooling, pre-logits, classifier)."""
        return [self.get_classifier()]

    def get_classifier(self) -> nn.Module:
        """The final classification layer."""
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one for ``num_classes`` (0: identity)."""
        self.num_classes = num_classes
        setattr(self, self.classifier_attr, linear_or_identity(self.pre_logits_dim, num_classes))

    @property
    def pre_logits_dim(self) -> int:
        """Width of ``forward_head(x, pre_logits=True)``: what a linear probe sees."""
        return self.head_hidden_size or self.num_features

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, in order (what per-stage probes pool)."""
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled NCHW features of the last stage."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the features and classify them (or stop before the classifier with ``pre_logits``)."""
        x = x.mean((2, 3))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """A fresh classifier, or Identity for ``num_classes == 0`` (timm's convention for feature extractors)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
