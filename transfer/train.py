"""``transfer fit``: one recipe in, one tracked (and optionally registered) classifier out.

>>> from transfer.train import fit
>>> result = fit("recipes/quickstart.yaml", overrides=["trainer.max_epochs=2"])
>>> result.run_id, result.model_uri, result.metrics["val_acc"]

:func:`fit` reads as its four steps: prepare (the recipe, the tracking store, the run directory held for this fit,
the data and backbone, the strategy), the trainer, the tracked fit (an MLflow run that ends as the run directory
does, whatever happens), and finalise (the best checkpoint, the deployable model, reports, the logged model). The
run directory (:mod:`transfer.rundir`) holds ``run.json`` (its state and, at the end, the result), the checkpoints
and ``events.jsonl``; ``fit(..., resume=True)`` continues an interrupted run from ``last.ckpt`` in the same MLflow
run.

Under DDP (``trainer.strategy: ddp``; Lightning's launcher, torchrun or SLURM) every process runs :func:`fit`;
rank zero alone holds the run directory, talks to MLflow and logs the model (see the README's scaling section).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from transfer.errors import UserError
from transfer.process_state import restored
from transfer.progress import Events
from transfer.recipe import Recipe, load_recipe
from transfer.rundir import FAILED, FINISHED, INTERRUPTED, TRAINED, RunDir
from transfer.tracking import TrackingStore, one_line

_log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a fit produced.

    Attributes:
        run_id: the MLflow run.
        model_uri: ``runs:/<run_id>/model``.
        registered_uri: ``models:/<name>/<version>`` when ``tracking.register_as`` is set, else None.
        metrics: the final model's validation metrics (``val_acc`` with ``val_acc_low``/``val_acc_high``,
            ``val_f1``, ``val_acc_top5`` ...).
        strategy: the strategy that trained (``auto`` resolved).
        strategy_reason: why that strategy.
        run_dir: the run directory (checkpoints, run.json, recipe.yaml, events.jsonl).
        version: the registered model version, or None.
        promoted: whether the alias moved to this version.
        best_stage: the stage a stage probe picked, else None.
        params: the params logged to MLflow.
        rank: this process's global rank under DDP (only rank zero logs; others return ``registered_uri=None``).
        deployment: what the logged model carries: runtime, precision, temperature, ECE before/after, the unknown
            detector and its threshold (:meth:`transfer.deploy.package.Deployment.summary`).
    """

    run_id: str
    model_uri: str
    registered_uri: str | None
    metrics: dict[str, float]
    strategy: str
    strategy_reason: str = ""
    run_dir: str = ""
    version: int | None = None
    promoted: bool = False
    best_stage: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    seconds: float = 0.0
    seconds_to_first_epoch: float = 0.0
    deployment: dict[str, Any] = field(default_factory=dict)


def run_dir_for(recipe: Recipe) -> Path:
    """``<trainer.default_root_dir or ./runs>/<recipe name>-<digest>``: the same recipe always maps here."""
    return RunDir.for_recipe(recipe).path


