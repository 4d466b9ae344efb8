"""MSDNet: exits, confidence-thresholded early exit with measured cost, summed-loss training."""

from __future__ import annotations

import itertools

import pytest
import torch

import zoo
from zoo.msdnet import MSDNet


@pytest.fixture(scope="module")
def small() -> MSDNet:
    """A narrow MSDNet (same topology rules: 4 scales, prune=max, transitions) with a few confident exits."""
    torch.manual_seed(0)
    model = MSDNet(num_classes=3, n_blocks=4, base=2, step=2, channels=8, growth=4).eval()
    with torch.no_grad():
        for c in model.classifier:  # sharper exits: confidences spread over (1/3, 1] on random images
            c.linear.weight.mul_(20.0)
    return model


def _x(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_threshold_zero_exits_everything_at_the_first_exit(small: MSDNet) -> None:
    x = _x()
    res = small.predict_anytime(x, 0.0)
    assert (res.exits == 0).all()
    assert (res.macs == small.exit_macs((3, 32, 32))[0]).all()
    with torch.no_grad():
        assert torch.allclose(res.logits, small.forward_exits(x)[0], atol=1e-5)


def test_threshold_above_one_reaches_the_last_exit(small: MSDNet) -> None:
    x = _x()
    res = small.predict_anytime(x, 1.1)
    assert (res.exits == small.num_exits - 1).all()
    assert (res.macs == small.exit_macs((3, 32, 32))[-1]).all()
    with torch.no_grad():
        assert torch.allclose(res.logits, small(x), atol=1e-5)


def test_cost_falls_with_the_threshold(small: MSDNet) -> None:
    x = _x(32)
    with torch.no_grad():
        exits = small.forward_exits(x)
    costs = small.exit_macs((3, 32, 32))
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    mean_cost = []
    for th in (1.1, 0.9, 0.5, 0.0):
        res = small.predict_anytime(x, th)
        mean_cost.append(res.macs.double().mean().item())
        for i, k in enumerate(res.exits.tolist()):  # each image: the first confident exit, its logits, its cost
            conf = [e[i].softmax(0).max().item() for e in exits]
            first = next((j for j, c in enumerate(conf) if c >= th), len(exits) - 1)
            assert k == first
            assert torch.allclose(res.logits[i], exits[k][i], atol=1e-4)
            assert res.macs[i].item() == costs[k]
    assert all(a >= b for a, b in itertools.pairwise(mean_cost)), mean_cost
    assert mean_cost[-1] < mean_cost[0]
    assert len(set(mean_cost)) > 2, f"the batch should leave at intermediate exits too: {mean_cost}"


def test_summed_loss_trains_every_exit(small: MSDNet) -> None:
    model = MSDNet(num_classes=3, n_blocks=4, base=2, step=2, channels=8, growth=4).train()
    x, y = _x(4), torch.tensor([0, 1, 2, 0])
    loss = model.loss(x, y)
    with torch.no_grad():
        want = sum(torch.nn.functional.cross_entropy(o, y) for o in model.forward_exits(x))
    assert torch.allclose(loss, want, rtol=1e-3)  # BN batch statistics: recomputed forward, same batch
    loss.backward()
    for i, c in enumerate(model.classifier):
        assert c.linear.weight.grad is not None and c.linear.weight.grad.abs().sum() > 0, f"exit {i} got no gradient"
    assert all(p.grad is not None for p in model.parameters())


def test_plain_forward_gives_zero_gradient_to_earlier_exits() -> None:
    model = MSDNet(num_classes=3, n_blocks=4, base=2, step=2, channels=8, growth=4).train()
    model(_x(4)).sum().backward()
    assert model.classifier[-1].linear.weight.grad.abs().sum() > 0
    for c in model.classifier[:-1]:
        assert c.linear.weight.grad is not None and c.linear.weight.grad.abs().sum() == 0


def test_stages_head_and_classifier_reset(small: MSDNet) -> None:
    stages = small.stages()
    assert len(stages) == 1 + small.num_exits
    for i, c in enumerate(small.classifier[:-1]):  # earlier exits belong to their block's stage
        assert stages[i + 1].exit is c
    assert small.head_modules() == [small.classifier[-1]]
    x = _x(2)
    with torch.no_grad():
        assert small.forward_features(x).shape[1] == small.num_features == small.feature_info[-1].num_chs
    model = MSDNet(num_classes=3, n_blocks=4, base=2, step=2, channels=8, growth=4).eval()
    model.reset_classifier(7)
    with torch.no_grad():
        assert all(o.shape == (2, 7) for o in model.forward_exits(x))
    assert all(c.linear.out_features == 7 for c in model.classifier)


def test_imagenet_exit_costs_match_the_reported_ones() -> None:
    """Per-exit parameters and multiply-adds of the ImageNet network (Li et al. 2019, MSDNet on ImageNet)."""
    model = zoo.create_model("msdnet").eval()
    macs = model.exit_macs((3, 224, 224))
    for got, want in zip(macs, (0.34e9, 0.69e9, 1.01e9, 1.25e9, 1.36e9)):
        assert got == pytest.approx(want, rel=0.03)
    params, total = [], 0
    for block, exit_ in zip(model.blocks, model.classifier):
        total += sum(p.numel() for p in block.parameters()) + sum(p.numel() for p in exit_.parameters())
        params.append(total)
    for got, want in zip(params, (4.24e6, 8.77e6, 13.07e6, 16.75e6, 23.96e6)):
        assert got == pytest.approx(want, rel=0.01)
