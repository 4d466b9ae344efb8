"""Channels-last forward passes on the CPU: same answers, the model back in its layout and trainable afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import zoo
from transfer.features import extract_features
from transfer.layout import channels_last, channels_last_pass, try_channels_last
from transfer.module import predict_logits

SHAPE = (3, 48, 48)


class _Flattens(nn.Module):
    """A network that views its activations as NCHW (``view`` fails on channels-last memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 46 * 46, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), -1))


def _loader() -> DataLoader:
    x = torch.randn(12, *SHAPE, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, torch.arange(12) % 2), batch_size=5)


def _in(model: nn.Module, memory_format: torch.memory_format) -> bool:
    """Whether every 4-D weight of ``model`` is laid out in ``memory_format``."""
    return all(p.is_contiguous(memory_format=memory_format) for p in model.parameters() if p.ndim == 4)


@pytest.fixture()
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return zoo.create_model("resnet18", num_classes=2).eval()


def test_a_pass_runs_channels_last_and_leaves_the_model_as_it_was(resnet):
    assert not _in(resnet, torch.channels_last)
    with channels_last(resnet, SHAPE) as used:
        assert used and _in(resnet, torch.channels_last)
    assert _in(resnet, torch.contiguous_format)


def test_a_pass_gives_the_default_layouts_answers(resnet):
    x, _ = next(iter(_loader()))
    with torch.no_grad():
        want = resnet(x)
    got, _ = predict_logits(resnet, _loader())
    torch.testing.assert_close(got[:5], want, atol=1e-4, rtol=1e-4)


def test_a_network_that_needs_nchw_keeps_it():
    model = _Flattens().eval()
    with channels_last_pass(model, _loader()) as (batches, used):
        assert not used and len(list(batches)) == 3
    assert predict_logits(model, _loader())[0].shape == (12, 2)


def test_features_on_the_cpu_leave_a_model_that_trains(resnet):
    feats = extract_features(resnet, _loader(), per_stage=True)
    assert feats["pre_logits"].shape == (12, 512)
    assert not any(p.is_inference() for p in resnet.parameters())
    resnet.train()
    resnet(torch.randn(2, *SHAPE)).sum().backward()
    assert all(p.grad is not None for p in resnet.parameters() if p.requires_grad)


def test_the_check_leaves_a_training_models_mode_and_batchnorm_statistics(resnet):
    resnet.train()
    stats = {k: v.clone() for k, v in resnet.state_dict().items() if "running" in k}
    assert try_channels_last(resnet, SHAPE)
    assert resnet.training
    assert all(torch.equal(resnet.state_dict()[k], v) for k, v in stats.items())
