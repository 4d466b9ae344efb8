"""Fine-tuning strategies: which parameters of a :class:`zoo.Backbone` train, when, and at what learning rate.

Every strategy works on ``Backbone.stages()`` (stem first) and ``Backbone.head()``; nothing slices children by
index. A model is seen as *units*: the stages, the head modules other than the classifier, and the classifier.

- ``linear_probe``: only the classifier trains; the frozen backbone's features can be computed once and cached on
  disk (:class:`FeatureCache`), keyed by the weights, the preprocessing and the data files.
- ``stage_probe``: a linear probe on the pooled output of every stage, trained together on cached features; the
  best stage wins and the deployed model is the backbone cut after it plus its probe.
- ``partial``: the last ``k`` stages and the head train.
- ``full``: everything trains, with layer-wise learning-rate decay (stage ``i`` of ``n`` gets
  ``lr * layer_decay ** (n - i)``).
- ``gradual``: the head trains from the start, and one more stage (from the top) at each milestone epoch. Every
  parameter group exists from the first step, ``requires_grad`` is toggled, so optimizer states and checkpoints
  match across a resume.
- ``auto``: :func:`choose_strategy` picks one from the dataset size and how far the domain is from ImageNet.

A probe (``linear_probe``, ``stage_probe``) trains only a linear layer, on standardised features, at
``PROBE_LR_SCALE`` (10) times ``optim.lr``: the recipe's rate is a fine-tuning rate, too timid for one layer.

Frozen units stay in eval mode (BatchNorm statistics and dropout frozen); :meth:`Strategy.apply_eval` is re-applied
after every ``model.train()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from transfer.errors import UserError

_log = logging.getLogger(__name__)

CACHE_VERSION = "features-v1"
# A probe trains one linear layer on frozen features: it wants a larger step than fine-tuning a network does.
# The recipe's optim.lr is the fine-tuning rate; probes use this multiple of it.
PROBE_LR_SCALE = 10.0


def init_head(classifier: nn.Module) -> None:
    """Re-initialise a new classifier small (truncated normal, std 0.01; zero bias), as MAE's linear probe does.

    Zoo classifiers come with their architecture's init, which for some families gives logits of several units on
    pretrained features: the first epochs would only undo that.
    """
    if isinstance(classifier, nn.Linear):
        nn.init.trunc_normal_(classifier.weight, std=0.01)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)


def _params(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


@dataclass
class Units:
    """A backbone split into the units strategies act on (made once: ``stages()`` builds its list on the fly)."""

    stages: list[nn.Module]
    head_rest: list[nn.Module]
    classifier: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> Units:
        stages = list(model.stages())
        classifier = model.get_classifier()
        head_rest = [m for m in model.head() if m is not classifier]
        units = cls(stages, head_rest, classifier)
        covered = {id(p) for p in _params([*stages, *head_rest, classifier])}
        stray = [n for n, p in model.named_parameters() if id(p) not in covered]
        if stray:
            # The contract says stages + head cover every parameter; train strays with the head rather than lose them.
            _log.warning("parameters outside stages() and head(): %s; training them with the head", stray[:5])
            holder = nn.Module()
            for i, p in enumerate(p for p in model.parameters() if id(p) not in covered):
                holder.register_parameter(f"p{i}", p)
            units.head_rest.append(holder)
        return units

    @property
    def num_stages(self) -> int:
        return len(self.stages)


def _split_decay(params: Sequence[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    # No weight decay on biases and normalisation parameters (1-d): decaying them only hurts (Goyal et al. 2017).
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return decay, no_decay


def _group(name: str, params: Sequence[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = _split_decay(params)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name, "lars_exclude": False})
    if no_decay:
        groups.append(
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay", "lars_exclude": True}
        )
    return groups


class Strategy:
    """Base class: a strategy decides the trainable units per epoch and the optimizer's parameter groups.

    Args:
        reason: why this strategy was chosen (``auto`` fills it; else "set in the recipe").
    """

    name: str = ""
    uses_features: bool = False  # trains on cached features instead of images

    def __init__(self, reason: str = "set in the recipe") -> None:
        self.reason = reason
        self.units: Units | None = None
        self._trainable: set[str] = set()

    # -- which units train -------------------------------------------------------------------------------------
    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        """Names of the units that train during ``epoch``: ``stage{i}``, ``head``, ``classifier``."""
        raise NotImplementedError

    def ever_trainable(self, n_stages: int) -> set[str]:
        """Every unit that trains at some epoch (those get optimizer parameter groups)."""
        return self.trainable_at(10**9, n_stages)

    def _unit_modules(self) -> dict[str, list[nn.Module]]:
        assert self.units is not None, "call setup(model) first"
        out: dict[str, list[nn.Module]] = {f"stage{i}": [s] for i, s in enumerate(self.units.stages)}
        out["head"] = list(self.units.head_rest)
        out["classifier"] = [self.units.classifier]
        return out

    def setup(self, model: nn.Module, epoch: int = 0) -> None:
        """Split ``model`` into units and set ``requires_grad`` for ``epoch`` (call once, before the optimizer)."""
        self.units = Units.of(model)
        self.validate(self.units.num_stages)
        self.set_epoch(epoch)

    def validate(self, n_stages: int) -> None:
        """Raise :class:`ValueError` when the strategy's settings do not fit a backbone with ``n_stages`` stages."""

    def set_epoch(self, epoch: int) -> bool:
        """Apply the trainable set of ``epoch`` (``requires_grad`` and eval mode); True when it changed."""
        assert self.units is not None
        wanted = self.trainable_at(epoch, self.units.num_stages)
        changed = wanted != self._trainable
        for name, modules in self._unit_modules().items():
            for p in _params(modules):
                p.requires_grad_(name in wanted)
        self._trainable = wanted
        self.apply_eval()
        return changed

    def apply_eval(self) -> None:
        """Put frozen units in eval mode (their BatchNorm statistics must not move); trainable ones keep theirs."""
        if self.units is None:
            return
        for name, modules in self._unit_modules().items():
            if name not in self._trainable:
                for m in modules:
                    m.eval()

    def rebind(self, model: nn.Module) -> None:
        """Find the units again after modules were swapped inside ``model`` (Lightning's layer sync replaces every
        BatchNorm when DDP starts); the trainable set and eval modes carry over."""
        self.units = Units.of(model)
        self.apply_eval()

    def pending_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen now that train at a later epoch (``gradual``): DDP must register them from the start."""
        assert self.units is not None
        ever = self.ever_trainable(self.units.num_stages)
        modules = self._unit_modules()
        return [p for name in sorted(ever - self._trainable) for p in _params(modules.get(name, []))]

    @property
    def trainable_units(self) -> set[str]:
        """The units training now."""
        return set(self._trainable)

    # -- optimizer -----------------------------------------------------------------------------------------------
    def lr_scale(self, unit: str, n_stages: int) -> float:
        """Learning-rate multiplier of a unit (``full`` decays it layer-wise)."""
        return 1.0

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one (or two: decay / no decay) per unit that ever trains."""
        assert self.units is not None
        n = self.units.num_stages
        ever = self.ever_trainable(n)
        groups = []
        for name, modules in self._unit_modules().items():
            if name in ever:
                groups += _group(name, _params(modules), lr * self.lr_scale(name, n), weight_decay)
        return [g for g in groups if g["params"]]

    def describe(self) -> dict[str, Any]:
        """Parameters worth logging."""
        return {"strategy": self.name, "strategy_reason": self.reason}


