"""``strategy: auto``: the classic transfer-learning table, with the domain distance measured instead of guessed.

:func:`decide` computes the pooled features of every stage on a stratified subsample of the training images
(through the feature cache) and hands them to :func:`choose_strategy`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

_log = logging.getLogger(__name__)

PROBE_PER_CLASS = 40  # images per class that auto's domain probe looks at
PROBE_MAX = 600
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


def _subsample(job: Any, per_class: int, cap: int) -> DataLoader:
    """A deterministic loader over a stratified subsample of the training images (eval transform)."""
    rng = random.Random(job.recipe.seed)
    by_class: dict[int, list[Any]] = {}
    for s in job.index.train:
        by_class.setdefault(s[1], []).append(s)
    per = max(2, min(per_class, cap // max(1, len(by_class))))
    picked = [s for items in by_class.values() for s in (rng.sample(items, per) if len(items) > per else items)]
    return job.dm.loader_of(picked)


def decide(job: Any) -> AutoChoice:
    """``auto``'s choice for a job (its recipe, backbone and data), logged with its reason."""
    pretrained = bool(job.recipe.model.pretrained)
    n_stages = len(job.model.stages())
    feats = None
    if pretrained:
        loader = _subsample(job, PROBE_PER_CLASS, PROBE_MAX)
        files = "auto:" + hashlib.sha256(repr(loader.dataset.samples).encode()).hexdigest()
        feats = job.features(per_stage=True, loaders={"probe": loader}, files=files)["probe"]
    choice = choose_strategy(
        pretrained=pretrained,
        n_train=len(job.index.train),
        num_classes=job.num_classes,
        stage_features=feats,
        n_stages=n_stages,
        seed=job.recipe.seed,
    )
    _log.info("strategy auto -> %s: %s", choice.name, choice.reason)
    return choice
