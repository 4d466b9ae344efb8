"""The learning-rate finder: Lightning's ``Tuner.lr_find`` on the fit's own module and data.

``optim.lr: auto`` runs it inside ``transfer fit`` (its plot and suggestion go to the fit's MLflow run);
``transfer lr-find recipe.yaml`` runs it alone, plots it, logs it as a run of its own and says what to set. The
finder sweeps one rate for every parameter group from ``MIN_LR`` to ``MAX_LR`` over a few dozen steps and suggests
the rate where the loss falls fastest; that rate is the head's effective rate, from which the recipe-level
``optim.lr`` follows (the strategy's head multiple and, for SGD/LARS, the linear scaling rule undone).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

MIN_LR, MAX_LR = 1e-6, 1.0
MIN_STEPS, MAX_STEPS = 30, 100  # the sweep's length: enough points for a slope, few enough to be cheap
FALLBACK_LR = 1e-3  # when the loss curve gives no slope (too few batches)
SKIP_BEGIN = 10  # Lightning's suggestion skips the sweep's first points


@dataclass
class LRFinding:
    """What the finder found.

    Attributes:
        suggestion: the head's effective learning rate where the loss fell fastest.
        base_lr: the recipe-level ``optim.lr`` that gives it.
        lrs: the rates swept.
        losses: the (smoothed) training loss at each.
    """

    suggestion: float
    base_lr: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def find_lr(trainer: Any, module: Any, fit_kwargs: dict[str, Any], steps_per_epoch: int) -> LRFinding:
    """Sweep learning rates on ``module`` with ``trainer`` (both left as they were), and set ``module.lr``.

    Args:
        trainer: the fit's trainer (the finder swaps its callbacks out and restores the weights afterwards).
        module: the strategy's LightningModule.
        fit_kwargs: what ``Trainer.fit`` gets (a datamodule, or loaders).
        steps_per_epoch: training batches per epoch (the sweep spans a few epochs at most).

    Raises:
        UserError: under DDP (the finder runs on one device).
    """
    from lightning.pytorch.tuner import Tuner

    from transfer.errors import UserError

    if trainer.world_size > 1:
        raise UserError("optim.lr: auto runs the LR finder on one device; run `transfer lr-find` and set optim.lr")
    steps = int(min(MAX_STEPS, max(MIN_STEPS, 3 * steps_per_epoch)))
    loop = trainer.fit_loop
    saved = loop.max_epochs
    loop.max_epochs = max(saved or 1, math.ceil(steps / max(1, steps_per_epoch)) + 1)  # the sweep may span epochs
    try:
        finder = Tuner(trainer).lr_find(
            module, **fit_kwargs, min_lr=MIN_LR, max_lr=MAX_LR, num_training=steps, update_attr=False
        )
    finally:
        loop.max_epochs = saved
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion):
        _log.warning("the LR finder found no slope; using %g", FALLBACK_LR)
        suggestion = FALLBACK_LR
    module.lr = suggestion / module.head_lr_factor()
    results = finder.results if finder is not None else {}
    finding = LRFinding(suggestion, module.lr, list(results.get("lr", [])), list(results.get("loss", [])))
    _log.info("LR finder: the loss falls fastest at %.3g (optim.lr %.3g)", finding.suggestion, finding.base_lr)
    return finding


def plot(finding: LRFinding, path: str | Path) -> Path:
    """The loss against the learning rate (log scale), the suggestion marked, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    # Lightning's smoothed loss is biased low over its first points (it skips them when suggesting too).
    ax.plot(finding.lrs[SKIP_BEGIN:], finding.losses[SKIP_BEGIN:])
    ax.set_xscale("log")
    ax.axvline(finding.suggestion, color="tab:red", linestyle="--", label=f"suggested {finding.suggestion:.2g}")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def run(recipe: Any, overrides: Any = (), plot_path: str | Path | None = None) -> tuple[LRFinding, str]:
    """``transfer lr-find``: the finder on a recipe's data, backbone and strategy, logged as an MLflow run of its
    own (``<recipe>-lr-find``: the suggestion and the plot) in the recipe's experiment.

    Returns:
        The finding and the MLflow run id.

    Raises:
        UserError: a bad recipe, data, backbone or tracking URI (before anything is computed where possible).
    """
    import tempfile

    import lightning as L
    from mlflow.entities import Metric, Param

    from transfer import strategies
    from transfer.job import check_model_keys, prepare
    from transfer.progress import Events
    from transfer.recipe import load_recipe
    from transfer.tracking import TrackingStore
    from transfer.trainer import build_trainer, quiet_third_parties

    r = load_recipe(recipe, overrides)
    store = TrackingStore.for_recipe(r).check()
    check_model_keys(r)
    quiet_third_parties()
    L.seed_everything(r.seed, workers=True, verbose=False)
    with tempfile.TemporaryDirectory(prefix="transfer-lr-find-") as tmp:
        trainer, _ = build_trainer(r, tmp)
        job = prepare(r, Events(None))
        strategy, _ = strategies.resolve(job, {})
        plan = strategy.build(job)
        finding = find_lr(trainer, plan.module, plan.fit_kwargs, math.ceil(len(job.index.train) / r.data.batch_size))
        png = plot(finding, Path(plot_path) if plot_path else Path(tmp) / "lr_find.png")
        client = store.client
        run_id = client.create_run(store.experiment_id(r.tracking.experiment), run_name=f"{r.name}-lr-find").info.run_id
        params = {"backbone": job.spec.name, "strategy": strategy.name, "batch_size": r.data.batch_size}
        client.log_batch(
            run_id,
            metrics=[Metric("lr_suggestion", finding.suggestion, 0, 0), Metric("lr_base", finding.base_lr, 0, 0)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.log_artifact(run_id, str(png))
        client.set_terminated(run_id, "FINISHED")
    return finding, run_id