class LinearProbe(Strategy):
    """Frozen backbone, trainable classifier (on cached features when ``cache_features``)."""

    name = "linear_probe"

    def __init__(self, cache_features: bool = True, reason: str = "set in the recipe") -> None:
        super().__init__(reason)
        self.uses_features = cache_features

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"classifier"}

    def lr_scale(self, unit: str, n_stages: int) -> float:
        return PROBE_LR_SCALE


class StageProbe(Strategy):
    """A linear probe per stage on cached pooled features; the backbone never trains."""

    name = "stage_probe"
    uses_features = True

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return set()  # the probes live outside the backbone

    def lr_scale(self, unit: str, n_stages: int) -> float:
        return PROBE_LR_SCALE


class Partial(Strategy):
    """The last ``stages`` stages and the head train."""

    name = "partial"

    def __init__(self, stages: int = 2, reason: str = "set in the recipe") -> None:
        super().__init__(reason)
        self.k = stages

    def validate(self, n_stages: int) -> None:
        if self.k > n_stages:
            raise ValueError(f"{self.k} is more than the backbone's {n_stages} stages; use 1..{n_stages} or full")

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages - self.k, n_stages))}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "strategy_stages": self.k}


class Full(Strategy):
    """Everything trains; stage ``i`` of ``n`` at ``lr * layer_decay ** (n - i)``, the head at ``lr``."""

    name = "full"

    def __init__(self, layer_decay: float = 0.75, reason: str = "set in the recipe") -> None:
        super().__init__(reason)
        self.layer_decay = layer_decay

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages))}

    def lr_scale(self, unit: str, n_stages: int) -> float:
        if unit.startswith("stage"):
            return self.layer_decay ** (n_stages - int(unit.removeprefix("stage")))
        return 1.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layer_decay": self.layer_decay}


