"""Fine-tuning strategies: a registry of names, like the zoo's, and the resolution of ``auto``.

Each strategy (a :class:`~transfer.strategies.base.Strategy` subclass registered here) says which parameters of a
``zoo`` backbone train, when and at what rate, builds its own LightningModule and loaders
(:meth:`~transfer.strategies.base.Strategy.build`) and returns its deployable model
(:meth:`~transfer.strategies.base.Strategy.finalise`):

- ``linear_probe``, ``stage_probe`` (:mod:`transfer.strategies.probes`): frozen backbone, cached features;
- ``partial``, ``full``, ``gradual`` (:mod:`transfer.strategies.finetune`): the backbone trains on images;
- ``auto`` (:mod:`transfer.strategies.auto`): one of them, chosen by measuring the data.

A new strategy is one class with a ``name``, decorated with :func:`register`; the recipe schema and the web page
read their choices from :func:`strategy_names`.
"""

from __future__ import annotations

from typing import Any

from transfer.strategies.base import Final, Plan, Strategy, Units
from transfer.strategies.finetune import Full, Gradual, Partial
from transfer.strategies.probes import PROBE_LR_SCALE, LinearProbe, StageProbe

AUTO = "auto"
STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class to the registry under its ``name`` (a name can be registered once)."""
    if not cls.name or cls.name == AUTO or cls.name in STRATEGIES:
        raise ValueError(f"strategy name {cls.name!r} is empty, reserved or taken")
    STRATEGIES[cls.name] = cls
    return cls


for _cls in (LinearProbe, StageProbe, Partial, Full, Gradual):
    register(_cls)


def strategy_names() -> tuple[str, ...]:
    """Every name a recipe's ``strategy.name`` may take: ``auto`` first, then the registered strategies."""
    return (AUTO, *STRATEGIES)


AUTO_SUMMARY = (
    "Chooses for you by measuring your data: probes on the pretrained features, then partial and full fine-tuning "
    "tried on part of your training images and scored on the rest; the best wins. Costs about two extra "
    "fine-tunes; every score and the reason are shown after training."
)


def summaries() -> dict[str, str]:
    """Strategy name -> one sentence saying what it does, ``auto`` first (for people choosing one)."""
    return {AUTO: AUTO_SUMMARY, **{name: cls.summary for name, cls in STRATEGIES.items()}}


def check_recipe(recipe: Any) -> None:
    """The recipe's strategy settings checked by the strategy they concern, while the recipe is validated.

    Raises:
        UserError: one line naming the key.
    """
    # auto may fine-tune: it is held to what every strategy needs; a named strategy to its own settings too.
    (Strategy if recipe.strategy.name == AUTO else STRATEGIES[recipe.strategy.name]).check_recipe(recipe)


def create(name: str, cfg: Any, reason: str = "set in the recipe") -> Strategy:
    """The registered strategy ``name`` built from a recipe's ``strategy`` section.

    Raises:
        KeyError: ``name`` is not registered (``auto`` is resolved by :func:`resolve`).
    """
    return STRATEGIES[name](cfg, reason=reason)


def resolve(job: Any, recorded: dict[str, Any]) -> tuple[Strategy, dict[str, Any]]:
    """The recipe's strategy, ``auto`` decided: once per run (a resume and the other DDP ranks reuse the decision
    recorded in ``run.json``).

    Args:
        job: the fit's :class:`~transfer.job.FitJob`.
        recorded: ``run.json`` of the run directory (its ``strategy`` fields when this recipe decided before).

    Returns:
        The strategy, and what to record about the decision (``strategy``, ``strategy_reason``,
        ``strategy_stages``, ``auto``: the measured details).
    """
    cfg = job.recipe.strategy
    name, reason, stages, details = cfg.name, "set in the recipe", None, {}
    if name == AUTO and recorded.get("strategy") and recorded.get("recipe_digest") == job.recipe.digest():
        name, reason = recorded["strategy"], recorded.get("strategy_reason", "")
        stages, details = recorded.get("strategy_stages"), recorded.get("auto") or {}
    elif name == AUTO:
        from transfer.strategies.auto import decide

        job.events.phase("auto", "Measuring your data to choose a strategy")
        choice = decide(job)
        name, reason, stages, details = choice.name, choice.reason, choice.stages, choice.details
    strategy = create(name, cfg.model_copy(update={"stages": stages}) if stages else cfg, reason)
    decision = {"strategy": name, "strategy_reason": reason, "strategy_stages": stages, "auto": details}
    return strategy, decision


__all__ = [
    "AUTO",
    "PROBE_LR_SCALE",
    "STRATEGIES",
    "Final",
    "Plan",
    "Strategy",
    "Units",
    "check_recipe",
    "create",
    "register",
    "resolve",
    "strategy_names",
    "summaries",
]
