"""CondenseNet: learned group convolutions, the condensing schedule, and conversion to the condensed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.condensenet import CondenseConv, CondenseNet, LearnedGroupConv, condense, condensenet_learned

from ._parity import randomize_


def _randomize(model: CondenseNet) -> None:
    """Random weights and BN statistics; condensation state (masks, stage counters) back to "nothing pruned"."""
    randomize_(model)
    with torch.no_grad():
        for m in model.learned_convs():
            m._mask.fill_(1.0)
            m._count.zero_()
            m._stage.zero_()
        model.classifier.mask.fill_(1.0)


def _learned(**kwargs) -> CondenseNet:
    torch.manual_seed(0)
    return CondenseNet(stages=(2, 3), growth=(4, 8), num_classes=6, learned=True, **kwargs)


def test_condensing_schedule_keeps_one_cth_per_group() -> None:
    model = _learned()
    lgc = model.learned_convs()
    assert lgc and all(m.stage == 0 and m._mask.all() for m in lgc)
    lasso_before = model.lasso_loss()
    assert lasso_before > 0
    model.set_progress(0.2)  # C=4: stage s starts at s / 6 of training
    assert all(m.stage == 1 for m in lgc)
    model.set_progress(0.5)
    assert all(m.stage == 3 for m in lgc)
    for m in lgc:
        kept = m._mask[:, :, 0, 0].sum(1)  # inputs kept by each output channel
        assert (kept == m.in_chs // m.condense_factor).all()
        for g in range(m.groups):  # all outputs of a group share the group's inputs
            rows = m._mask[g :: m.groups, :, 0, 0]
            assert (rows == rows[0]).all()
    assert model.lasso_loss() == 0


def test_dropped_connections_do_not_matter() -> None:
    model = _learned().eval()
    model.set_progress(1.0)
    m = model.learned_convs()[0]
    x = torch.randn(2, m.in_chs, 4, 4)
    with torch.no_grad():
        before = m(x)
        m.conv.weight.add_((1 - m._mask) * 100.0)  # change only pruned weights
        assert torch.allclose(m(x), before)


@pytest.mark.parametrize("progress", [0.3, 1.0])
def test_condensed_model_computes_the_same_function(progress: float) -> None:
    model = _learned()
    _randomize(model)
    model.set_progress(progress)  # condense() finishes any remaining stage itself
    model.eval()
    fast = condense(model)
    assert not fast.learned and fast.training is False
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    for name, m in fast.named_modules():
        if isinstance(m, CondenseConv):
            src = dict(model.named_modules())[name]
            assert m.conv.groups == src.groups and m.index.numel() == src.in_chs * src.groups // src.condense_factor
    n_fast = sum(p.numel() for p in fast.parameters())
    assert n_fast < sum(p.numel() for p in model.parameters())


def test_imagenet_learned_model_condenses_into_the_registered_one() -> None:
    model = condensenet_learned()
    _randomize(model)
    model.eval()
    fast = condense(model)
    spec = zoo.get_spec("condensenet")
    assert sum(p.numel() for p in fast.parameters()) == spec.num_params
    assert fast.state_dict().keys() == zoo.create_model("condensenet").state_dict().keys()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_registered_model_is_the_condensed_form() -> None:
    model = zoo.create_model("condensenet")
    assert not model.learned_convs()
    convs = [m for m in model.modules() if isinstance(m, CondenseConv)]
    assert len(convs) == 4 + 6 + 8 + 10 + 8
    assert all(c.conv.groups == 4 for c in convs)
    assert [f.num_chs for f in model.feature_info] == [16, 48, 144, 400, 1040, 2064]
    assert model.classifier.linear.in_features == model.num_features // 2
    assert isinstance(condensenet_learned().features.denseblock_1.denselayer_1.conv_1, LearnedGroupConv)


def test_reset_classifier_keeps_the_feature_selection() -> None:
    model = CondenseNet(stages=(2, 3), growth=(4, 8), num_classes=6)
    with torch.no_grad():
        model.classifier.index.copy_(torch.randperm(model.num_features)[: model.classifier.index.numel()])
    index = model.classifier.index.clone()
    model.reset_classifier(3)
    assert torch.equal(model.classifier.index, index) and model.classifier.linear.out_features == 3
    model.reset_classifier(0)
    assert isinstance(model.classifier, nn.Identity)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)
