"""The Lightning ``Trainer`` of a fit: the recipe's ``trainer`` section, our defaults and our DDP.

Defaults a recipe may override: bf16 mixed precision on a GPU (32-bit on the CPU), no Lightning logger (MLflow gets
exact metric names at step = epoch from :class:`transfer.tracking.EpochMetrics`), no sanity validation, no model
summary. ``trainer.strategy: ddp`` becomes :class:`transfer.distributed.TransferDDPStrategy` with our BatchNorm
synchronisation (which keeps the zoo's fused BatchNorm + activation layers intact, unlike Lightning's own
``sync_batchnorm``), on by default when the per-device batch is below :data:`SYNC_BN_BELOW`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from transfer.recipe import Recipe

DDP_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
SYNC_BN_BELOW = 32  # per-device batches smaller than this get synchronised BatchNorm under DDP by default


def one_process(recipe: Recipe) -> bool:
    """Whether the fit trains in this process alone (no DDP strategy, one device)."""
    t = recipe.trainer
    return t.get("strategy", "auto") not in DDP_STRATEGIES and t.get("devices", 1) in (1, "1", "auto")


def trainer_kwargs(recipe: Recipe, run_dir: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
        "logger": False,  # MLflow gets the metrics from our callback (exact names, step = epoch)
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "log_every_n_steps": 10,
    }
    kw.update(recipe.trainer)
    kw["default_root_dir"] = str(run_dir)
    if kw.get("logger") is True:
        kw["logger"] = False  # our MLflow tracking is the logger; a second default one would write lightning_logs
    sync_bn = kw.pop("sync_batchnorm", None)
    if kw.get("strategy") in DDP_STRATEGIES:
        from transfer.distributed import BatchNormSync, TransferDDPStrategy

        # Our DDP: it registers the stages that unfreeze later (gradual) and syncs BatchNorm on CPU (gloo) too.
        find_unused = kw["strategy"] == "ddp_find_unused_parameters_true"
        kw["strategy"] = TransferDDPStrategy(find_unused_parameters=find_unused)
        if sync_bn is None:  # the default: small per-device batches give noisy BatchNorm statistics
            sync_bn = recipe.data.batch_size < SYNC_BN_BELOW
        if sync_bn:
            kw["plugins"] = [BatchNormSync()]
    elif sync_bn:
        kw["sync_batchnorm"] = True
    return kw


# Lightning's lines that say nothing about the user's run: advertising, hardware it does not use, its own steps.
_CHATTER = (
    "Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader`",
    "LOCAL_RANK:",
    "Restoring states from",
    "Restored all states from",
)


class _NoTips(logging.Filter):
    """Drops Lightning's chatter (:data:`_CHATTER`) from the terminal; its warnings and real news stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(c in text for c in _CHATTER)


def _tidy_lightning_logging() -> None:
    """No advertising tips, and each Lightning message once: when the application has configured logging (the
    CLI does), Lightning's own console handler would print every line a second time."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for h in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(h)
            logger.propagate = True


def _lightning_error(kwargs: dict[str, Any]) -> str | None:
    """The first line of what Lightning says about these ``Trainer`` arguments, or None when it takes them."""
    import lightning as L

    try:
        with _quiet_lightning():
            L.Trainer(**{"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **kwargs})
    except Exception as exc:  # Lightning raises ValueError, TypeError, MisconfigurationException, ImportError...
        text = str(exc).strip()
        return (text.splitlines()[0] if text else type(exc).__name__)[:200]
    return None


def _check_values(recipe: Recipe) -> None:
    """Every ``trainer`` value checked against what Lightning accepts on this machine, before anything is written.

    Raises:
        UserError: one line naming the key (or the keys that do not go together) and what Lightning said.
    """
    given = dict(recipe.trainer)  # the recipe's own values: a strategy object would keep the trial's settings
    problem = _lightning_error(given)
    if problem is None:
        return
    for key, value in given.items():
        alone = _lightning_error({key: value})
        if alone is not None:
            raise recipe.error(f"trainer.{key}", f"{value!r} is not accepted here: {alone}")
    keys = ", ".join(f"trainer.{k}" for k in given)
    raise recipe.error("trainer", f"{keys} do not go together here: {problem}")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's informative lines (GPU available ...) off for a trial construction."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quiet_third_parties() -> None:
    """Warnings that are not about the user's run, and Lightning's tips, stay off the terminal."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen stages are in eval on purpose
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # the run directory holds run.json
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning internals on newer torch
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")  # ours, on purpose (channels-last)
    _tidy_lightning_logging()


def build_trainer(recipe: Recipe, run_dir: str) -> tuple[Any, dict[str, Any]]:
    """The fit's ``Trainer`` (it knows this process's rank: Lightning's launcher, torchrun or SLURM) and its
    keyword arguments; ``best.ckpt`` follows ``val_acc``, ``last.ckpt`` is every epoch's end (what ``--resume``
    continues from)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from transfer.distributed import RankSync

    _check_values(recipe)
    kw = trainer_kwargs(recipe, run_dir)
    # Two callbacks, since Lightning's save_last only writes when the monitored metric improved.
    callbacks: list[Any] = [
        ModelCheckpoint(run_dir, "best", monitor="val_acc", mode="max", save_top_k=1, enable_version_counter=False),
        ModelCheckpoint(run_dir, "last", monitor=None, save_top_k=1, enable_version_counter=False),
        RankSync(),
    ]
    if recipe.optim.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=recipe.optim.early_stopping_patience))
    callbacks += recipe_callbacks(recipe)
    if recipe.data.progressive:  # the workers must see each epoch's size
        kw["reload_dataloaders_every_n_epochs"] = 1
    return L.Trainer(callbacks=callbacks, **kw), kw


def recipe_callbacks(recipe: Recipe) -> list[Any]:
    """The callbacks the recipe switches on: EMA of the weights, progressive resizing."""
    from transfer.callbacks import EMA, ProgressiveResizing

    out: list[Any] = []
    if recipe.optim.ema:
        out.append(EMA(recipe.optim.ema))
    if recipe.data.progressive:
        out.append(ProgressiveResizing())
    return out