class Gradual(Strategy):
    """The head trains from epoch 0; at each milestone epoch one more stage (from the top) unfreezes."""

    name = "gradual"

    def __init__(self, milestones: Sequence[int] = (2, 4), reason: str = "set in the recipe") -> None:
        super().__init__(reason)
        self.milestones = list(milestones)

    def validate(self, n_stages: int) -> None:
        if len(self.milestones) > n_stages:
            raise ValueError(
                f"{len(self.milestones)} milestones would unfreeze more than the backbone's {n_stages} stages"
            )

    def unfrozen_stages(self, epoch: int) -> int:
        """How many stages (from the top) train during ``epoch``."""
        return sum(1 for m in self.milestones if epoch >= m)

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        k = self.unfrozen_stages(epoch)
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages - k, n_stages))}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "milestones": self.milestones}


def make_strategy(name: str, cfg: Any, reason: str = "set in the recipe") -> Strategy:
    """Build a strategy from its name and a :class:`transfer.recipe.StrategyConfig` (not ``auto``)."""
    if name == "linear_probe":
        return LinearProbe(cache_features=cfg.cache_features, reason=reason)
    if name == "stage_probe":
        return StageProbe(reason=reason)
    if name == "partial":
        return Partial(stages=cfg.stages, reason=reason)
    if name == "full":
        return Full(layer_decay=cfg.layer_decay, reason=reason)
    if name == "gradual":
        return Gradual(milestones=cfg.milestones, reason=reason)
    raise UserError(f"unknown strategy {name!r}; choose auto, linear_probe, stage_probe, partial, full or gradual")


def count_params(model: nn.Module, strategy: Strategy | None = None) -> tuple[int, int]:
    """(parameters that ever train under ``strategy`` (or now, by requires_grad), all parameters)."""
    total = sum(p.numel() for p in model.parameters())
    if strategy is None or strategy.units is None:
        return sum(p.numel() for p in model.parameters() if p.requires_grad), total
    modules = strategy._unit_modules()
    ever = strategy.ever_trainable(strategy.units.num_stages)
    trainable = sum(p.numel() for name in ever for p in _params(modules[name]))
    return trainable, total


# ----------------------------------------------------------------------------------------------------------------
# Features: computed once per (weights, preprocessing, files) and cached on disk