def fit(
    recipe: str | Path | Recipe,
    overrides: Sequence[str] = (),
    resume: bool = False,
    *,
    restart: bool = False,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Fine-tune, track and log a classifier as a recipe says.

    Args:
        recipe: a recipe file, or a :class:`Recipe`.
        overrides: ``KEY=VALUE`` overrides (``--set``).
        resume: continue this recipe's interrupted run from its ``last.ckpt``, in the same MLflow run; a run whose
            training ended while the tracking server was away is logged and registered.
        restart: start a new run over an interrupted one (whose files are kept in ``previous/``).
        callbacks: extra Lightning callbacks (tests, front ends).

    Raises:
        UserError: bad recipe, data, backbone, tracking URI; the directory is another fit's; nothing to resume, or
            an interrupted run without ``resume``/``restart``; the fit diverged; or the tracking server went away
            before the model was logged (the checkpoints are kept; ``resume=True`` finishes the job).
        KeyboardInterrupt: training was interrupted; ``resume=True`` continues it.
    """
    started = time.monotonic()
    with restored():  # Lightning exports seeds and DDP variables, MLflow its URIs: the caller's process keeps its own
        result = _fit(load_recipe(recipe, overrides), resume, restart, callbacks)
    result.seconds = time.monotonic() - started
    result.seconds_to_first_epoch = max(0.0, (result.seconds_to_first_epoch or started) - started)
    return result


def _fit(r: Recipe, resume: bool, restart: bool, callbacks: Sequence[Any]) -> FitResult:
    """:func:`fit` itself: prepare, trainer, tracked fit, finalise."""
    import lightning as L

    from transfer import strategies
    from transfer.audit.fit import before_training
    from transfer.job import check_model_keys, prepare
    from transfer.trainer import build_trainer, quiet_third_parties

    store = TrackingStore.for_recipe(r).check()
    check_model_keys(r)
    quiet_third_parties()
    L.seed_everything(r.seed, workers=True, verbose=False)
    rd = RunDir.for_recipe(r)
    trainer, trainer_kw = build_trainer(r, str(rd.path))
    primary = trainer.is_global_zero
    with _held(rd, primary, resume, restart, store, r) as rd:
        events = Events(rd.events if primary else None)
        try:
            job = prepare(r, events)
            strategy, decision = strategies.resolve(job, rd.read())
            L.seed_everything(r.seed, workers=True, verbose=False)  # auto's trials drew numbers: train as if named
            _default_epochs(r, trainer, strategy)
            plan = strategy.build(job)
            finding = _find_lr(job, trainer, plan) if r.optim.lr == "auto" and not resume else None
        except BaseException as exc:
            _end_events(events, exc)
            raise
        params = _run_params(r, job, strategy, plan, trainer, trainer_kw, decision)
        if not primary:  # rank zero logs and registers; this rank trains
            trainer.callbacks.extend(callbacks)
            _train(trainer, plan, rd, resume)
            return _follower_result(trainer, strategy, rd, params)
        with _tracked(store, rd, r, decision, params, resume) as run:
            run.log_lr_finding(finding)
            run.attach(trainer, events, strategy.name)
            before_training(job, store, run.run_id)  # data.audit: findings logged; block stops a leaking split
            trainer.callbacks.extend(callbacks)  # after ours: they see this epoch's metrics logged
            _train(trainer, plan, rd, resume)
            run.trained = True
            result = _finalise(job, strategy, plan, trainer, rd, store, run.run_id, params)
            result.seconds_to_first_epoch = run.progress.first_step or 0.0
            return result


@contextlib.contextmanager
def _held(rd: RunDir, primary: bool, resume: bool, restart: bool, store: TrackingStore, r: Recipe) -> Iterator[RunDir]:
    """Rank zero holds the run directory for the fit; the other ranks follow what it recorded."""
    if not primary:
        yield rd
        return
    command = f"transfer fit {r.path or 'RECIPE'}"
    with rd.claim(resume=resume, restart=restart, store=store, command=command) as held:
        yield held


def _train(trainer: Any, plan: Any, rd: RunDir, resume: bool) -> None:
    """``Trainer.fit``, with the process's SIGINT handler as found (Lightning ignores SIGINT after an interrupt)."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        trainer.fit(plan.module, ckpt_path=str(rd.last_ckpt) if resume else None, **plan.fit_kwargs)
    except SystemExit as exc:  # Lightning turns Ctrl+C into exit(1): give the caller the real reason
        raise KeyboardInterrupt from exc
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def _default_epochs(r: Recipe, trainer: Any, strategy: Any) -> None:
    """A recipe without ``trainer.max_epochs`` (or ``max_steps``) trains for its strategy's default."""
    if "max_epochs" not in r.trainer and r.trainer.get("max_steps", -1) in (-1, None):
        trainer.fit_loop.max_epochs = strategy.default_epochs


def _find_lr(job: Any, trainer: Any, plan: Any) -> Any:
    """``optim.lr: auto``: the LR finder's suggestion set on the module (see :mod:`transfer.lr_find`)."""
    import math

    from transfer.lr_find import find_lr

    job.events.phase("train", "Finding a learning rate")
    steps = math.ceil(len(job.index.train) / job.recipe.data.batch_size)
    return find_lr(trainer, plan.module, plan.fit_kwargs, steps)


def _end_events(events: Events, exc: BaseException, status: str | None = None) -> None:
    interrupted = isinstance(exc, KeyboardInterrupt)
    events.write("end", status=status or (INTERRUPTED if interrupted else FAILED), error=one_line(exc))


class _Run:
    """The MLflow run of a fit, as :func:`_tracked` opened it."""

    def __init__(self, store: TrackingStore, run_id: str, rd: RunDir) -> None:
        self.store, self.run_id, self.rd = store, run_id, rd
        self.trained = False

    def log_lr_finding(self, finding: Any) -> None:
        """The LR finder's plot and suggestion (``optim.lr: auto``), when it ran."""
        if finding is None:
            return
        import tempfile

        from transfer.lr_find import plot

        with tempfile.TemporaryDirectory(prefix="transfer-lr-") as tmp:
            self.store.client.log_artifact(self.run_id, str(plot(finding, Path(tmp) / "lr_find.png")))
        self.store.client.log_param(self.run_id, "lr_found", f"{finding.suggestion:.4g}")

    def attach(self, trainer: Any, events: Events, strategy: str) -> None:
        """Per-epoch metrics to MLflow, progress events, and the run id for the other ranks."""
        from transfer.distributed import RankSync
        from transfer.progress import ProgressEvents
        from transfer.tracking import EpochMetrics

        for c in trainer.callbacks:
            if isinstance(c, RankSync):
                c.run_id = self.run_id
        trainer.callbacks.append(EpochMetrics(self.store, self.run_id, pending=self.rd.pending_metrics))
        self.progress = ProgressEvents(events, strategy=strategy)
        trainer.callbacks.append(self.progress)


@contextlib.contextmanager
def _tracked(
    store: TrackingStore, rd: RunDir, r: Recipe, decision: dict[str, Any], params: dict[str, Any], resume: bool
) -> Iterator[_Run]:
    """Open (or reopen) the MLflow run, record it in ``run.json``, and end both the same way whatever happens:
    finished; interrupted (KILLED, resumable); trained (the server went away before the model was logged); failed."""
    events = Events(rd.events)
    with store.activated():
        name = r.tracking.run_name or (None if resume else f"{r.name}-{decision['strategy']}")
        mlrun = store.start_run(r.tracking.experiment, run_id=rd.state.get("run_id") if resume else None, run_name=name)
        run = _Run(store, mlrun.info.run_id, rd)
        rd.begin(
            run.run_id,
            experiment_id=mlrun.info.experiment_id,
            tracking_uri=store.uri,
            recipe_digest=r.digest(),
            **decision,
        )
        (rd.path / "recipe.yaml").write_text(r.to_yaml())
        try:
            store.log_params(run.run_id, params)
            store.log_text(run.run_id, r.to_yaml(), "recipe.yaml")
            store.client.set_tag(run.run_id, "transfer.run_dir", str(rd.path.resolve()))
            yield run
        except BaseException as exc:
            status = _stopped_status(exc, run, store)
            rd.transition(status, error=one_line(exc))
            _end_events(events, exc, status)
            store.end_run("KILLED" if status == INTERRUPTED else "FAILED")
            if status == TRAINED:
                raise UserError(
                    f"MLflow server {store.uri} went away before the model was logged; the trained checkpoints are "
                    f"kept in {rd.path}: when the server answers again, `transfer fit {r.path or 'RECIPE'} --resume` "
                    f"logs run {run.run_id} and registers the model"
                ) from exc
            if status == INTERRUPTED:
                _log.warning("interrupted; `transfer fit %s --resume` continues run %s", r.path or "RECIPE", run.run_id)
            raise
        rd.transition(FINISHED)
        events.write("end", status=FINISHED, **rd.state.get("result", {}))
        store.end_run("FINISHED")


def _stopped_status(exc: BaseException, run: _Run, store: TrackingStore) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return TRAINED if run.trained and not store.answers() else FAILED


def _run_params(
    r: Recipe, job: Any, strategy: Any, plan: Any, trainer: Any, trainer_kw: dict[str, Any], decision: dict
) -> dict[str, Any]:
    """The run's MLflow params (the learning rate after the scaling rule for the global batch)."""
    from transfer.optim import effective_lr, scales_linearly

    lr = plan.module.lr  # the LR finder's, when the recipe says auto
    lr_eff = effective_lr(lr, r.data.batch_size, trainer.world_size, scales_linearly(r.optim.name, r.optim.scale_lr))
    index = job.index
    return {
        "backbone": job.spec.name,
        "pretrained": r.model.pretrained
        if isinstance(r.model.pretrained, bool)
        else Path(str(r.model.pretrained)).name,
        **strategy.describe(),
        "strategy_requested": r.strategy.name,
        "train_size": len(index.train),
        "val_size": len(index.val),
        "dataset_size": len(index.train) + len(index.val),
        "skipped_files": len(index.skipped),
        "num_classes": index.num_classes,
        "classes": index.classes,
        "data_source": r.data.source,
        "image_size": job.data_config["input_size"][-1],
        "augment": "none (cached features)" if strategy.uses_features else r.data.augment,
        "balance": job.balance,
        "batch_size": r.data.batch_size,
        "world_size": trainer.world_size,
        "global_batch_size": r.data.batch_size * trainer.world_size,
        "sync_batchnorm": bool(trainer_kw.get("plugins")),  # recipes cannot set plugins: BatchNormSync is ours
        "optimizer": r.optim.name,
        "lr": r.optim.lr,
        "lr_effective": lr_eff,
        "lr_head": lr_eff * (strategy.lr_scale("classifier") if strategy.units else 1.0),
        "weight_decay": r.optim.weight_decay,
        "label_smoothing": r.optim.label_smoothing,
        "max_epochs": trainer.max_epochs,
        "train_precision": str(trainer_kw["precision"]),  # "precision" is the model config's (fp32 | int8)
        "seed": r.seed,
        "trainable_params": plan.trainable_params,
        "total_params": plan.total_params,
        **plan.params,
        **{f"auto_{k}": v for k, v in decision.get("auto", {}).items()},
    }


def _best_seen(trainer: Any) -> float | None:
    """The best per-epoch ``val_acc`` of the training (what the ``best`` checkpoint holds)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val_acc"), None)
    return float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None


def _load_best(trainer: Any, module: Any, rd: RunDir) -> int | None:
    """Load the best checkpoint's weights into ``module``; returns its epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val_acc"), None)
    best = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else rd.best_ckpt
    if not best.is_file():
        return None
    data = torch.load(best, map_location="cpu", weights_only=False)  # our own checkpoint, written by this run
    module.load_state_dict(data["state_dict"])
    return int(data.get("epoch", -1))


def _finalise(
    job: Any, strategy: Any, plan: Any, trainer: Any, rd: RunDir, store: TrackingStore, run_id: str, params: dict
) -> FitResult:
    """The kept checkpoint's deployable model, its reports and metrics, logged (and registered) in ``run_id``."""
    from transfer.deploy.package import prepare_deployment
    from transfer.deploy.registry import log_classifier

    if not store.answers():
        raise ConnectionError(f"{store.uri} does not answer")
    job.events.phase("evaluate")
    # The logged weights are the last epoch's unless the recipe asks for the best validation epoch's (whose
    # accuracy is then chosen on the very images it is reported on: the run says so).
    best_epoch = _load_best(trainer, plan.module, rd) if job.recipe.optim.checkpoint == "best" else None
    final = strategy.finalise(job, plan)
    deployment = prepare_deployment(job, strategy, final)  # calibration, unknown detector, runtime
    metrics = _log_evaluation(job, final, trainer, store, run_id, best_epoch)
    r = job.recipe
    job.events.phase(
        "log_model", None if not r.tracking.register_as else f"Saving and registering {r.tracking.register_as}"
    )
    logged = log_classifier(
        final.model,
        store=store,
        run_id=run_id,
        backbone=job.spec.name,
        class_names=job.index.classes,
        data_config=job.data_config,
        registered_model_name=r.tracking.register_as,
        alias=r.tracking.alias,
        promote=r.tracking.promote,
        metrics=metrics,
        deployment=deployment,
    )
    result = FitResult(
        run_id=run_id,
        model_uri=logged.model_uri,
        registered_uri=logged.registered_uri,
        metrics={**metrics, **({"best_epoch": float(best_epoch)} if best_epoch is not None else {})},
        strategy=strategy.name,
        strategy_reason=strategy.reason,
        run_dir=str(rd.path),
        version=logged.version,
        promoted=logged.promoted,
        best_stage=final.report.get("best_stage"),
        params=params,
        deployment=deployment.summary(),
    )
    rd.update(result={k: v for k, v in asdict(result).items() if k not in ("params", "rank")})
    return result


def _log_evaluation(
    job: Any, final: Any, trainer: Any, store: TrackingStore, run_id: str, best_epoch: int | None
) -> dict:
    """The final model's reports and metrics on the validation images, logged; returns the metrics."""
    from mlflow.entities import Metric, Param

    from transfer.reports import log_reports

    kept = best_epoch if best_epoch is not None else trainer.current_epoch - 1
    report = {"best_epoch": best_epoch, "kept_epoch": kept, **final.report}
    metrics = log_reports(store, run_id, final.logits, final.labels, job.index.classes, report)
    # final_*: the logged model on the validation images (honest with checkpoint: last); best_val_acc: the best epoch
    # seen during training, chosen on those same images, so optimistic, and labelled as such in the summary.
    logged_metrics = [Metric(f"final_{k}", v, 0, 0) for k, v in metrics.items()]
    best_seen = _best_seen(trainer)
    if best_seen is not None:
        logged_metrics.append(Metric("best_val_acc", best_seen, 0, 0))
    if best_epoch is not None:
        logged_metrics.append(Metric("best_epoch", best_epoch, 0, 0))
    store.client.log_batch(run_id, metrics=logged_metrics, params=[Param(k, str(v)) for k, v in final.params.items()])
    for name, content in final.artifacts.items():
        store.client.log_dict(run_id, content, name)
    if job.index.skipped:
        skipped = {"skipped": [{"path": p, "reason": why} for p, why in job.index.skipped]}
        store.client.log_dict(run_id, skipped, "skipped_files.json")
    return metrics


def _follower_result(trainer: Any, strategy: Any, rd: RunDir, params: dict[str, Any]) -> FitResult:
    """What a rank other than zero returns: rank zero's run id, its own last metrics."""
    from transfer.distributed import RankSync

    run_id = next(c for c in trainer.callbacks if isinstance(c, RankSync)).run_id
    return FitResult(
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        registered_uri=None,
        metrics={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")},
        strategy=strategy.name,
        strategy_reason=strategy.reason,
        run_dir=str(rd.path),
        params=params,
        rank=trainer.global_rank,
    )


def result_dict(result: FitResult) -> dict[str, Any]:
    """A FitResult as plain data."""
    return asdict(result)


__all__ = ["FitResult", "fit", "result_dict", "run_dir_for"]
