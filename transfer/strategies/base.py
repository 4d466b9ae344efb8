"""What every strategy shares: the backbone seen as units, freezing, parameter groups, and the default plan.

A model is seen as *units*: its ``stages()`` (stem first), the head modules other than the classifier
(``head``), and the ``classifier``. A strategy says which units train at each epoch (:meth:`Strategy.trainable_at`)
and at what learning-rate multiple (:meth:`Strategy.lr_scale`); every unit that ever trains gets its optimizer
groups from the first step, ``requires_grad`` is toggled, so optimizer states and checkpoints match across a
resume. Frozen units stay in eval mode (BatchNorm statistics and dropout frozen).

A strategy also builds its own training (:meth:`Strategy.build` -> :class:`Plan`: the LightningModule and what
``Trainer.fit`` is given) and, after training, its deployable model with its validation logits
(:meth:`Strategy.finalise` -> :class:`Final`). The defaults here train the whole network on images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from transfer.layout import try_channels_last
from transfer.module import ClassifierModule, init_head, predict_logits
from transfer.optim import param_group, unique_params

_log = logging.getLogger(__name__)


@dataclass
class Units:
    """A backbone split into the units strategies act on (``stages()`` returns the model's own modules)."""

    stages: list[nn.Module]
    head_rest: list[nn.Module]
    classifier: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> Units:
        stages = list(model.stages())
        classifier = model.get_classifier()
        head_rest = [m for m in model.head_modules() if m is not classifier]
        units = cls(stages, head_rest, classifier)
        covered = {id(p) for p in unique_params([*stages, *head_rest, classifier])}
        stray = [n for n, p in model.named_parameters() if id(p) not in covered]
        if stray:
            # The contract says stages + head cover every parameter; train strays with the head rather than lose them.
            _log.warning("parameters outside stages() and head_modules(): %s; training them with the head", stray[:5])
            holder = nn.Module()
            for i, p in enumerate(p for p in model.parameters() if id(p) not in covered):
                holder.register_parameter(f"p{i}", p)
            units.head_rest.append(holder)
        return units

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def depth_above(self) -> list[float]:
        """For each stage, how many weight layers (convolutions, linear layers) lie above its middle in the
        backbone: layer-wise learning-rate decay by depth, whatever the number of stages a family is cut into."""
        counts = [sum(1 for p in stage.parameters() if p.ndim > 1) for stage in self.stages]
        above, out = 0, [0.0] * len(counts)
        for i in reversed(range(len(counts))):
            out[i] = above + counts[i] / 2
            above += counts[i]
        return out

    def modules(self) -> dict[str, list[nn.Module]]:
        """Unit name (``stage{i}``, ``head``, ``classifier``) -> its modules."""
        out: dict[str, list[nn.Module]] = {f"stage{i}": [s] for i, s in enumerate(self.stages)}
        out["head"] = list(self.head_rest)
        out["classifier"] = [self.classifier]
        return out


@dataclass
class Plan:
    """What a strategy trains: the LightningModule and the keyword arguments of ``Trainer.fit``.

    Attributes:
        module: the LightningModule.
        fit_kwargs: ``datamodule`` or ``train_dataloaders`` / ``val_dataloaders``.
        trainable_params: parameters that train at some epoch.
        total_params: parameters of the backbone.
        params: more MLflow params (e.g. whether cached features were found).
    """

    module: Any
    fit_kwargs: dict[str, Any]
    trainable_params: int
    total_params: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Final:
    """What a strategy deploys: the model to log and its logits on the validation split.

    Attributes:
        model: the network the logged model carries (a zoo backbone or a stage classifier), on the CPU, in eval.
        logits: its validation logits (N, classes).
        labels: the validation labels (N,).
        report: extra fields for the per-class report (e.g. each stage's accuracy).
        params: extra MLflow params (e.g. the stage a stage probe kept).
        artifacts: JSON artifacts to log, by file name.
    """

    model: nn.Module
    logits: np.ndarray
    labels: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class: which units train per epoch, their optimizer groups, and the default plan (images, all units
    that the strategy trains).

    Args:
        cfg: the recipe's ``strategy`` section (:class:`transfer.recipe.StrategyConfig`).
        reason: why this strategy (``auto`` fills it in).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one sentence for people choosing a strategy (the web page shows it)
    setting: ClassVar[str] = "strategy.name"  # the recipe key whose value :meth:`validate` checks
    logged: ClassVar[dict[str, str]] = {}  # MLflow param -> the ``strategy`` setting it reports
    trains_batchnorm: ClassVar[bool] = True  # BatchNorm in train mode needs two or more images per batch
    default_epochs: ClassVar[int] = 5  # when the recipe sets no trainer.max_epochs
    uses_features: bool = False  # trains on cached features instead of images

    def __init__(self, cfg: Any, reason: str = "set in the recipe") -> None:
        self.cfg = cfg
        self.reason = reason
        self.units: Units | None = None
        self._trainable: set[str] = set()

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        """Raise the recipe's one-line error when its settings for this strategy cannot work together (called while
        the recipe is validated, when it names this strategy)."""
        if cls.trains_batchnorm and recipe.data.batch_size < 2:
            raise recipe.error(
                "data.batch_size",
                f"{recipe.data.batch_size} image per batch cannot train BatchNorm layers ({recipe.strategy.name} "
                "fine-tunes the backbone); use 2 or more, or strategy linear_probe",
            )

    # -- which units train -------------------------------------------------------------------------------------
    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        """Names of the units that train during ``epoch``: ``stage{i}``, ``head``, ``classifier``."""
        raise NotImplementedError

    def ever_trainable(self, n_stages: int) -> set[str]:
        """Every unit that trains at some epoch (those get optimizer parameter groups)."""
        return self.trainable_at(10**9, n_stages)

    def validate(self, n_stages: int) -> None:
        """Raise :class:`ValueError` when the settings do not fit a backbone with ``n_stages`` stages."""

    def setup(self, model: nn.Module, epoch: int = 0) -> None:
        """Split ``model`` into units and set ``requires_grad`` for ``epoch`` (call once, before the optimizer)."""
        self.units = Units.of(model)
        self.validate(self.units.num_stages)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> bool:
        """Apply the trainable set of ``epoch`` (``requires_grad`` and eval mode); True when it changed."""
        assert self.units is not None, "call setup(model) first"
        wanted = self.trainable_at(epoch, self.units.num_stages)
        changed = wanted != self._trainable
        for name, modules in self.units.modules().items():
            for p in unique_params(modules):
                p.requires_grad_(name in wanted)
        self._trainable = wanted
        self.apply_eval()
        return changed

    def apply_eval(self) -> None:
        """Put frozen units in eval mode (their BatchNorm statistics must not move); trainable ones keep theirs."""
        if self.units is None:
            return
        for name, modules in self.units.modules().items():
            if name not in self._trainable:
                for m in modules:
                    m.eval()

    def rebind(self, model: nn.Module) -> None:
        """Find the units again after modules were swapped inside ``model`` (DDP's BatchNorm sync replaces every
        BatchNorm when training starts); the trainable set and eval modes carry over."""
        self.units = Units.of(model)
        self.apply_eval()

    def pending_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen now that train at a later epoch (``gradual``): DDP must register them from the start."""
        assert self.units is not None
        ever = self.ever_trainable(self.units.num_stages)
        modules = self.units.modules()
        return [p for name in sorted(ever - self._trainable) for p in unique_params(modules.get(name, []))]

    @property
    def trainable_units(self) -> set[str]:
        """The units training now."""
        return set(self._trainable)

    # -- optimizer -----------------------------------------------------------------------------------------------
    def lr_scale(self, unit: str) -> float:
        """Learning-rate multiplier of a unit: the head at 1, the backbone's stages at ``optim.backbone_lr_mult``
        (fastai's discriminative rates), set by :meth:`set_optim` (1 until then)."""
        return self._backbone_mult if unit.startswith("stage") else 1.0

    def set_optim(self, optim: Any) -> None:
        """Take the recipe's ``optim`` section (the backbone's rate multiple)."""
        self._backbone_mult = float(optim.backbone_lr_mult)

    _backbone_mult: float = 1.0

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one (or two: decay / no decay) per unit that ever trains."""
        assert self.units is not None
        ever = self.ever_trainable(self.units.num_stages)
        groups = []
        for name, modules in self.units.modules().items():
            if name in ever:
                groups += param_group(name, unique_params(modules), lr * self.lr_scale(name), weight_decay)
        return [g for g in groups if g["params"]]

    def count_params(self, model: nn.Module) -> tuple[int, int]:
        """(parameters that ever train, all parameters of ``model``)."""
        total = sum(p.numel() for p in model.parameters())
        if self.units is None:
            return sum(p.numel() for p in model.parameters() if p.requires_grad), total
        modules = self.units.modules()
        ever = self.ever_trainable(self.units.num_stages)
        return sum(p.numel() for name in ever for p in unique_params(modules[name])), total

    def describe(self) -> dict[str, Any]:
        """MLflow params that say what this strategy does (its name, why, and its :attr:`logged` settings)."""
        return {
            "strategy": self.name,
            "strategy_reason": self.reason,
            **{param: getattr(self.cfg, key) for param, key in self.logged.items()},
        }

    # -- building and finalising ---------------------------------------------------------------------------------
    def prepare_model(self, job: Any) -> None:
        """A fresh classifier, then the units and their trainable set; a setting that does not fit the backbone is
        a recipe error on :attr:`setting`."""
        init_head(job.model.get_classifier())
        try:
            self.setup(job.model)
        except ValueError as exc:
            raise job.recipe.error(self.setting, str(exc)) from exc

    def classifier_module(self, job: Any, **kwargs: Any) -> ClassifierModule:
        """The LightningModule that trains ``job.model`` under this strategy (``kwargs``: features, norm...)."""
        self.set_optim(job.recipe.optim)
        return ClassifierModule(
            job.model,
            self,
            job.num_classes,
            optim=job.recipe.optim,
            batch_size=job.recipe.data.batch_size,
            class_weights=job.class_weights(),
            **kwargs,
        )

    def build(self, job: Any) -> Plan:
        """The default plan: the backbone trains on images from the job's data module."""
        from transfer.trainer import one_process  # the trainer module imports the recipe, which imports strategies

        self.prepare_model(job)
        # Channels-last memory: on a GPU always (tensor cores under mixed precision), on the CPU when the network
        # gives the same answers in it (oneDNN trains 1.35-1.6x faster: transfer.layout) and trains in one process
        # (DDP needs the same layout on every rank, and the check's float tolerance could differ between them).
        size = tuple(int(v) for v in job.data_config["input_size"])
        fast = job.on_gpu or (one_process(job.recipe) and try_channels_last(job.model, size))
        module = self.classifier_module(job, channels_last=fast)
        return Plan(module, {"datamodule": job.dm}, *self.count_params(job.model))

    def finalise(self, job: Any, plan: Plan) -> Final:
        """The trained backbone and its logits on the validation images (with the recipe's test-time
        augmentation, as the registered model will run it)."""
        module = plan.module.cpu().eval()
        job.model.to(memory_format=torch.contiguous_format)
        logits, labels = module.predict_logits(job.dm.eval_loader("val"), tta=job.recipe.data.tta)
        return Final(job.model.eval(), logits.numpy(), labels.numpy())


def image_logits(model: nn.Module, job: Any) -> tuple[np.ndarray, np.ndarray]:
    """A deployable model's logits on the validation images, with the recipe's test-time augmentation."""
    logits, labels = predict_logits(model.eval(), job.dm.eval_loader("val"), job.recipe.data.tta)
    return logits.numpy(), labels.numpy()
