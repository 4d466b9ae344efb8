"""Network In Network: the Caffe ImageNet model's layer shapes, and the 1x1-conv classifier with global pooling."""

from __future__ import annotations

import torch
from torch import nn

import zoo


def test_layer_shapes() -> None:
    m = zoo.create_model("nin").eval()
    with torch.no_grad():
        outs = m.forward_stages(torch.zeros(1, 3, 224, 224))
        assert m.conv1(torch.zeros(1, 3, 224, 224)).shape == (1, 96, 54, 54)
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 27, 27), (256, 13, 13), (384, 6, 6), (1024, 6, 6)]


def test_no_fully_connected_layer() -> None:
    m = zoo.create_model("nin")
    assert not any(isinstance(mod, nn.Linear) for mod in m.modules())
    assert isinstance(m.get_classifier(), nn.Conv2d) and m.get_classifier().kernel_size == (1, 1)
    # Three convs per mlpconv block, four blocks.
    assert sum(isinstance(mod, nn.Conv2d) for mod in m.modules()) == 12


def test_parameter_count_from_layer_table() -> None:
    convs = [(3, 96, 11), (96, 96, 1), (96, 96, 1), (96, 256, 5), (256, 256, 1), (256, 256, 1)]
    convs += [(256, 384, 3), (384, 384, 1), (384, 384, 1), (384, 1024, 3), (1024, 1024, 1), (1024, 1000, 1)]
    expected = sum(cin * cout * k * k + cout for cin, cout, k in convs)
    assert sum(p.numel() for p in zoo.create_model("nin").parameters()) == expected == zoo.get_spec("nin").num_params


def test_logits_are_averaged_class_maps() -> None:
    torch.manual_seed(0)
    m = zoo.create_model("nin").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        maps = torch.relu(m.cccp8(feats))
        assert torch.allclose(m(x), maps.mean((2, 3)), atol=1e-6)
        assert torch.allclose(m.forward_head(feats, pre_logits=True), feats.mean((2, 3)))


def test_reset_classifier_replaces_the_last_1x1_conv() -> None:
    m = zoo.create_model("nin").eval()
    old = m.cccp8
    m.reset_classifier(7)
    assert m.cccp8 is not old and m.cccp8.weight.shape == (7, 1024, 1, 1)
    assert m.head_modules() == [m.cccp8]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert m(x).shape == (2, 7)
        m.reset_classifier(0)
        assert torch.allclose(m(x), m.forward_head(m.forward_features(x), pre_logits=True))