def weights_digest(model: nn.Module, exclude: nn.Module | None = None) -> str:
    """Hash of a model's tensors (parameters and buffers), leaving out ``exclude`` (the classifier)."""
    skip = {id(t) for t in exclude.state_dict(keep_vars=True).values()} if exclude is not None else set()
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in skip:
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.inference_mode()
def extract_features(
    model: nn.Module, loader: DataLoader, *, per_stage: bool, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Features of every image in ``loader`` with the model in eval mode.

    Returns:
        ``{"labels": [N], "pre_logits": [N, D]}``, plus ``"stage{i}": [N, C_i]`` (globally average-pooled stage
        outputs) when ``per_stage``.
    """
    was_training = model.training
    model.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {}
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if per_stage:
                feats = model.forward_stages(x)
                for i, f in enumerate(feats):
                    out.setdefault(f"stage{i}", []).append(f.float().mean((2, 3)).cpu())
                last = feats[-1]
            else:
                last = model.forward_features(x)
            out.setdefault("pre_logits", []).append(model.forward_head(last, pre_logits=True).float().cpu())
            out.setdefault("labels", []).append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class FeatureCache:
    """Cached features of a train and a val split, stored as one safetensors file per key."""

    root: Path
    hits: int = 0
    misses: int = 0
    last_key: str | None = field(default=None)

    def key(self, *, weights: str, data_config: dict[str, Any], files: str, per_stage: bool, backbone: str) -> str:
        """The cache key: every input that changes the features changes it."""
        blob = json.dumps(
            {
                "v": CACHE_VERSION,
                "weights": weights,
                "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
                "files": files,
                "per_stage": per_stage,
                "backbone": backbone,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The cached ``{"train": {...}, "val": {...}}`` or None."""
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            flat = load_file(str(p))
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            _log.warning("feature cache %s unreadable (%s); recomputing", p, exc)
            return None
        out: dict[str, dict[str, torch.Tensor]] = {"train": {}, "val": {}}
        for k, v in flat.items():
            split, _, name = k.partition("/")
            out.setdefault(split, {})[name] = v
        return out

    def save(self, key: str, feats: dict[str, dict[str, torch.Tensor]]) -> Path:
        """Write atomically (a temp file renamed into place)."""
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{split}/{k}": v.contiguous() for split, d in feats.items() for k, v in d.items()}
        fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            save_file(flat, tmp)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def get_or_compute(
        self,
        model: nn.Module,
        loaders: dict[str, DataLoader],
        *,
        backbone: str,
        data_config: dict[str, Any],
        files: str,
        per_stage: bool,
        device: torch.device | str = "cpu",
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Features of each split (``loaders``: split name -> deterministic loader), from the cache when there."""
        key = self.key(
            weights=weights_digest(model, exclude=model.get_classifier()),
            data_config=data_config,
            files=files,
            per_stage=per_stage,
            backbone=backbone,
        )
        self.last_key = key
        cached = self.load(key)
        if cached is None or not all(s in cached and cached[s] for s in loaders):
            from filelock import FileLock

            # One process computes, the others (DDP ranks, parallel runs) wait for the lock and then read the file.
            self.path(key).parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path(key)) + ".lock"):
                cached = self.load(key)
                if cached is None or not all(s in cached and cached[s] for s in loaders):
                    self.misses += 1
                    _log.info("computing frozen features of %s (cache miss: %s)", ", ".join(loaders), self.path(key))
                    feats = {
                        split: extract_features(model, dl, per_stage=per_stage, device=device)
                        for split, dl in loaders.items()
                    }
                    self.save(key, feats)
                    return feats
        self.hits += 1
        _log.info("feature cache hit: %s", self.path(key))
        return cached


# ----------------------------------------------------------------------------------------------------------------
# auto: the classic decision table, measured on a subsample


LITTLE_DATA_PER_CLASS = 200  # fewer training images per class than this is "little data"
SIMILAR_GAP = 0.03  # the last stage's probe within this of the best stage's: the domain is close to ImageNet
FAR_GAP = 0.10  # further than this: the domain is far; with enough data, train everything


@dataclass
class AutoChoice:
    """What ``auto`` chose and why."""

    name: str
    reason: str
    stages: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _probe_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Held-out accuracy of a logistic regression on standardised features (a quick linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    n_splits = int(min(3, np.bincount(y).min()))
    if n_splits < 2:
        return float("nan")
    accs = []
    for tr, te in StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, y):
        scaler = StandardScaler().fit(x[tr])
        clf = LogisticRegression(max_iter=300, C=0.5)
        clf.fit(scaler.transform(x[tr]), y[tr])
        accs.append(float((clf.predict(scaler.transform(x[te])) == y[te]).mean()))
    return float(np.mean(accs))


def choose_strategy(
    *,
    pretrained: bool,
    n_train: int,
    num_classes: int,
    stage_features: dict[str, torch.Tensor] | None,
    n_stages: int,
    seed: int = 42,
) -> AutoChoice:
    """The classic transfer-learning table, with the domain distance measured instead of guessed.

    Domain distance: a quick linear probe (logistic regression, cross-validated) on the pooled features of each
    stage of the pretrained backbone, on a subsample. When the last stage's features classify as well as the best
    stage's, the ImageNet features fit the domain (similar); when an earlier stage does clearly better, the top
    features are too ImageNet-specific (different domain).

    - little data (< 200 images per class) + similar domain -> ``linear_probe``
    - little data + different domain -> ``stage_probe``
    - more data + similar -> ``partial`` (last 2 stages); moderately different -> ``partial`` with half the stages;
      far (gap > 0.10), or much data and not similar -> ``full``
    - no pretrained weights -> ``full`` (there is nothing to transfer)
    """
    per_class = n_train / max(1, num_classes)
    if not pretrained:
        return AutoChoice("full", "no pretrained weights: every layer has to learn", details={"per_class": per_class})
    assert stage_features is not None
    y = stage_features["labels"].numpy().astype(int)
    accs: dict[int, float] = {}
    first = max(0, n_stages // 3)  # the stem and the first stages are too generic to be worth a probe here
    for i in range(first, n_stages):
        x = stage_features[f"stage{i}"].numpy()
        accs[i] = _probe_accuracy(x, y, seed)
    last = n_stages - 1
    acc_last = accs[last]
    best = max(accs, key=lambda i: (accs[i], i))
    gap = max(0.0, accs[best] - acc_last)
    details = {
        "per_class": round(per_class, 1),
        "probe_samples": len(y),
        "probe_acc_last": round(acc_last, 4),
        "probe_best_stage": best,
        "probe_acc_best": round(accs[best], 4),
        "domain_gap": round(gap, 4),
    }
    little = per_class < LITTLE_DATA_PER_CLASS
    similar = gap <= SIMILAR_GAP
    size_txt = f"{per_class:.0f} training images per class ({'<' if little else '>='} {LITTLE_DATA_PER_CLASS}: " + (
        "little data)" if little else "enough data to fine-tune)"
    )
    dom_txt = (
        f"a linear probe on the last stage scores {acc_last:.2f}, the best stage ({best}) {accs[best]:.2f}: gap "
        f"{gap:.2f} {'<=' if similar else '>'} {SIMILAR_GAP} ({'similar' if similar else 'different'} domain)"
    )
    if little and similar:
        name, stages = "linear_probe", None
    elif little:
        name, stages = "stage_probe", None
    elif similar:
        name, stages = "partial", min(2, n_stages)
    elif gap <= FAR_GAP and per_class < 1000:
        name, stages = "partial", max(2, math.ceil(n_stages / 2))
    else:
        name, stages = "full", None
    choice = f"{name}" + (f" (last {stages} stages)" if stages else "")
    return AutoChoice(name, f"{size_txt}; {dom_txt} -> {choice}", stages, details)
