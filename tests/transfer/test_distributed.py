"""Synchronised BatchNorm: AllReduceBatchNorm against nn.BatchNorm2d, conversion, and one DDP step on two CPUs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from tests.transfer import ddp_syncbn_worker as worker
from transfer.distributed import AllReduceBatchNorm, BatchNormSync, convert_batchnorm, revert_batchnorm
from zoo.layers import BatchNormAct2d

REPO = Path(__file__).resolve().parents[2]


def _pair(momentum: float | None) -> tuple[nn.BatchNorm2d, AllReduceBatchNorm]:
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=momentum)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    bn = AllReduceBatchNorm(5, momentum=momentum)
    bn.load_state_dict(ref.state_dict())
    return ref, bn


def _run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient of ``forward`` (default: the module) for the upstream gradient ``grad``."""
    x = x.clone().requires_grad_()
    out = (forward or module)(x)
    out.backward(grad)
    return out.detach(), x.grad


def _assert_same_state(ref: nn.Module, bn: nn.Module, atol: float = 0.0) -> None:
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(ref, name), atol=atol, rtol=atol, msg=name)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(bn, name).grad, getattr(ref, name).grad, atol=10 * atol, rtol=0, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_process_group_it_is_batchnorm2d(momentum):
    """No process group: train and eval are nn.BatchNorm2d exactly (outputs, input grads, running stats, grads)."""
    ref, bn = _pair(momentum)
    for _ in range(3):
        x, g = torch.randn(4, 5, 6, 6) * 3 + 2, torch.randn(4, 5, 6, 6)
        out_ref, dx_ref = _run(ref, x, g)
        out, dx = _run(bn, x, g)
        assert torch.equal(out, out_ref) and torch.equal(dx, dx_ref)
    _assert_same_state(ref, bn)
    ref.eval(), bn.eval()
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(bn(x), ref(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_statistics_path_equals_batchnorm2d(momentum):
    """The all-reduce path, with a world of one (the reduction is the identity), computes what BatchNorm2d does."""
    ref, bn = _pair(momentum)
    for _ in range(3):
        x, g = torch.randn(4, 5, 6, 6) * 3 + 2, torch.randn(4, 5, 6, 6)
        out_ref, dx_ref = _run(ref, x, g)
        out, dx = _run(bn, x, g, forward=lambda t: bn._normalize_global(t, lambda s: s))
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=0)
    _assert_same_state(ref, bn, atol=1e-6)


def test_global_statistics_in_float32_under_autocast():
    ref, bn = _pair(0.1)
    x = torch.randn(4, 5, 6, 6) * 3 + 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bn._normalize_global(x.bfloat16(), lambda s: s)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x.bfloat16().float()), atol=0.05, rtol=0)
    assert bn.running_mean.dtype == torch.float32
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-5, rtol=0)


def test_input_checks():
    bn = AllReduceBatchNorm(3)
    with pytest.raises(ValueError, match="at least 2D"):
        bn._check_input_dim(torch.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn._normalize_global(torch.zeros(1, 3), lambda s: s)


def _model() -> nn.Sequential:
    frozen = nn.BatchNorm2d(4).eval()
    frozen.requires_grad_(False)
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.Sequential(frozen, BatchNormAct2d(4)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(4),
    )


def test_convert_and_revert_keep_weights_buffers_and_flags():
    model = _model()
    before = {n: (type(m), m.training) for n, m in model.named_modules()}
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}

    def unchanged() -> None:
        assert {n: m.training for n, m in model.named_modules()} == {n: t for n, (_, t) in before.items()}
        now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        assert now.keys() == tensors.keys() and all(now[n] is t for n, t in tensors.items())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == grads

    assert convert_batchnorm(model) is model
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns == ["1", "2.0", "2.1", "5"]
    assert all(isinstance(model.get_submodule(n), AllReduceBatchNorm) for n in bns)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[2][1], BatchNormAct2d)
    assert not model[2][0].training and not model[2][0].weight.requires_grad
    unchanged()
    assert convert_batchnorm(model) is model  # idempotent

    assert revert_batchnorm(model) is model
    assert {n: type(m) for n, m in model.named_modules()} == {n: c for n, (c, _) in before.items()}
    assert not any(hasattr(model.get_submodule(n), "process_group") for n in bns)
    unchanged()


def test_revert_makes_a_bare_allreduce_batchnorm_a_batchnorm2d():
    model = nn.Sequential(AllReduceBatchNorm(3))
    weight = model[0].weight
    revert_batchnorm(model)
    assert type(model[0]) is nn.BatchNorm2d and model[0].weight is weight


