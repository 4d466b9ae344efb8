"""``transfer fit``: one recipe in, one tracked (and optionally registered) classifier out.

>>> from transfer.train import fit
>>> result = fit("recipes/quickstart.yaml", overrides=["trainer.max_epochs=2"])
>>> result.run_id, result.model_uri, result.metrics["val_acc"]

Each recipe gets a run directory ``runs/<recipe name>-<hash of the resolved recipe>/`` (under
``trainer.default_root_dir`` when set) with ``run.json`` (the MLflow run id, status and the strategy chosen),
``recipe.yaml``, ``last.ckpt`` and ``best.ckpt``. ``fit(..., resume=True)`` continues an interrupted run from
``last.ckpt`` in the same MLflow run.

Under DDP (``trainer.strategy: ddp``; Lightning's launcher, torchrun or SLURM) every process runs :func:`fit`;
rank zero alone writes the run directory, talks to MLflow and logs the model (see the README's scaling section).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from transfer.errors import UserError
from transfer.recipe import Recipe, load_recipe

_log = logging.getLogger(__name__)

AUTO_PROBE_PER_CLASS = 40  # images per class that auto's domain probe looks at
AUTO_PROBE_MAX = 600


@dataclass
class FitResult:
    """What a fit produced.

    Attributes:
        run_id: the MLflow run.
        model_uri: ``runs:/<run_id>/model``.
        registered_uri: ``models:/<name>/<version>`` when ``tracking.register_as`` is set, else None.
        metrics: the final model's validation metrics (``val_acc``, ``val_f1``, ``val_acc_top5`` ...).
        strategy: the strategy that trained (``auto`` resolved).
        strategy_reason: why that strategy.
        run_dir: the run directory (checkpoints, run.json, recipe.yaml).
        version: the registered model version, or None.
        promoted: whether the alias moved to this version.
        best_stage: the stage a stage probe picked, else None.
        params: the params logged to MLflow.
        rank: this process's global rank under DDP (only rank zero logs; others return ``registered_uri=None``).
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


# ----------------------------------------------------------------------------------------------------------------
# Run directory


def run_dir_for(recipe: Recipe) -> Path:
    """``<trainer.default_root_dir or ./runs>/<recipe name>-<digest>``: the same recipe always maps here."""
    root = Path(recipe.trainer.get("default_root_dir") or "runs")
    return root / f"{recipe.name}-{recipe.digest()}"


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / "run.json")


def _prepare_run_dir(recipe: Recipe, resume: bool) -> tuple[Path, dict[str, Any]]:
    run_dir = run_dir_for(recipe)
    state = _read_state(run_dir)
    if resume:
        if not state.get("run_id") or not (run_dir / "last.ckpt").is_file():
            raise UserError(
                f"nothing to resume for this recipe: no interrupted run with a checkpoint in {run_dir}; "
                "run without --resume"
            )
        if state.get("status") == "finished":
            raise UserError(
                f"run {state['run_id']} of this recipe has finished already; run without --resume for a new one"
            )
        return run_dir, state
    if state.get("status") in ("running", "interrupted") and (run_dir / "last.ckpt").is_file():
        _log.warning(
            "an interrupted run of this recipe (%s) is replaced by a new one; --resume continues it instead",
            state.get("run_id"),
        )
    for name in ("last.ckpt", "best.ckpt", "run.json"):  # a fresh run must not pick up old checkpoints
        (run_dir / name).unlink(missing_ok=True)
    for old in run_dir.glob("*.ckpt") if run_dir.is_dir() else []:
        old.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, {}


# ----------------------------------------------------------------------------------------------------------------
# Pieces


