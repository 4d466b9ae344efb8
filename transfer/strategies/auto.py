"""``strategy: auto``: measure, then choose. No fixed thresholds on dataset size or domain distance.

Budget (stated, and logged with every candidate's score): one pass of the frozen backbone over the training and
validation images (the feature cache: a probe chosen afterwards reuses it), a few logistic regressions on those
features, and each fine-tuning candidate (``partial``, ``full``) trained for the fit's epochs on 80% of the training
images (at most 1,500): about two fine-tunes more than the chosen strategy's own.

1. Without pretrained weights there is nothing to transfer: ``full``.
2. :func:`~transfer.strategies.stage_gap.stage_gap`: does an earlier stage's probe beat the last one's beyond noise
   (repeated cross-validation, corrected paired test)? Only then is ``stage_probe`` a candidate.
3. On a held-out fold of the training images (:mod:`transfer.strategies.trials`): ``linear_probe`` (and
   ``stage_probe``) as logistic regressions on the cached features, ``partial`` and ``full`` after the fit's epochs.
4. The candidate with the best fold accuracy wins; a cheaper one (probe < partial < full) wins a near tie
   (:data:`TIE`). Whether the runner-up differs beyond noise is said (exact McNemar test) in the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transfer.strategies.stage_gap import StageGap, stage_gap
from transfer.strategies.trials import finetune_correct, mcnemar_p, probe_correct, split_fold

_log = logging.getLogger(__name__)

CHEAPEST_FIRST = ("linear_probe", "stage_probe", "partial", "full")
TIE = 0.005  # fold accuracies this close: the cheaper candidate wins
GAP_MAX_IMAGES = 1200  # images the stage-gap test looks at (a stratified subsample)


@dataclass
class AutoChoice:
    """What ``auto`` chose and why.

    Attributes:
        name: the strategy.
        reason: one sentence a person reads.
        stages: ``partial``'s number of stages, when it is the choice.
        details: every measurement (logged as ``auto_*`` MLflow params).
    """

    name: str
    reason: str
    stages: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _gap(feats: dict[str, Any], n_stages: int, seed: int) -> StageGap:
    y = feats["labels"].numpy().astype(int)
    keep = np.random.default_rng(seed).permutation(len(y))[:GAP_MAX_IMAGES]
    stages = list(range(max(0, n_stages // 3), n_stages))  # the stem and first stages are too generic to probe
    x = {f"stage{i}": feats[f"stage{i}"].numpy()[keep] for i in stages}
    return stage_gap(x, y[keep], stages, seed)


def _epochs(job: Any, name: str) -> int:
    """The epochs the fit would give strategy ``name``."""
    from transfer.strategies import STRATEGIES  # the registry imports this module

    return int(job.recipe.trainer.get("max_epochs") or STRATEGIES[name].default_epochs)


def _candidates(job: Any, feats: dict[str, Any], gap: StageGap) -> dict[str, np.ndarray]:
    """Each candidate's correctness on the held-out fold, trained as the fit would train it."""
    y = feats["labels"].numpy().astype(int)
    train, fold = split_fold(job.index.train, job.recipe.seed)
    probes = {"linear_probe": "pre_logits", **({"stage_probe": f"stage{gap.best}"} if gap.significant else {})}
    scored = {}
    for name, key in probes.items():
        scored[name] = probe_correct(job, feats[key], y, train, fold, _epochs(job, name))
    for name in ("partial", "full"):
        epochs = _epochs(job, name)
        job.events.phase("auto", f"Measuring your data to choose a strategy: {epochs} epochs of {name}")
        scored[name] = finetune_correct(job, name, job.recipe.strategy, train, fold, epochs)
    return scored


def _winner(scored: dict[str, np.ndarray]) -> tuple[str, str]:
    """The best candidate (a cheaper one wins a near tie) and what the comparison says."""
    acc = {k: float(v.mean()) for k, v in scored.items()}
    top = max(acc.values())
    name = next(k for k in CHEAPEST_FIRST if k in acc and acc[k] >= top - TIE)
    others = sorted((k for k in acc if k != name), key=lambda k: -acc[k])
    if not others:
        return name, ""
    runner = others[0]
    p = mcnemar_p(scored[name], scored[runner])
    verdict = "within noise" if p > 0.05 else "beyond noise"
    return name, f"{name} {acc[name]:.3f} vs {runner} {acc[runner]:.3f}: {verdict} (McNemar p={p:.2f})"


def decide(job: Any) -> AutoChoice:
    """``auto``'s choice for a job (its recipe, backbone and data), logged with its reason and measurements."""
    if not job.recipe.model.pretrained:
        return AutoChoice("full", "no pretrained weights: every layer has to learn")
    n_stages = len(job.model.stages())
    feats = job.features(per_stage=True)["train"]
    gap = _gap(feats, n_stages, job.recipe.seed)
    scored = _candidates(job, feats, gap)
    name, comparison = _winner(scored)
    fold = len(next(iter(scored.values())))
    scores = ", ".join(f"{k} {v.mean():.3f}" for k, v in scored.items())
    reason = f"on a held-out fold of {fold} training images: {scores}; {comparison}; {gap.describe()}"
    details = {
        "fold_images": fold,
        **{f"fold_acc_{k}": round(float(v.mean()), 4) for k, v in scored.items()},
        "stage_gap": round(gap.gain, 4),
        "stage_gap_se": round(gap.se, 4),
        "stage_gap_best": gap.best,
        "probe_stage_scores": gap.scores,
    }
    choice = AutoChoice(name, f"{reason} -> {name}", job.recipe.strategy.stages if name == "partial" else None, details)
    _log.info("strategy auto -> %s: %s", choice.name, choice.reason)
    return choice
