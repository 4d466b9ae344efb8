"""The model contract every zoo architecture implements.

``stages()`` is what partial fine-tuning, per-stage probes and the UI use: stem first, head excluded, and the
stages plus ``head_modules()`` cover every parameter exactly once. A model fixes its stages once, in ``__init__``,
with :meth:`Backbone.set_stages`, and every forward path runs those same modules, so a hook on a stage fires and
``stages()`` returns the same objects on every call.

A stage may group modules that sit at the top level of the model (for example ResNet's ``conv1``, ``bn1``, ``act1``
and ``maxpool``). A registered ``stem`` container would rename their state-dict keys away from timm's, so such a
stage is a :class:`StageView`: a module that holds the members without being registered on the model. The model's
``state_dict()`` and ``named_parameters()`` therefore stay timm's, with no duplicates.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """Output of one stage: channel count and total stride relative to the input."""

    num_chs: int
    reduction: int


def _resolve(root: nn.Module, path: tuple[str, ...]) -> nn.Module:
    # A plain getattr chain (not get_submodule): cheap enough for every forward and simple for torch.compile to trace.
    module = root
    for part in path:
        module = getattr(module, part)
    return module


class StageView(nn.Module):
    """A stage made of modules the model registers elsewhere, under their own (timm) names.

    The view is built once, in the model's ``__init__``, and held outside the model's module tree (see
    :meth:`Backbone.set_stages`). Its members are its children, so ``parameters()``, ``requires_grad_()``,
    ``train()``/``eval()`` and hooks act on the model's own modules. Members are looked up by path on the model
    whenever the view uses them, so a module replaced after construction (``model.maxpool = nn.Identity()``) is the
    one the stage runs and reports.

    Args:
        owner: the model that registers the members.
        members: the view's name for each member -> its dotted path on ``owner`` (``"bn1"``, ``"features.3"``).
    """

    def __init__(self, owner: nn.Module, members: Mapping[str, str]) -> None:
        super().__init__()
        # Plain attributes, not children: registering the owner would make the module tree a cycle. The owner is
        # held weakly for the same reason: the owner holds its views, and a strong reference back made every model
        # a reference cycle that only the cyclic collector frees (a loop creating models grew by each one's size).
        self.__dict__["_owner"] = weakref.ref(owner)
        self.__dict__["_paths"] = {key: tuple(path.split(".")) for key, path in members.items()}
        self._refresh()

    def _owner_now(self) -> nn.Module | None:
        return self.__dict__["_owner"]()

    def _refresh(self) -> None:
        owner = self._owner_now()
        if owner is None:  # a stage kept after its model was dropped: it keeps the modules it last had
            return
        for key, path in self._paths.items():
            self._modules[key] = _resolve(owner, path)

    def __getattr__(self, name: str) -> Any:
        paths = self.__dict__.get("_paths")
        owner = self.__dict__["_owner"]() if paths is not None and name in paths else None
        if owner is not None:
            return _resolve(owner, paths[name])
        return super().__getattr__(name)

    def __deepcopy__(self, memo: dict[int, Any]) -> StageView:
        # A weak reference copies as itself: the copy must point at the owner's copy (the memo's, when the owner
        # is what is being copied), not at the original model.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        owner = self._owner_now()
        state = {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_owner"}
        new.__dict__.update(state)
        new.__dict__["_owner"] = weakref.ref(copy.deepcopy(owner, memo)) if owner is not None else lambda: None
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the live __dict__ keeps its weak reference
        state["_owner"] = self._owner_now()  # pickled by value (pickle's memo keeps the one model)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        owner = state.pop("_owner")
        super().__setstate__(state)
        self.__dict__["_owner"] = weakref.ref(owner) if owner is not None else lambda: None

    # Everything that walks the children (parameters(), train(), apply(), to(), hooks on the children) goes through
    # these two; refreshing there keeps it on the modules the owner holds now.
    def named_children(self) -> Iterator[tuple[str, nn.Module]]:
        self._refresh()
        return super().named_children()

    def named_modules(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Module]]:
        self._refresh()
        return super().named_modules(*args, **kwargs)

    def extra_repr(self) -> str:
        return "view of " + ", ".join(".".join(p) for p in self._paths.values())


class StageGroup(StageView):
    """Modules of the model run in order as one stage, like an ``nn.Sequential`` that does not own them.

    Args:
        owner: the model that registers the members.
        *paths: dotted paths on ``owner`` of the modules to run, in order (one module may appear twice).
        extra: members that belong to the stage (their parameters train with it) but that its forward does not
            run, by name -> path (e.g. an early-exit classifier).
    """

    def __init__(self, owner: nn.Module, *paths: str, extra: Mapping[str, str] | None = None) -> None:
        super().__init__(owner, {**{str(i): p for i, p in enumerate(paths)}, **(extra or {})})
        self.__dict__["_n"] = len(paths)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx: int) -> nn.Module:
        if not -self._n <= idx < self._n:
            raise IndexError(f"index {idx} is out of range for a stage of {self._n} modules")
        return getattr(self, str(idx % self._n))

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(self._n))

    def forward(self, x: Any) -> Any:
        for i in range(self._n):
            x = getattr(self, str(i))(x)
        return x


class Backbone(nn.Module):
    """Base class of every zoo model.

    Subclasses set ``num_features`` (channels of ``forward_features``), ``feature_info`` (one entry per stage),
    call :meth:`set_stages` at the end of ``__init__``, implement ``head_modules()``, ``get_classifier()``,
    ``reset_classifier()`` and ``forward_head()`` where the defaults do not fit, and usually inherit
    ``forward_features`` (the stages applied in order).
    """

    num_features: int
    head_hidden_size: int | None = None  # width of forward_head(pre_logits=True) when it differs from num_features
    feature_info: list[FeatureInfo]
    num_classes: int
    _stage_refs: tuple[tuple[str, ...] | StageView, ...] = ()

    def set_stages(self, *stages: str | StageView) -> None:
        """Fix the stages, stem first: the dotted path of a module the model registers, or a :class:`StageView`.

        They are kept in a plain tuple, outside the module tree, so the state dict keeps the members' own names;
        paths are looked up on every use, so a stage module replaced later is the one that runs.
        """
        self._stage_refs = tuple(tuple(s.split(".")) if isinstance(s, str) else s for s in stages)

    def _stage_modules(self) -> list[nn.Module]:
        """The stage modules, resolved now (what ``stages()`` returns; forward paths use this, never ``stages()``)."""
        if not self._stage_refs:
            raise NotImplementedError(f"{type(self).__name__} did not call set_stages() in __init__")
        return [_resolve(self, s) if isinstance(s, tuple) else s for s in self._stage_refs]

    def stages(self) -> list[nn.Module]:
        """The trunk as a list of modules, stem first, head excluded: the same objects on every call."""
        return self._stage_modules()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        # Views are outside the module tree: their members followed above, their own flag follows here.
        for stage in self._stage_refs:
            if isinstance(stage, nn.Module):
                stage.training = mode
        return self

    # The default head is timm's most common one: global average pool, dropout, one linear layer stored under
    # the attribute named by ``classifier_attr``. Families with another head override the four methods below.
    classifier_attr: str = "fc"
    drop_rate: float = 0.0

    def head_modules(self) -> list[nn.Module]:
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
        for stage in self._stage_modules():
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled NCHW features of the last stage."""
        for stage in self._stage_modules():
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
