"""Optimizers, their parameter groups and the learning-rate schedule.

A registry of optimizers by recipe name (:data:`OPTIMIZERS`: ``sgd``, ``adamw``, ``lars``), parameter groups that
keep weight decay off biases and normalisation parameters (:func:`param_group`), the linear scaling rule
(:func:`effective_lr`) and the per-step warmup + cosine schedule (:func:`warmup_cosine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

BASE_BATCH = 256  # the linear scaling rule's reference batch (Goyal et al. 2017)


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg 2017, arXiv:1708.03888).

    Each parameter tensor gets its own *trust ratio* ``eta * ||w|| / (||g|| + weight_decay * ||w||)``, which scales
    the (weight-decayed) gradient before SGD with momentum::

        local_lr = eta * ||w|| / (||g|| + wd * ||w||)
        v = momentum * v + local_lr * (g + wd * w)
        w = w - lr * v

    Parameter groups with ``lars_exclude=True`` (biases and normalisation parameters, as in the paper's follow-ups)
    skip the trust ratio and weight decay and take plain momentum SGD steps. A tensor whose weight or gradient norm
    is zero also gets a ratio of 1.

    Args:
        params: parameters or parameter groups.
        lr: global learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty folded into the gradient.
        eta: the trust coefficient (0.001 in the paper).
        eps: added to the denominator.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 1e-9,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} momentum={momentum} wd={weight_decay} eta={eta}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, eps, mom, lr = group["weight_decay"], group["eta"], group["eps"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue  # frozen (gradual unfreezing): no update, no decay
                g = p.grad
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        eta * w_norm / (g_norm + wd * w_norm + eps),
                        torch.ones_like(w_norm),
                    )
                    g = (g + wd * p) * trust
                state = self.state[p]
                if mom > 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(mom).add_(g)
                    g = buf
                p.add_(g, alpha=-lr)
        return loss


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer the recipe can name.

    Attributes:
        build: ``(groups, lr, weight_decay, momentum) -> Optimizer``.
        linear_scaling: whether ``scale_lr: auto`` applies the linear scaling rule to it. The rule (Goyal et al.
            2017) is for SGD-like steps; adaptive optimisers normalise the step size themselves, and scaling AdamW by
            ``batch / 256`` only starves small batches (measured: a linear probe at batch 64 trained at 2.5e-4
            instead of 1e-3 lost 3 points; bench/results/defaults_study.md).
    """

    build: Callable[[list[dict[str, Any]], float, float, float], Optimizer]
    linear_scaling: bool


def fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether PyTorch's fused optimizer kernels can take these parameters (floating point, on a device they support).

    One fused kernel per group instead of a Python loop or a dozen foreach kernels per group: an AdamW step over
    MobileNetV2's parameters took 2.7-3.2 ms fused against 17-23 ms looped or foreach on 2 CPU cores, SGD 1.7-2.3 ms
    against 6-8 ms; the updates are the same to rounding.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        lambda groups, lr, wd, mom: torch.optim.SGD(
            groups, lr=lr, momentum=mom, nesterov=mom > 0, weight_decay=wd, fused=fusable(groups)
        ),
        linear_scaling=True,
    ),
    "adamw": OptimizerSpec(
        lambda groups, lr, wd, mom: torch.optim.AdamW(
            groups, lr=lr, betas=(mom, 0.999), weight_decay=wd, fused=fusable(groups)
        ),
        linear_scaling=False,
    ),
    "lars": OptimizerSpec(
        lambda groups, lr, wd, mom: LARS(groups, lr=lr, momentum=mom, weight_decay=wd), linear_scaling=True
    ),
}


def scales_linearly(name: str, scale_lr: bool | str) -> bool:
    """Whether the linear scaling rule applies: ``scale_lr`` when it is a bool, the optimizer's policy for ``auto``."""
    return OPTIMIZERS[name].linear_scaling if scale_lr == "auto" else bool(scale_lr)


def effective_lr(lr: float, batch_size: int, world_size: int, scale_lr: bool) -> float:
    """The linear scaling rule: ``lr * batch_size * world_size / 256`` (world size = devices x nodes)."""
    return lr * batch_size * world_size / BASE_BATCH if scale_lr else lr


def build_optimizer(
    groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float
) -> Optimizer:
    """The optimizer ``name`` (:data:`OPTIMIZERS`: SGD with Nesterov momentum, AdamW with beta1 = momentum, LARS)
    over prepared parameter groups."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name].build(groups, lr, weight_decay, momentum)


def unique_params(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once, in order."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def param_group(name: str, params: Sequence[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """One or two optimizer groups for ``params``: weights with decay, and ``name.no_decay`` for biases and
    normalisation parameters (1-d), which decay only hurts (Goyal et al. 2017) and LARS leaves alone."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name, "lars_exclude": False})
    if no_decay:
        groups.append(
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay", "lars_exclude": True}
        )
    return groups