def _create_model(recipe: Recipe, num_classes: int) -> tuple[Any, Any]:
    import zoo

    try:
        spec = zoo.get_spec(recipe.model.backbone)
    except zoo.UnknownModelError as exc:
        raise recipe.error("model.backbone", str(exc)) from exc
    pretrained = recipe.resolve_pretrained()
    kwargs: dict[str, Any] = {}
    if recipe.model.drop_rate:
        kwargs["drop_rate"] = recipe.model.drop_rate
    try:
        model = zoo.create_model(spec.name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    except zoo.ZooError as exc:
        raise recipe.error("model.pretrained", str(exc)) from exc
    except TypeError as exc:
        raise recipe.error("model.drop_rate", f"{spec.name} does not take drop_rate ({exc}); remove it") from exc
    return model, spec


def _check_model_keys(recipe: Recipe) -> None:
    """Fail on the backbone name and the weights' location before any data is read (one line, no logs first)."""
    import zoo

    try:
        zoo.get_spec(recipe.model.backbone)
    except zoo.UnknownModelError as exc:
        raise recipe.error("model.backbone", str(exc)) from exc
    recipe.resolve_pretrained()


def _tracking_uri(recipe: Recipe) -> str:
    """``tracking.uri`` when the recipe sets it, else ``$MLFLOW_TRACKING_URI`` (as every MLflow tool), else the
    local default ``sqlite:///mlflow.db``."""
    if "uri" in recipe.tracking.model_fields_set:
        return recipe.tracking.uri
    return os.environ.get("MLFLOW_TRACKING_URI") or recipe.tracking.uri


def _data_config(recipe: Recipe, spec: Any) -> dict[str, Any]:
    size = recipe.data.image_size or int(spec.input_size[-1])
    if size < spec.min_size:
        raise recipe.error("data.image_size", f"{size} is below {spec.name}'s smallest input {spec.min_size}; raise it")
    cfg = dict(spec.data_config)
    cfg["input_size"] = (3, size, size)
    return cfg


def _feature_device(recipe: Recipe) -> str:
    return "cuda" if _on_gpu(recipe) else "cpu"


def _subsample_loader(dm: Any, per_class: int, cap: int, seed: int) -> Any:
    import random

    from torch.utils.data import DataLoader

    from transfer.data import ImageDataset

    rng = random.Random(seed)
    by_class: dict[int, list[Any]] = {}
    for s in dm.index.train:
        by_class.setdefault(s[1], []).append(s)
    per = max(2, min(per_class, cap // max(1, len(by_class))))
    picked = [s for items in by_class.values() for s in (rng.sample(items, per) if len(items) > per else items)]
    ds = ImageDataset(picked, dm.eval_tf, 2 * int(dm.data_config["input_size"][-1]))
    return DataLoader(ds, batch_size=max(32, dm.batch_size), shuffle=False, num_workers=dm.num_workers)


def _choose(recipe: Recipe, model: Any, dm: Any, cache: Any, spec: Any, data_config: dict[str, Any]) -> Any:
    """Resolve ``strategy: auto`` (the decision and its reason are logged and recorded)."""
    import hashlib

    from transfer.strategies import choose_strategy

    pretrained = bool(recipe.model.pretrained)
    n_stages = len(model.stages())
    feats = None
    if pretrained:
        loader = _subsample_loader(dm, AUTO_PROBE_PER_CLASS, AUTO_PROBE_MAX, recipe.seed)
        files = hashlib.sha256(repr(loader.dataset.samples).encode()).hexdigest()
        feats = cache.get_or_compute(
            model,
            {"probe": loader},
            backbone=spec.name,
            data_config=data_config,
            files="auto:" + files,
            per_stage=True,
            device=_feature_device(recipe),
        )["probe"]
    choice = choose_strategy(
        pretrained=pretrained,
        n_train=len(dm.index.train),
        num_classes=dm.index.num_classes,
        stage_features=feats,
        n_stages=n_stages,
        seed=recipe.seed,
    )
    _log.info("strategy auto -> %s: %s", choice.name, choice.reason)
    return choice


def _tensor_loaders(
    tensors: dict[str, list[torch.Tensor]], batch_size: int, sampler: Any, seed: int
) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    train = TensorDataset(*tensors["train"])
    val = TensorDataset(*tensors["val"])
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    drop_last = n > batch_size and n % batch_size == 1
    tl = DataLoader(
        train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=g, drop_last=drop_last
    )
    vl = DataLoader(val, batch_size=max(batch_size, 256), shuffle=False)
    return tl, vl


DDP_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
SYNC_BN_BELOW = 32  # per-device batches smaller than this get synchronised BatchNorm under DDP by default


def _on_gpu(recipe: Recipe) -> bool:
    return torch.cuda.is_available() and str(recipe.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def _trainer_kwargs(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
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


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips from the terminal (they are not about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


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


def _restore_sigint() -> None:
    # Lightning ignores SIGINT after a KeyboardInterrupt (for its graceful shutdown): give Ctrl+C back.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ----------------------------------------------------------------------------------------------------------------
# fit


def fit(
    recipe: str | Path | Recipe,
    overrides: Sequence[str] = (),
    resume: bool = False,
    *,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Fine-tune, track and log a classifier as a recipe says.

    Under DDP (``trainer.strategy: ddp``) every process runs this function: rank zero alone prepares the run
    directory, talks to MLflow and logs the model; the other ranks train and return a result with the same
    ``run_id`` and ``rank`` set.

    Args:
        recipe: a recipe file, or a :class:`Recipe`.
        overrides: ``KEY=VALUE`` overrides (``--set``).
        resume: continue this recipe's interrupted run from its ``last.ckpt``, in the same MLflow run; a run whose
            training ended while the tracking server was away is logged and registered.
        callbacks: extra Lightning callbacks (tests, front ends).

    Raises:
        UserError: bad recipe, data, backbone, tracking URI, nothing to resume, or the tracking server went away
            before the model was logged (the checkpoints are kept; ``resume=True`` finishes the job).
        KeyboardInterrupt: training was interrupted; ``resume=True`` continues it.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from transfer import tracking
    from transfer.data import ImageDataModule, build_index, class_weights, make_sampler, resolve_balance
    from transfer.module import ClassifierModule, StageProbeModule, feature_stats
    from transfer.strategies import FeatureCache, count_params, init_head, make_strategy

    r = load_recipe(recipe, overrides)
    tracking_uri = tracking.check_uri(tracking.resolve_uri(_tracking_uri(r)))
    _check_model_keys(r)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen stages are in eval on purpose
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # the run directory holds run.json
    _tidy_lightning_logging()
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning internals on newer torch
    L.seed_everything(r.seed, workers=True, verbose=False)

    if resume:  # reads only: fail early when there is nothing to resume
        run_dir, state = _prepare_run_dir(r, resume=True)
    # Data and model: every user error surfaces here, before a run is opened.
    index = build_index(
        r.data.source,
        val_source=r.data.val_source,
        val_split=r.data.val_split,
        max_per_class=r.data.max_per_class,
        seed=r.seed,
        cache_dir=r.data.cache_dir,
        resolve_path=r.resolve_path,
    )
    model, spec = _create_model(r, index.num_classes)
    data_config = _data_config(r, spec)
    counts = index.class_counts("train")
    balance = resolve_balance(r.data.balance, counts)
    dm = ImageDataModule(
        index,
        data_config,
        augment=r.data.augment,
        batch_size=r.data.batch_size,
        num_workers=r.data.num_workers,
        balance=balance,
        seed=r.seed,
    )
    from transfer.data import cache_root

    cache = FeatureCache(cache_root(r.data.cache_dir))

    # The trainer knows this process's rank (Lightning's launcher, torchrun or SLURM).
    run_dir = run_dir_for(r)
    trainer_kw = _trainer_kwargs(r, run_dir)
    # best.ckpt follows val_acc; last.ckpt is every epoch's end (what --resume continues from). Two callbacks,
    # since Lightning's save_last only writes when the monitored metric improved.
    best_ckpt = ModelCheckpoint(
        dirpath=run_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1, enable_version_counter=False
    )
    last_ckpt = ModelCheckpoint(
        dirpath=run_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    cbs: list[Any] = [best_ckpt, last_ckpt]
    if r.optim.early_stopping_patience:
        cbs.append(EarlyStopping(monitor="val_acc", mode="max", patience=r.optim.early_stopping_patience))
    from transfer.distributed import RankSync

    share = RankSync()
    cbs.append(share)
    trainer = L.Trainer(callbacks=cbs, **trainer_kw)
    zero = trainer.is_global_zero
    if zero and not resume:  # only now: a recipe that fails validation leaves nothing behind
        run_dir, state = _prepare_run_dir(r, resume=False)
    elif not zero:  # rank zero owns the run directory; the decisions it recorded there are reused
        state = _read_state(run_dir)

    # Strategy (auto decides once; a resumed run, and the other ranks, reuse the decision).
    name, reason, stages_k, auto_details = r.strategy.name, "set in the recipe", None, {}
    if name == "auto":
        if state.get("strategy") and state.get("recipe_digest") == r.digest():
            name, reason = state["strategy"], state.get("strategy_reason", "")
            stages_k, auto_details = state.get("strategy_stages"), state.get("auto", {})
        else:
            choice = _choose(r, model, dm, cache, spec, data_config)
            name, reason, stages_k, auto_details = choice.name, choice.reason, choice.stages, choice.details
    scfg = r.strategy.model_copy(update={"stages": stages_k} if stages_k else {})
    strategy = make_strategy(name, scfg, reason)
    init_head(model.get_classifier())
    try:
        strategy.setup(model)
    except ValueError as exc:
        key = "strategy.milestones" if name == "gradual" else "strategy.stages"
        raise r.error(key, str(exc)) from exc

    weights = class_weights(counts) if balance == "weights" else None
    sampler_labels = [lab for _, lab in index.train]
    feature_device = _feature_device(r)
    best_stage_dims: list[int] | None = None
    files = index.fingerprint()
    if strategy.uses_features:
        per_stage = name == "stage_probe"
        # Computed once: the cache is locked per key, so other ranks (or runs) wait for it and then read it.
        feats = cache.get_or_compute(
            model,
            {
                "train": dm.eval_loader("train"),
                "val": dm.eval_loader("val"),
            },
            backbone=spec.name,
            data_config=data_config,
            files=files,
            per_stage=per_stage,
            device=feature_device,
        )
        sampler = make_sampler(sampler_labels, index.num_classes, r.seed) if balance == "sampler" else None
        if per_stage:
            n_stages = strategy.units.num_stages
            tensors = {
                s: [feats[s][f"stage{i}"] for i in range(n_stages)] + [feats[s]["labels"]] for s in ("train", "val")
            }
            best_stage_dims = [int(feats["train"][f"stage{i}"].shape[1]) for i in range(n_stages)]
            stats = [feature_stats(feats["train"][f"stage{i}"]) for i in range(n_stages)]
            module: Any = StageProbeModule(
                best_stage_dims,
                index.num_classes,
                optim=r.optim,
                batch_size=r.data.batch_size,
                class_weights=weights,
                stats=stats,
            )
        else:
            tensors = {s: [feats[s]["pre_logits"], feats[s]["labels"]] for s in ("train", "val")}
            module = ClassifierModule(
                model,
                strategy,
                index.num_classes,
                optim=r.optim,
                batch_size=r.data.batch_size,
                class_weights=weights,
                features=True,
                feature_norm=feature_stats(feats["train"]["pre_logits"]),
            )
        train_loader, val_loader = _tensor_loaders(tensors, r.data.batch_size, sampler, r.seed)
        fit_kwargs: dict[str, Any] = {"train_dataloaders": train_loader, "val_dataloaders": val_loader}
    else:
        module = ClassifierModule(
            model,
            strategy,
            index.num_classes,
            optim=r.optim,
            batch_size=r.data.batch_size,
            class_weights=weights,
            channels_last=_on_gpu(r),
        )
        fit_kwargs = {"datamodule": dm}

    if isinstance(module, StageProbeModule):
        trainable, total = (
            sum(p.numel() for p in module.probes.parameters()),
            sum(p.numel() for p in model.parameters()),
        )
    else:
        trainable, total = count_params(model, strategy)

    from transfer.progress import ProgressFile

    trainer.callbacks.append(ProgressFile(run_dir=str(run_dir), strategy=name))
    params = _run_params(r, spec, strategy, index, data_config, balance, trainer, trainer_kw, auto_details)
    params.update(trainable_params=trainable, total_params=total)
    if strategy.uses_features:
        params["feature_cache"] = "hit" if cache.hits and not cache.misses else "miss"

    run_id = ""
    if zero:  # Tracking: open (or reopen) the run
        run_id = _open_run(r, tracking_uri, run_dir, state, resume, name, reason, stages_k, auto_details, params)
        trainer.callbacks.append(
            tracking.EpochMetrics(run_id, tracking_uri=tracking_uri, pending=run_dir / "pending_metrics.jsonl")
        )
        state = _read_state(run_dir)
    share.run_id = run_id
    trainer.callbacks.extend(callbacks)
    try:
        last = run_dir / "last.ckpt"
        trainer.fit(module, ckpt_path=str(last) if resume else None, **fit_kwargs)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        if zero:
            state["status"] = "interrupted" if interrupted else "failed"
            _write_state(run_dir, state)
            tracking.end_run(tracking_uri, "KILLED" if interrupted else "FAILED")
        _restore_sigint()
        if interrupted:
            if zero:
                _log.warning("interrupted; `transfer fit %s --resume` continues run %s", r.path or "RECIPE", run_id)
            if isinstance(exc, SystemExit):
                raise KeyboardInterrupt from exc  # Lightning turns Ctrl+C into exit(1): give the caller the real reason
        raise

    if not zero:  # rank zero logs and registers the model; this rank is done
        return FitResult(
            run_id=share.run_id,
            model_uri=f"runs:/{share.run_id}/model",
            registered_uri=None,
            metrics={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")},
            strategy=strategy.name,
            strategy_reason=strategy.reason,
            run_dir=str(run_dir),
            params=params,
            rank=trainer.global_rank,
        )
    try:
        if not tracking.server_answers(tracking_uri):
            raise ConnectionError(f"{tracking_uri} does not answer")
        result = _finish(
            r,
            trainer,
            module,
            model,
            strategy,
            spec,
            index,
            data_config,
            dm,
            fit_kwargs,
            run_dir,
            best_stage_dims,
            params,
        )
    except BaseException as exc:
        away = not isinstance(exc, KeyboardInterrupt) and not tracking.server_answers(tracking_uri)
        state["status"] = "trained" if away else "failed"
        _write_state(run_dir, state)
        tracking.end_run(tracking_uri, "FAILED")
        if away:
            raise UserError(
                f"MLflow server {tracking_uri} went away before the model was logged; the trained checkpoints are "
                f"kept in {run_dir}: when the server answers again, `transfer fit {r.path or 'RECIPE'} --resume` "
                f"logs run {run_id} and registers the model"
            ) from exc
        raise
    state["status"] = "finished"
    _write_state(run_dir, state)
    tracking.end_run(tracking_uri, "FINISHED")
    return result


def _run_params(
    r: Recipe,
    spec: Any,
    strategy: Any,
    index: Any,
    data_config: dict[str, Any],
    balance: str,
    trainer: Any,
    trainer_kw: dict[str, Any],
    auto_details: dict[str, Any],
) -> dict[str, Any]:
    """The run's MLflow params (the learning rate after the linear scaling rule for the global batch)."""
    from transfer.module import effective_lr

    lr_eff = effective_lr(r.optim.lr, r.data.batch_size, trainer.world_size, r.optim.scale_lr)
    return {
        "backbone": spec.name,
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
        "image_size": data_config["input_size"][-1],
        "augment": "none (cached features)" if strategy.uses_features else r.data.augment,
        "balance": balance,
        "batch_size": r.data.batch_size,
        "world_size": trainer.world_size,
        "global_batch_size": r.data.batch_size * trainer.world_size,
        "sync_batchnorm": bool(trainer_kw.get("plugins")),  # recipes cannot set plugins: BatchNormSync is ours
        "optimizer": r.optim.name,
        "lr": r.optim.lr,
        "lr_effective": lr_eff,
        "lr_head": lr_eff * (strategy.lr_scale("classifier", 1) if strategy.units else 1.0),
        "weight_decay": r.optim.weight_decay,
        "label_smoothing": r.optim.label_smoothing,
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer_kw["precision"]),
        "seed": r.seed,
        **{f"auto_{k}": v for k, v in auto_details.items()},
    }


def _open_run(
    r: Recipe,
    tracking_uri: str,
    run_dir: Path,
    state: dict[str, Any],
    resume: bool,
    name: str,
    reason: str,
    stages_k: int | None,
    auto_details: dict[str, Any],
    params: dict[str, Any],
) -> str:
    """Start (or reopen, on resume) the MLflow run, record it in ``run.json`` and log the params and recipe."""
    import mlflow

    from transfer import tracking

    run = tracking.start_run(
        tracking_uri,
        r.tracking.experiment,
        run_id=state.get("run_id") if resume else None,
        run_name=r.tracking.run_name or (None if resume else f"{r.name}-{name}"),
    )
    run_id = run.info.run_id
    new_state = {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri,
        "status": "running",
        "strategy": name,
        "strategy_reason": reason,
        "strategy_stages": stages_k,
        "auto": auto_details,
        "recipe_digest": r.digest(),
    }
    _write_state(run_dir, new_state)
    (run_dir / "recipe.yaml").write_text(r.to_yaml())
    try:
        tracking.log_params(params)
        tracking.log_text(r.to_yaml(), "recipe.yaml")
        mlflow.set_tags({"transfer.run_dir": str(run_dir.resolve()), "transfer.strategy": name})
    except BaseException:
        new_state["status"] = "failed"
        _write_state(run_dir, new_state)
        tracking.end_run(tracking_uri, "FAILED")
        raise
    return run_id


def _load_best(trainer: Any, module: Any, run_dir: Path) -> int | None:
    """Load the best checkpoint's weights into ``module``; returns its epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val_acc"), None)
    best = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else run_dir / "best.ckpt"
    if not best.is_file():
        return None
    data = torch.load(best, map_location="cpu", weights_only=False)  # our own checkpoint, written by this run
    module.load_state_dict(data["state_dict"])
    return int(data.get("epoch", -1))


def _finish(
    r: Recipe,
    trainer: Any,
    module: Any,
    model: Any,
    strategy: Any,
    spec: Any,
    index: Any,
    data_config: dict,
    dm: Any,
    fit_kwargs: dict[str, Any],
    run_dir: Path,
    stage_dims: list[int] | None,
    params: dict[str, Any],
) -> FitResult:
    import mlflow

    from transfer import tracking
    from transfer.module import StageProbeModule

    best_epoch = _load_best(trainer, module, run_dir)
    module.cpu().eval()
    best_stage = None
    extra: dict[str, Any] = {"best_epoch": best_epoch}
    if isinstance(module, StageProbeModule):
        from transfer.serving import StageClassifier

        feats, labels = [], []
        with torch.inference_mode():
            for *f, y in fit_kwargs["val_dataloaders"]:
                feats.append(module(list(f)))
                labels.append(y)
        per_stage = [torch.cat([b[i] for b in feats]) for i in range(len(stage_dims or []))]
        y = torch.cat(labels)
        accs = [float((lg.argmax(1) == y).float().mean()) for lg in per_stage]
        best_stage = max(range(len(accs)), key=lambda i: (accs[i], -i))
        extra["stage_accuracy"] = {f"stage{i}": round(a, 4) for i, a in enumerate(accs)}
        extra["best_stage"] = best_stage
        _log.info("stage probe accuracy per stage: %s; best stage %d", ", ".join(f"{a:.3f}" for a in accs), best_stage)
        final = StageClassifier(model, best_stage + 1, index.num_classes, in_features=stage_dims[best_stage])
        final.classifier.load_state_dict(module.deployable_probe(best_stage).state_dict())
        # The reported metrics come from the deployable probe on raw features: they check the folding too.
        with torch.inference_mode():
            raw = torch.cat([b[best_stage] for *b, _ in fit_kwargs["val_dataloaders"]])
            logits = final.classifier(raw).numpy()
        labels_np = y.numpy()
        mlflow.log_params({"best_stage": best_stage})
        mlflow.log_dict(extra["stage_accuracy"], "stage_probe.json")
    else:
        model.to(memory_format=torch.contiguous_format)
        module.fold_feature_norm()
        final = model
        loader = fit_kwargs["val_dataloaders"] if module.features else dm.eval_loader("val")
        logits_t, labels_t = module.predict_logits(loader)
        logits, labels_np = logits_t.numpy(), labels_t.numpy()
    final.eval()
    metrics = tracking.log_reports(logits, labels_np, index.classes, extra)
    mlflow.log_metrics({f"best_{k}": v for k, v in metrics.items()})
    if best_epoch is not None:
        mlflow.log_metric("best_epoch", best_epoch)
    logged = tracking.log_model(
        final,
        backbone=spec.name,
        class_names=index.classes,
        data_config=data_config,
        tracking=r.tracking,
        metrics=metrics,
    )
    if index.skipped:
        mlflow.log_dict({"skipped": [{"path": p, "reason": why} for p, why in index.skipped]}, "skipped_files.json")
    return FitResult(
        run_id=mlflow.active_run().info.run_id,
        model_uri=logged.model_uri,
        registered_uri=logged.registered_uri,
        metrics={**metrics, **({"best_epoch": float(best_epoch)} if best_epoch is not None else {})},
        strategy=strategy.name,
        strategy_reason=strategy.reason,
        run_dir=str(run_dir),
        version=logged.version,
        promoted=logged.promoted,
        best_stage=best_stage,
        params=params,
    )


def result_dict(result: FitResult) -> dict[str, Any]:
    """A FitResult as plain data."""
    return asdict(result)


__all__ = ["FitResult", "fit", "run_dir_for"]
