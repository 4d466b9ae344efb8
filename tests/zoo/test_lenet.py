"""LeNet-5: the paper's layer shapes, parameter and connection counts, and C3 connection table."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.lenet import C3_TABLE


def _paper_net(**kwargs) -> zoo.Backbone:
    """The paper's configuration: one grey 32x32 input, ten digit classes."""
    torch.manual_seed(0)
    return zoo.create_model("lenet5", in_chans=1, num_classes=10, **kwargs).eval()


def test_paper_layer_shapes() -> None:
    m = _paper_net()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        c1 = m.c1(x)
        s2 = m.s2(c1)
        c3 = m.c3(s2)
        s4 = m.s4(c3)
        c5 = m.c5(s4)
    assert c1.shape == (2, 6, 28, 28)
    assert s2.shape == (2, 6, 14, 14)
    assert c3.shape == (2, 16, 10, 10)
    assert s4.shape == (2, 16, 5, 5)
    assert c5.shape == (2, 120, 1, 1)
    assert [tuple(o.shape[1:]) for o in m.forward_stages(x)] == [(6, 14, 14), (16, 5, 5), (120, 1, 1)]
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 84)  # F6


def test_paper_parameter_counts() -> None:
    """Section II-B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164; about 60,000 in all."""
    m = _paper_net()
    per_layer = {name: sum(p.numel() for p in getattr(m, name).parameters()) for name in ("c1", "s2", "c3", "s4")}
    per_layer |= {name: sum(p.numel() for p in getattr(m, name).parameters()) for name in ("c5", "f6")}
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}
    total = sum(p.numel() for p in m.parameters())
    assert total == 60_850  # the paper's RBF output has 840 weights; the linear output adds 10 biases
    assert total == pytest.approx(60_000, rel=0.05)


def test_paper_connection_count() -> None:
    """340,908 connections: the multiply-adds plus one bias connection per unit (subsampling: 4 inputs + bias)."""
    m = _paper_net()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m(torch.zeros(1, 1, 32, 32))
    macs = counter.get_total_flops() // 2
    assert macs == 117_600 + 150_000 + 48_000 + 10_080 + 840  # C1, C3, C5, F6, output (no MACs for pooling)
    bias_connections = 28 * 28 * 6 + 100 * 16 + 120 + 84  # C1, C3, C5, F6 (the paper's output units have none)
    subsampling_connections = 14 * 14 * 6 * 5 + 5 * 5 * 16 * 5  # S2, S4
    assert macs + bias_connections + subsampling_connections == 340_908


def test_c3_connection_table() -> None:
    """Each C3 map reads only the S2 maps of Table I."""
    m = _paper_net()
    s2 = torch.randn(1, 6, 14, 14, requires_grad=True)
    out = m.c3(s2)
    for j, subset in enumerate(C3_TABLE):
        (grad,) = torch.autograd.grad(out[0, j].sum(), s2, retain_graph=True)
        reads = {i for i in range(6) if grad[0, i].abs().sum() > 0}
        assert reads == set(subset), f"C3 map {j} reads {sorted(reads)}, Table I says {subset}"


def test_dense_c3_option() -> None:
    m = _paper_net(c3_table=False)
    assert sum(p.numel() for p in m.c3.parameters()) == 2416
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_subsampling_is_sum_times_coefficient_plus_bias() -> None:
    m = _paper_net()
    x = torch.randn(1, 6, 28, 28)
    with torch.no_grad():
        ref = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)) * m.s2.weight.view(1, -1, 1, 1)
        assert torch.allclose(m.s2(x), ref + m.s2.bias.view(1, -1, 1, 1), atol=1e-5)


def test_larger_input_is_pooled_before_f6() -> None:
    m = _paper_net()
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 10)