def test_converted_zoo_models_keep_their_outputs():
    """Every BatchNorm of nested zoo models converts; BatchNormAct2d keeps its activation (MobileNetV2)."""
    resnet = zoo.create_model("resnet18", num_classes=3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    convert_batchnorm(resnet)
    assert n_bn > 10 and sum(isinstance(m, AllReduceBatchNorm) for m in resnet.modules()) == n_bn

    model = zoo.create_model("mobilenetv2_100", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        train_out, eval_out = model.train()(x), model.eval()(x)  # (the train step moved the running statistics)
        convert_batchnorm(model)
        assert type(model.bn1).__name__ == "AllReduceBatchNormAct2d"
        torch.testing.assert_close(model.eval()(x), eval_out)
        torch.testing.assert_close(model.train()(x), train_out)


def test_plugin_picks_syncbatchnorm_for_cuda_and_reverts():
    """On CUDA the plugin uses SyncBatchNorm's kernels (checked without a GPU: the device comes from the trainer)."""
    model = _model()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = model(x)
    plugin = BatchNormSync()
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    plugin.apply(model)
    assert isinstance(model[2][1], nn.SyncBatchNorm) and isinstance(model[2][1], BatchNormAct2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)  # no process group: SyncBatchNorm is F.batch_norm
    plugin.revert(model)
    assert type(model[2][1]) is BatchNormAct2d and type(model[1]) is nn.BatchNorm2d

    del model._trainer
    plugin.apply(model)  # parameters on the CPU
    assert isinstance(model[1], AllReduceBatchNorm)


def test_trainer_accepts_the_plugin():
    plugin = BatchNormSync()
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, plugins=[plugin], logger=False)
    assert trainer.strategy._layer_sync is plugin


# --- DDP through Lightning: two CPU processes, gloo --------------------------------------------------------------


def _worker_env(port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))
        and k not in {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"}
    }
    pythonpath = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(
        PYTHONPATH=pythonpath,
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PYTHONWARNINGS="ignore",
    )
    return env


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, Path]:
    """Run the worker with and without the plugin, at the same time (each is two processes importing Lightning)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(2)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
    runs, procs = {}, {}
    for (name, flags), port in zip([("sync", []), ("plain", ["--plain"])], ports):
        runs[name] = tmp_path_factory.mktemp(f"ddp-{name}")
        procs[name] = subprocess.Popen(
            [sys.executable, str(Path(worker.__file__)), str(runs[name]), *flags],
            cwd=runs[name],
            env=_worker_env(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"DDP worker ({name}) failed:\n{out[-5000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return runs


def _single_process_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The worker's step in one process with plain BatchNorm2d: same init, loss the mean over the batch, same SGD."""
    net = worker.make_net().train()
    opt = torch.optim.SGD(net.parameters(), lr=worker.LR)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    return net.state_dict()


def test_ddp_batchnorm_statistics_equal_one_process_on_the_concatenated_batch(ddp_runs):
    """Under DDP with two processes, BatchNorm running statistics after a step equal those of a single process on the
    concatenated batch; so do the updated weights."""
    B = worker.B
    ranks = [torch.load(ddp_runs["sync"] / f"rank{r}.pt") for r in range(2)]
    assert [r["seen"] for r in ranks] == [list(range(B)), list(range(B, 2 * B))]
    assert [r["bn_class"] for r in ranks] == ["AllReduceBatchNorm2d"] * 2
    result = torch.load(ddp_runs["sync"] / "state.pt")
    assert result["bn_class_after"] == "BatchNorm2d"  # reverted at teardown

    expected = _single_process_step(*worker.make_data())
    assert result["state"].keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(result["state"][name], value, atol=1e-6, rtol=0, msg=name)


def test_ddp_without_the_plugin_uses_per_rank_statistics(ddp_runs):
    """The control: plain BatchNorm under DDP gives rank 0 the statistics of its own half, not the global ones."""
    B = worker.B
    x, y = worker.make_data()
    state = torch.load(ddp_runs["plain"] / "state.pt")["state"]
    assert [torch.load(ddp_runs["plain"] / f"rank{r}.pt")["bn_class"] for r in range(2)] == ["BatchNorm2d"] * 2
    own_half, concatenated = _single_process_step(x[:B], y[:B]), _single_process_step(x, y)
    for name in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(state[name], own_half[name], atol=1e-6, rtol=0, msg=name)
        assert (state[name] - concatenated[name]).abs().max() > 1e-2, name
