"""Synchronised BatchNorm for DDP on any device, and the Lightning plugin that installs it.

Why this exists: with small per-device batches, each DDP process normalises with the statistics of its own few
samples, which is noisier than (and trains differently from) one process seeing the whole batch. The fix is
synchronised BatchNorm, but ``torch.nn.SyncBatchNorm`` (and so Lightning's ``sync_batchnorm=True``) refuses CPU
tensors ("expected input tensor to be on GPU or XPU ..."), so CPU runs with gloo cannot use it.
:class:`AllReduceBatchNorm` computes the global statistics with one autograd-aware all-reduce instead; it works on
any device and backend, and gives the same running statistics and gradients as one process on the concatenated
batch.

Conversion swaps the class of each BatchNorm module in place rather than building a new module, as
``SyncBatchNorm.convert_sync_batchnorm`` does. Built anew, a BatchNorm subclass with its own forward loses it: the
zoo's ``BatchNormAct2d`` (MobileNets, DenseNet) would become a bare BatchNorm whose ``act`` child is never called,
and the model would silently lose its activations. Swapping the class keeps the subclass's forward, the parameters,
buffers, hooks, ``requires_grad`` and ``training`` flags (frozen BatchNorm stays in eval mode); the state-dict keys
do not change. A converted model is for training: revert it (``BatchNormSync`` does, at teardown) before pickling
the whole module; state dicts need no reverting.

Usage::

    trainer = lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2, plugins=[BatchNormSync()])

On CUDA, :class:`BatchNormSync` uses ``torch.nn.SyncBatchNorm``'s fused kernels in the same way.

:class:`TransferDDPStrategy` is Lightning's DDP made safe for stages that unfreeze mid-run, and :class:`RankSync`
hands rank zero's MLflow run id to the other ranks and checks that the replicas end equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.plugins import LayerSync
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "AllReduceBatchNorm",
    "BatchNormSync",
    "RankSync",
    "TransferDDPStrategy",
    "convert_batchnorm",
    "revert_batchnorm",
]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of a group, with the gradient summed back over the ranks.

    This is what ``torch.distributed.nn.functional.all_reduce`` does; torch 2.15 deprecates that function (a
    ``FutureWarning`` on every call site), and the replacement it suggests is private and has autograd only in recent
    releases, so the six lines live here.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def _world_size(group: Any) -> int:
    """Processes in ``group`` (the default group if None); 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the batch concatenated over all processes.

    In training mode, with an initialised process group of more than one process, the per-channel sum, sum of
    squares and count are all-reduced in one call, the input is normalised with the global mean and (biased)
    variance, and the running statistics are updated as ``nn.BatchNorm2d`` would update them on the concatenated
    batch (unbiased variance from the global count; ``momentum=None`` is the cumulative average). Gradients flow
    across processes through the all-reduce, as with ``torch.nn.SyncBatchNorm``. Statistics are computed in float32
    whatever the input dtype (autocast included); the output has the input's dtype.

    In eval mode, or without a process group (or with one process), it is exactly ``nn.BatchNorm2d``'s
    ``F.batch_norm``. Unlike ``SyncBatchNorm`` it accepts tensors on any device; on CUDA, ``SyncBatchNorm`` is faster.

    Args:
        num_features: Channels (``C`` of an ``(N, C, ...)`` input).
        eps: Added to the variance for numerical stability.
        momentum: Weight of the batch statistics in the running ones; None for a cumulative average.
        affine: Learn a per-channel scale and shift.
        track_running_stats: Keep running mean and variance (used in eval mode).
        process_group: Group whose processes share statistics; None for the whole world.
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and buffers.
        bias: Learn the shift (only with ``affine``).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``input`` of shape ``(N, C, ...)``; see the class docstring for which statistics are used."""
        if self.training and _world_size(self.process_group) > 1:
            self._check_input_dim(input)
            return self._normalize_global(input, lambda t: _AllReduceSum.apply(t, self.process_group))
        return super().forward(input)

    def _normalize_global(
        self, input: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Training-mode BatchNorm with the statistics of ``all_reduce`` (a sum over the processes) of local ones."""
        x = input.float()
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.square().sum(dims), x.new_full((1,), x.numel() // C)])
        total = all_reduce(local)
        count = total[2 * C]
        mean = total[:C] / count
        var = (total[C : 2 * C] / count - mean.square()).clamp_min(0)  # biased: what BatchNorm normalises with
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.float().view(shape)
        if self.bias is not None:
            y = y + self.bias.float().view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), int(count.item()), input.shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int, size: torch.Size) -> None:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


_SYNCED: dict[tuple[type[_BatchNorm], type[_BatchNorm]], type[_BatchNorm]] = {}


def _synced_class(plain: type[_BatchNorm], kernel: type[_BatchNorm]) -> type[_BatchNorm]:
    """``plain`` with its BatchNorm arithmetic taken from ``kernel``; a subclass's own forward still runs around it.

    ``class AllReduceBatchNorm2d(nn.BatchNorm2d, AllReduceBatchNorm)``: ``BatchNorm2d`` brings its input check,
    ``AllReduceBatchNorm`` the forward; for ``BatchNormAct2d``, its forward's ``super().forward`` reaches the kernel.
    """
    key = (plain, kernel)
    if key not in _SYNCED:
        name = kernel.__name__.removesuffix("BatchNorm") + plain.__name__
        _SYNCED[key] = type(name, (plain, kernel), {"__module__": __name__, "_plain_class": plain})
    return _SYNCED[key]


