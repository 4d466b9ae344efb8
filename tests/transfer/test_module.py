"""Optimizers, schedule, linear scaling rule, the probe's feature standardisation and the running training loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import quiet_trainer
from transfer.module import DivergedError, StageProbeModule, fold_standardization
from transfer.optim import LARS, build_optimizer, effective_lr, warmup_cosine
from transfer.recipe import OptimConfig


def test_lars_step_follows_the_trust_ratio_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 5))
    g = torch.randn(4, 5)
    w.grad = g.clone()
    lr, eta, wd = 0.5, 0.01, 0.1
    w0 = w.detach().clone()
    LARS([w], lr=lr, momentum=0.0, weight_decay=wd, eta=eta, eps=0.0).step()
    trust = eta * w0.norm() / (g.norm() + wd * w0.norm())
    assert torch.allclose(w.detach(), w0 - lr * trust * (g + wd * w0), atol=1e-6)


def test_lars_update_is_relative_to_the_weight_norm():
    # Without weight decay every tensor moves by lr * eta of its own norm, whatever its gradient's scale:
    # what lets LARS train layers with very different gradient magnitudes at one global rate.
    for scale in (1e-4, 1.0, 1e4):
        w = nn.Parameter(torch.randn(10, 10) * 3)
        w.grad = torch.randn(10, 10) * scale
        w0 = w.detach().clone()
        LARS([w], lr=1.0, momentum=0.0, eta=0.001).step()
        assert (w.detach() - w0).norm() / w0.norm() == pytest.approx(0.001, rel=1e-4)


def test_lars_excluded_groups_and_frozen_params():
    b = nn.Parameter(torch.ones(3))
    b.grad = torch.full((3,), 2.0)
    frozen = nn.Parameter(torch.ones(3))  # no grad: a frozen stage in gradual unfreezing
    opt = LARS([{"params": [b], "lars_exclude": True}, {"params": [frozen]}], lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()
    assert torch.allclose(b.detach(), torch.full((3,), 1.0 - 0.1 * 2.0))  # plain SGD step, no trust ratio, no decay
    assert torch.equal(frozen.detach(), torch.ones(3))
    b.grad = torch.full((3,), 2.0)
    opt.step()  # momentum: v = 0.9 * 2 + 2
    assert torch.allclose(b.detach(), torch.full((3,), 0.8 - 0.1 * 3.8))


def test_lars_trains_a_small_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = LARS(model.parameters(), lr=20.0, momentum=0.9, eta=0.001)
    for _ in range(200):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_warmup_then_cosine():
    f = warmup_cosine(warmup_steps=10, total_steps=110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))
    assert warmup_cosine(0, 100)(0) == 1.0


def test_linear_scaling_rule():
    assert effective_lr(0.1, batch_size=64, world_size=8, scale_lr=True) == pytest.approx(0.1 * 64 * 8 / 256)
    assert effective_lr(0.1, batch_size=64, world_size=8, scale_lr=False) == 0.1


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizers_keep_group_settings(name):
    p1, p2 = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3))
    groups = [
        {"params": [p1], "lr": 0.2, "weight_decay": 0.1, "name": "a"},
        {"params": [p2], "lr": 0.05, "weight_decay": 0.0, "name": "b"},
    ]
    opt = build_optimizer(groups, name, lr=1.0, weight_decay=0.3, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def _three_steps(name: str) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4))
    opt = build_optimizer(
        [{"params": [w], "lr": 0.1, "weight_decay": 0.05}], name, lr=0.1, weight_decay=0.05, momentum=0.9
    )
    for _ in range(3):
        w.grad = torch.sin(w.detach() * 3)
        opt.step()
    return opt, w.detach()


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_run_pytorchs_fused_kernels_with_the_same_updates(name, monkeypatch):
    fused, w_fused = _three_steps(name)
    monkeypatch.setattr("transfer.optim.fusable", lambda groups: False)
    looped, w_looped = _three_steps(name)
    assert fused.defaults["fused"] and not looped.defaults["fused"]
    assert torch.allclose(w_fused, w_looped, atol=1e-6)


def test_fold_standardization_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    x = torch.randn(10, 6)
    expected = lin((x - mean) / std)
    fold_standardization(lin, mean, std)
    assert torch.allclose(lin(x), expected, atol=1e-5)


BATCHES = 25  # training batches an epoch in the running-loss tests (not a multiple of the logging interval)


class _WatchedProbe(StageProbeModule):
    """A stage probe that records the batches at which ``train_loss`` was logged and those validation saw."""

    def __init__(self) -> None:
        super().__init__([6], 3, optim=OptimConfig(lr=0.1, warmup_epochs=0), batch_size=4)
        self.logged: list[int] = []
        self.validated: list[int] = []
        self._batch = -1

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._batch = batch_idx
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.validated.append(batch_idx)
        super().validation_step(batch, batch_idx)

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "train_loss":
            self.logged.append(self._batch)
        super().log(name, *args, **kwargs)


def _probe_fit(module: _WatchedProbe, nan_batch: int | None = None) -> None:
    """One epoch of ``module`` on random features, logging every 10 steps (``nan_batch``: that batch is NaN)."""
    torch.manual_seed(0)
    x, y = torch.randn(BATCHES * 4, 6), torch.randint(0, 3, (BATCHES * 4,))
    if nan_batch is not None:
        x[nan_batch * 4 : nan_batch * 4 + 4] = float("nan")
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=10)
    val = DataLoader(TensorDataset(torch.randn(8, 6), y[:8]), batch_size=8)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4), val)


def test_the_running_loss_is_read_back_at_the_logging_interval_and_the_epoch_end():
    module = _WatchedProbe()
    _probe_fit(module)
    assert module.logged == [9, 19, BATCHES - 1]
    assert isinstance(module._loss_sum, torch.Tensor)  # summed on the device between readings


def test_a_nan_loss_ends_the_fit_at_the_next_reading():
    with pytest.raises(DivergedError, match=r"became nan by epoch 0, step 9 .*nothing was registered"):
        _probe_fit(_WatchedProbe(), nan_batch=2)


def test_a_nan_loss_in_an_epochs_last_batch_is_caught_before_its_validation():
    module = _WatchedProbe()
    with pytest.raises(DivergedError, match="became nan"):
        _probe_fit(module, nan_batch=BATCHES - 1)
    assert module._batch == BATCHES - 1 and module.validated == []
