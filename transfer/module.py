"""The LightningModules: a classifier over images (or cached features) and the per-stage probes.

Both share the optimizers (SGD, AdamW, :class:`LARS`), the per-step warmup + cosine schedule, the linear scaling
rule and the validation metrics (accuracy, top-5 accuracy when there are more than 5 classes, macro F1; the
confusion matrix is made for the final model by :mod:`transfer.tracking`). Metric names are exactly
``train_loss``, ``val_loss``, ``val_acc``, ``val_f1`` (and ``val_acc_top5``, ``lr``).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from transfer.errors import UserError
from transfer.layout import as_layout, channels_last_pass
from transfer.optim import build_optimizer, effective_lr, param_group, scales_linearly, warmup_cosine

_log = logging.getLogger(__name__)

FINDER_START_LR = 1e-3  # the base rate a module holds until the LR finder (lr: auto) replaces it


class DivergedError(UserError):
    """Training produced a non-finite loss (or weights)."""


def init_head(classifier: nn.Module) -> None:
    """Re-initialise a new classifier small (truncated normal, std 0.01; zero bias), as MAE's linear probe does.

    Zoo classifiers come with their architecture's init, which for some families gives logits of several units on
    pretrained features: the first epochs would only undo that.
    """
    if isinstance(classifier, nn.Linear):
        nn.init.trunc_normal_(classifier.weight, std=0.01)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)


def feature_stats(x: torch.Tensor, floor: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of training features (a probe trains on standardised features).

    The std is floored at ``floor`` times the average std: a unit that is (almost) dead on the training images
    but fires on others would otherwise be amplified a million times and swamp the logits.
    """
    x = x.float()
    std = x.std(0, unbiased=False)
    return x.mean(0), std.clamp(min=max(1e-6, floor * float(std.mean())))


BN_MEMORY = 0.05  # the weight a BatchNorm's running statistics still give to batches older than one epoch


def set_batchnorm_memory(model: nn.Module, steps_per_epoch: float) -> None:
    """Let trained BatchNorm running statistics forget the pretraining data within about one epoch.

    With PyTorch's momentum 0.1, running statistics need ~30 steps to leave the ImageNet values behind; a small
    dataset trains for fewer (38 images at batch 32: 2 steps an epoch), and evaluation then mixes ImageNet statistics
    with fine-tuned weights: measured, ``partial`` on 3 digit classes ended at chance (0.33) with the training loss
    at 0.05. The momentum is raised so that what is older than an epoch weighs :data:`BN_MEMORY`; never lowered
    below PyTorch's 0.1. Frozen BatchNorm layers are in eval mode and do not move either way.
    """
    if not steps_per_epoch or steps_per_epoch == float("inf"):
        return
    momentum = max(0.1, 1.0 - BN_MEMORY ** (1.0 / steps_per_epoch))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = momentum