def _convert(module: nn.Module, kernel: type[_BatchNorm], process_group: Any | None) -> nn.Module:
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, (AllReduceBatchNorm, nn.SyncBatchNorm)):
            m.__class__ = _synced_class(type(m), kernel)
            m.process_group = process_group
    return module


def convert_batchnorm(module: nn.Module, process_group: Any | None = None) -> nn.Module:
    """Make every BatchNorm in ``module`` (itself included) an :class:`AllReduceBatchNorm`, in place.

    Each module keeps its parameters, buffers, ``requires_grad`` and ``training`` flags, and the forward of its own
    class (``BatchNormAct2d`` still applies its activation); ``isinstance(m, nn.BatchNorm2d)`` still holds. Modules
    that already synchronise (``AllReduceBatchNorm``, ``SyncBatchNorm``) are left as they are.

    Args:
        module: A model, or a single BatchNorm module.
        process_group: Group whose processes share statistics; None for the whole world.

    Returns:
        ``module`` itself, converted.
    """
    return _convert(module, AllReduceBatchNorm, process_group)


def revert_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_batchnorm` (and the CUDA conversion of :class:`BatchNormSync`), in place.

    Every converted module gets its original class back (``nn.BatchNorm2d``, ``BatchNormAct2d``, ...). Modules built
    as ``AllReduceBatchNorm`` or ``nn.SyncBatchNorm`` themselves become ``nn.BatchNorm2d`` (their dimensionality is
    not recorded; the zoo's CNNs are 2-D). Weights, buffers and flags are untouched.

    Args:
        module: A model, or a single BatchNorm module.

    Returns:
        ``module`` itself, with plain BatchNorm only.
    """
    for m in module.modules():
        if isinstance(m, (AllReduceBatchNorm, nn.SyncBatchNorm)):
            m.__class__ = getattr(type(m), "_plain_class", nn.BatchNorm2d)
            m.__dict__.pop("process_group", None)
    return module


class BatchNormSync(LayerSync):
    """Lightning plugin: synchronised BatchNorm for DDP, on CPU (gloo) as on GPU.

    Pass it instead of ``sync_batchnorm=True`` (Lightning forbids both)::

        lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2, plugins=[BatchNormSync()])

    ``DDPStrategy.setup`` calls :meth:`apply` when fitting (before it moves the model to its device, so the target
    device is read from the trainer's strategy), and ``teardown`` calls :meth:`revert`.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        """Synchronise every BatchNorm: ``SyncBatchNorm``'s fused kernels on CUDA, :class:`AllReduceBatchNorm` else.

        Args:
            model: The LightningModule (or any module).

        Returns:
            ``model``, converted in place.
        """
        kernel = nn.SyncBatchNorm if _target_device(model).type == "cuda" else AllReduceBatchNorm
        return _convert(model, kernel, None)

    def revert(self, model: nn.Module) -> nn.Module:
        """Give every BatchNorm its plain class back, for saving and serving.

        Args:
            model: The LightningModule (or any module).

        Returns:
            ``model``, reverted in place.
        """
        return revert_batchnorm(model)


def _target_device(model: nn.Module) -> torch.device:
    """The device the model will train on: the trainer's root device when attached, else its parameters' device."""
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        return trainer.strategy.root_device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class TransferDDPStrategy(DDPStrategy):
    """Lightning's DDP, aware of stages that unfreeze during training (``gradual``).

    DDP registers, once, the parameters that require gradients when it wraps the model, and only those are
    averaged across ranks. A stage unfrozen at a later epoch would then train on each rank's own gradients and the
    replicas would drift apart. So while wrapping, the parameters the module reports from
    ``ddp_pending_parameters()`` are made trainable, and ``find_unused_parameters`` is switched on: until their
    milestone they get no gradient, and DDP must not wait for one.
    """

    def configure_ddp(self) -> None:
        """Wrap the model in DDP with every parameter that will ever train registered."""
        module = self.lightning_module
        pending = list(module.ddp_pending_parameters()) if hasattr(module, "ddp_pending_parameters") else []
        if pending:
            self._ddp_kwargs["find_unused_parameters"] = True
        for p in pending:
            p.requires_grad_(True)
        try:
            super().configure_ddp()
        finally:
            for p in pending:
                p.requires_grad_(False)

    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        # Built on the stream that runs the forwards, as plain PyTorch DDP is. Lightning 2.6 builds it on a side CUDA
        # stream (for whole-network CUDA graph capture, which a fit does not use), and every backward then crosses
        # streams: torch >= 2.10 warns that it "may incur unnecessary synchronization" (Lightning-AI/pytorch-lightning
        # #21567; Lightning's own fix, #21746, is in no release up to 2.6.6).
        return DistributedDataParallel(module=model, device_ids=self.determine_ddp_device_ids(), **self._ddp_kwargs)


class RankSync(Callback):
    """Shares rank zero's MLflow run id with every rank, and checks that the replicas agree when training ends.

    Attributes:
        run_id: set on rank zero before ``fit``; after ``setup`` every rank holds it.
    """

    def __init__(self) -> None:
        self.run_id = ""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.world_size > 1:
            self.run_id = trainer.strategy.broadcast(self.run_id, src=0)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # DDP keeps replicas equal by construction; if they are not, the model rank zero logs is one of several.
        if trainer.world_size <= 1:
            return
        with torch.no_grad():
            digest = torch.stack([p.detach().double().sum() for p in pl_module.parameters()]).sum()
        digests = trainer.strategy.all_gather(digest.to(trainer.strategy.root_device))
        if not torch.allclose(digests, digests[0], rtol=1e-9, atol=0.0):
            raise RuntimeError(f"DDP ranks diverged: parameter sums per rank {digests.tolist()}")
