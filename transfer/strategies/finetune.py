"""Fine-tuning: some or all of the backbone trains on images.

- ``partial``: the last ``strategy.stages`` stages and the head train.
- ``full``: everything trains, with layer-wise learning-rate decay (stage ``i`` of ``n`` at
  ``lr * layer_decay ** (n - i)``).
- ``gradual``: the head trains from the start, and one more stage (from the top) at each of
  ``strategy.milestones``; every group exists from the first step, so a resume finds the optimizer it left.
"""

from __future__ import annotations

from typing import Any

from transfer.strategies.base import Strategy


class Partial(Strategy):
    """The last ``stages`` stages and the head train."""

    name = "partial"
    summary = "The last stages and the classifier train; earlier stages stay frozen."
    setting = "strategy.stages"
    logged = {"strategy_stages": "stages"}

    def validate(self, n_stages: int) -> None:
        k = self.cfg.stages
        if k > n_stages:
            raise ValueError(f"{k} is more than the backbone's {n_stages} stages; use 1..{n_stages} or full")

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages - self.cfg.stages, n_stages))}


class Full(Strategy):
    """Everything trains; a stage at ``lr * backbone_lr_mult * layer_decay ** (weight layers above it)``, the head at
    ``lr``."""

    name = "full"
    summary = "Everything trains, earlier layers with smaller learning rates (layer-wise decay)."
    setting = "strategy.layer_decay"
    logged = {"layer_decay": "layer_decay"}

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages))}

    def lr_scale(self, unit: str) -> float:
        # Decay by depth: the stage whose middle has L weight layers above it trains at layer_decay ** L (times the
        # backbone's multiple), the same for a family cut into 5 stages as for one cut into 9.
        if unit.startswith("stage") and self.units is not None:
            depth = self.units.depth_above()[int(unit.removeprefix("stage"))]
            return super().lr_scale(unit) * self.cfg.layer_decay**depth
        return super().lr_scale(unit)


class Gradual(Strategy):
    """The head trains from epoch 0; at each milestone epoch one more stage (from the top) unfreezes."""

    name = "gradual"
    summary = "Starts with the classifier, unfreezes one more stage at each milestone epoch."
    setting = "strategy.milestones"
    logged = {"milestones": "milestones"}

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        super().check_recipe(recipe)
        max_epochs = recipe.trainer.get("max_epochs", cls.default_epochs)
        late = [m for m in recipe.strategy.milestones if max_epochs and m >= max_epochs]
        if late:
            raise recipe.error(
                "strategy.milestones",
                f"milestone epochs {late} are not below trainer.max_epochs={max_epochs}, so those stages would "
                "never unfreeze; lower them or raise trainer.max_epochs",
            )

    def validate(self, n_stages: int) -> None:
        if len(self.cfg.milestones) > n_stages:
            raise ValueError(
                f"{len(self.cfg.milestones)} milestones would unfreeze more than the backbone's {n_stages} stages"
            )

    def unfrozen_stages(self, epoch: int) -> int:
        """How many stages (from the top) train during ``epoch``."""
        return sum(1 for m in self.cfg.milestones if epoch >= m)

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        k = self.unfrozen_stages(epoch)
        return {"head", "classifier", *(f"stage{i}" for i in range(n_stages - k, n_stages))}