@torch.no_grad()
def fold_standardization(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold ``(x - mean) / std`` into ``linear`` so that it takes raw features: ``W' = W / std``, ``b' = b - W' mean``.

    A probe trained on standardised features deploys as one plain linear layer.
    """
    w = linear.weight / std.to(linear.weight)
    b = linear.bias - w @ mean.to(w) if linear.bias is not None else None
    linear.weight.copy_(w)
    if b is not None:
        linear.bias.copy_(b)


class _Base(L.LightningModule):
    """Optimizer, schedule, loss and the running train loss shared by both modules."""

    def __init__(
        self,
        num_classes: int,
        *,
        optim: Any,
        batch_size: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.optim_cfg = optim
        self.batch_size = batch_size
        self.register_buffer("class_weights", class_weights.float() if class_weights is not None else None)
        # The base learning rate (before the strategy's per-group multiples and the scaling rule): Lightning's LR
        # finder sets this attribute when the recipe says lr: auto.
        self.lr: float = optim.lr if isinstance(optim.lr, float | int) else FINDER_START_LR
        self.lr_effective: float | None = None
        self._loss_sum: torch.Tensor | float = 0.0  # this epoch's summed loss x batch size, on the device
        self._loss_n = 0

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the recipe's label smoothing and class weights; ``y`` may be soft (mixup, cutmix)."""
        logits = logits.float()
        if y.ndim == 2:  # soft targets: the smoothing is in them already
            per_sample = -(y * F.log_softmax(logits, dim=1)).sum(1)
            weights = y @ self.class_weights if self.class_weights is not None else None
            return (per_sample * weights).sum() / weights.sum() if weights is not None else per_sample.mean()
        return F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=self.optim_cfg.label_smoothing)

    def _check_finite(self, loss: torch.Tensor) -> None:
        """A loss that is NaN or infinite ends the fit with one line: a diverged run is not a model."""
        if not bool(torch.isfinite(loss.detach())):
            lr = self.lr_effective if self.lr_effective is not None else self.lr
            raise DivergedError(
                f"the training loss became {float(loss)} by epoch {self.current_epoch}, step {self.global_step} "
                f"(learning rate {lr:.3g}): lower optim.lr, or check the data; nothing was registered"
            )

    def _reads_loss_now(self, batch_idx: int) -> bool:
        """Whether this step reads the running loss back to the host: every ``log_every_n_steps`` steps (Lightning's
        logging interval) and at an epoch's last batch, so that the epoch's trackers always see its mean."""
        if self._trainer is None:
            return True
        done = batch_idx + 1
        return done % max(1, self.trainer.log_every_n_steps) == 0 or done >= self.trainer.num_training_batches

    def _track_train_loss(self, loss: torch.Tensor, n: int, batch_idx: int) -> None:
        """Add a step's loss to the epoch's running mean; at the reading steps (:meth:`_reads_loss_now`) check that
        it is finite and log it as ``train_loss``.

        The sum stays on the device between readings: a reading (``float``, ``isfinite``, and Lightning's
        ``.item()`` of a progress-bar metric) makes a GPU finish every queued kernel before the next step is
        queued (a per-step finite check and running mean would read it twice a step). A NaN or infinite loss
        poisons the sum, so it is still caught, at most ``log_every_n_steps - 1`` steps late and always before the
        epoch's validation.
        """
        self._loss_sum = self._loss_sum + loss.detach().float() * n
        self._loss_n += n
        if not self._reads_loss_now(batch_idx):
            return
        mean = self._loss_sum / self._loss_n
        self._check_finite(mean)
        # A running mean over the epoch so far: at validation time (after the last batch) it is the epoch's mean,
        # so progress readers and the per-epoch tracker see this epoch's train_loss, not the last one's.
        # sync_dist: under DDP the logged value is the mean over ranks (a no-op on one device).
        self.log("train_loss", mean, on_step=True, on_epoch=False, prog_bar=True, batch_size=n, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        raise NotImplementedError

    def head_scale(self) -> float:
        """The head's learning rate as a multiple of the base rate (probes train faster than fine-tunes)."""
        return 1.0

    def head_lr_factor(self) -> float:
        """The head's effective rate divided by the base rate :attr:`lr` (head multiple, scaling rule)."""
        cfg = self.optim_cfg
        world = max(1, int(self.trainer.world_size)) if self._trainer is not None else 1
        return self.head_scale() * effective_lr(1.0, self.batch_size, world, scales_linearly(cfg.name, cfg.scale_lr))

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        world = max(1, int(self.trainer.world_size)) if self._trainer is not None else 1
        lr = effective_lr(self.lr, self.batch_size, world, scales_linearly(cfg.name, cfg.scale_lr))
        self.lr_effective = lr
        optimizer = build_optimizer(
            self.param_groups(lr, cfg.weight_decay), cfg.name, lr, cfg.weight_decay, cfg.momentum
        )
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        steps_per_epoch = total / max_epochs if max_epochs and max_epochs > 0 else total
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if warmup >= total:
            _log.warning("optim.warmup_epochs covers the whole run: the learning rate never reaches its peak")
        scheduler = LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _log_lr(self) -> None:
        # Once per epoch (at validation end, before the epoch's trackers read the metrics): per-step logging
        # would cost more than it tells.
        if self._trainer is None or not self.trainer.optimizers:
            return
        groups = self.trainer.optimizers[0].param_groups
        lrs = [g["lr"] for g in groups if str(g.get("name", "")).split(".")[0] == "classifier"]
        # sync_dist: every rank has the same rate (the mean is that rate); Lightning warns on each DDP fit without it.
        self.log("lr", float(lrs[0] if lrs else groups[-1]["lr"]), sync_dist=True)


class ClassifierModule(_Base):
    """A backbone fine-tuned by a :class:`~transfer.strategies.Strategy`, on images or on cached features.

    Args:
        model: the zoo backbone, its classifier already sized for ``num_classes``.
        strategy: set up on ``model`` (``strategy.setup(model)``).
        num_classes: number of classes.
        optim: a :class:`transfer.recipe.OptimConfig`.
        batch_size: per-device batch size (for the linear scaling rule).
        class_weights: loss weights per class, or None.
        features: batches are ``(pre_logits features, labels)`` instead of images: only the classifier runs.
        channels_last: use channels-last memory format (set on GPU; faster convolutions with mixed precision).
        feature_norm: ``(mean, std)`` of the pre-logits features: the classifier sees them standardised (a probe);
            :meth:`fold_feature_norm` folds it into the classifier for deployment.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Any,
        num_classes: int,
        *,
        optim: Any,
        batch_size: int,
        class_weights: torch.Tensor | None = None,
        features: bool = False,
        channels_last: bool = False,
        feature_norm: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(num_classes, optim=optim, batch_size=batch_size, class_weights=class_weights)
        self.model = model
        self.register_buffer("feat_mean", feature_norm[0].float() if feature_norm else None)
        self.register_buffer("feat_std", feature_norm[1].float() if feature_norm else None)
        self.strategy = strategy
        self.features = features
        self.channels_last = channels_last
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes > 5 else None
        self.mixer = _mixer(optim, num_classes) if not features else None

    def train(self, mode: bool = True) -> ClassifierModule:
        # Lightning calls train() at every epoch start and after each validation: frozen units go back to eval.
        super().train(mode)
        if mode:
            self.strategy.apply_eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.features and self.feat_mean is None:
            return self.model(x)
        if not self.features:  # a probe over images: the frozen trunk's pre-logits, standardised
            x = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if self.feat_mean is not None:
            x = (x - self.feat_mean) / self.feat_std
        drop = getattr(self.model, "drop_rate", 0.0) or 0.0
        if drop > 0:
            x = F.dropout(x, p=drop, training=self.training)
        return self.model.get_classifier()(x)

    def fold_feature_norm(self) -> None:
        """Fold the feature standardisation into the classifier (the model then takes raw features)."""
        if self.feat_mean is not None:
            fold_standardization(self.model.get_classifier(), self.feat_mean, self.feat_std)
            self.feat_mean, self.feat_std = None, None

    def setup(self, stage: str) -> None:
        # Before the Trainer's strategy wraps the model: DDP lays out its gradient buckets from the parameters'
        # strides when it is built, and a conversion after that copies every gradient into the bucket at each step.
        if self.channels_last and not self.features:
            self.model.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        # Under DDP Lightning has just swapped every BatchNorm for a synchronised one: the strategy must hold the
        # new modules, or frozen ones would slip back into train mode.
        self.strategy.rebind(self.model)
        if not self.features:
            set_batchnorm_memory(self.model, self.trainer.num_training_batches)

    def ddp_pending_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen now that unfreeze later (see :class:`transfer.distributed.TransferDDPStrategy`)."""
        return [] if self.features else self.strategy.pending_parameters()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and not self.features and isinstance(batch, list | tuple) and batch[0].ndim == 4:
            return [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
        return batch

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        changed = self.strategy.set_epoch(self.current_epoch)
        self.train()  # units that just unfroze leave eval mode; frozen ones stay in it
        if changed and self.current_epoch > 0:
            _log.info("epoch %d: training %s", self.current_epoch, ", ".join(sorted(self.strategy.trainable_units)))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return self.strategy.param_groups(lr, weight_decay)

    def head_scale(self) -> float:
        return self.strategy.lr_scale("classifier")

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / cutmix (timm's ``Mixup``, the recipe's alphas and label smoothing): mixed images, soft targets.
        Unchanged without them, or for a last batch of one."""
        if self.mixer is None or len(y) < 2:
            return x, y
        if len(y) % 2:  # timm mixes pairs within the batch
            x, y = x[:-1], y[:-1]
        return self.mixer(x, y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = self.mix(*batch)
        loss = self.loss(self(x), y)
        self._track_train_loss(loss, len(y), batch_idx)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log(
            "val_loss",
            self.loss(logits, y),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        if self.val_top5 is not None:
            self.val_top5.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        self._log_lr()
        # torchmetrics' compute() gathers every rank's counts: the values are global already.
        self.log("val_acc", self.val_acc.compute(), prog_bar=True, sync_dist=True)
        self.log("val_f1", self.val_f1.compute(), sync_dist=True)
        self.val_acc.reset()
        self.val_f1.reset()
        if self.val_top5 is not None:
            self.log("val_acc_top5", self.val_top5.compute(), sync_dist=True)
            self.val_top5.reset()

    def predict_logits(self, loader: Any, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) over a loader, in eval mode (``tta``: see :func:`predict_logits`)."""
        was = self.training
        try:
            return predict_logits(self.eval(), loader, tta, self.device)
        finally:
            self.train(was)


TTA = ("none", "hflip")


def predict_logits(
    model: Any, loader: Any, tta: str = "none", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of ``model`` (in eval mode) over a loader of ``(inputs, labels)``; ``tta="hflip"`` averages
    the logits of each image and its mirror (test-time augmentation; images only). Images run channels-last on the
    CPU (:mod:`transfer.layout`)."""
    out, labels = [], []
    with channels_last_pass(model, loader, device) as (batches, used), torch.inference_mode():
        for x, y in batches:
            x = as_layout(x.to(device), used)
            logits = model(x).float()
            if tta == "hflip":
                logits = (logits + model(as_layout(x.flip(-1), used)).float()) / 2
            out.append(logits.cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(out), torch.cat(labels)


def _mixer(optim: Any, num_classes: int) -> Any:
    """timm's ``Mixup`` for the recipe's ``optim.mixup`` / ``optim.cutmix`` alphas, or None when both are 0."""
    if not (optim.mixup or optim.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=optim.mixup,
        cutmix_alpha=optim.cutmix,
        label_smoothing=optim.label_smoothing,
        num_classes=num_classes,
    )


class StageProbeModule(_Base):
    """Linear probes on the pooled features of every stage, trained together on cached features.

    Batches are ``(stage0, stage1, ..., labels)``. ``val_acc`` is the best stage's accuracy (``val_loss`` and
    ``val_f1`` are that stage's too); each stage's accuracy is logged as ``val_acc_stage{i}``.

    Args:
        dims: width of each stage's pooled features.
        num_classes: number of classes.
        stats: ``(mean, std)`` of each stage's training features: the probes see standardised features (stages
            differ in scale by orders of magnitude); :meth:`deployable_probe` folds it back.
        optim: a :class:`transfer.recipe.OptimConfig`.
        batch_size: per-device batch size.
        class_weights: loss weights per class, or None.
        lr_scale: the probes' learning rate is ``optim.lr`` times this.
    """

    def __init__(
        self,
        dims: list[int],
        num_classes: int,
        *,
        optim: Any,
        batch_size: int,
        class_weights: torch.Tensor | None = None,
        stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        lr_scale: float = 1.0,
    ) -> None:
        super().__init__(num_classes, optim=optim, batch_size=batch_size, class_weights=class_weights)
        self.lr_scale = lr_scale
        self.dims = list(dims)
        stats = stats or [(torch.zeros(d), torch.ones(d)) for d in dims]
        for i, (mean, std) in enumerate(stats):
            self.register_buffer(f"mean{i}", mean.float())
            self.register_buffer(f"std{i}", std.float())
        self.probes = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)
        for probe in self.probes:
            init_head(probe)
        self.accs = nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in dims)
        self.f1s = nn.ModuleList(MulticlassF1Score(num_classes, average="macro") for _ in dims)
        self._val_loss = torch.zeros(len(dims))
        self._val_n = 0
        self.last_stage_accs: list[float] = []

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            probe((f - getattr(self, f"mean{i}")) / getattr(self, f"std{i}"))
            for i, (probe, f) in enumerate(zip(self.probes, feats))
        ]

    def deployable_probe(self, stage: int) -> nn.Linear:
        """A copy of the probe of ``stage`` that takes raw pooled features (standardisation folded in)."""
        import copy

        probe = copy.deepcopy(self.probes[stage]).cpu()
        fold_standardization(probe, getattr(self, f"mean{stage}").cpu(), getattr(self, f"std{stage}").cpu())
        return probe

    def head_scale(self) -> float:
        return self.lr_scale

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = []
        for i, probe in enumerate(self.probes):
            groups += param_group(f"probe{i}", list(probe.parameters()), lr * self.lr_scale, weight_decay)
        for g in groups:  # the lr logger looks for the classifier group
            if g["name"] == f"probe{len(self.probes) - 1}":
                g["name"] = "classifier.last_probe"
        return groups

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        *feats, y = batch
        losses = [self.loss(logits, y) for logits in self(feats)]
        loss = torch.stack(losses).sum()
        self._track_train_loss(loss / len(losses), len(y), batch_idx)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_loss = torch.zeros(len(self.dims))
        self._val_n = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        *feats, y = batch
        for i, logits in enumerate(self(feats)):
            self._val_loss[i] += float(self.loss(logits, y)) * len(y)
            self.accs[i].update(logits, y)
            self.f1s[i].update(logits, y)
        self._val_n += len(y)

    def on_validation_epoch_end(self) -> None:
        self._log_lr()
        accs = [float(m.compute()) for m in self.accs]
        f1s = [float(m.compute()) for m in self.f1s]
        for m in [*self.accs, *self.f1s]:
            m.reset()
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))
        # The losses are per-rank sums: add them up over ranks (a no-op on one device).
        sums = torch.cat([self._val_loss, torch.tensor([float(self._val_n)])]).to(self.device)
        if self._trainer is not None:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        val_loss, val_n = sums[:-1].cpu(), float(sums[-1])
        self.last_stage_accs = accs
        for i, a in enumerate(accs):
            self.log(f"val_acc_stage{i}", a)
        self.log("val_acc", accs[best], prog_bar=True)
        self.log("val_f1", f1s[best])
        self.log("val_loss", float(val_loss[best]) / max(1.0, val_n), prog_bar=True)
        self.log("best_stage", float(best))
