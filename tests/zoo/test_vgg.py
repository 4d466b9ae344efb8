"""VGG specifics: Table 1 depths, the conv-form FC head, torchvision's Linear layers reshaped into convs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo

from ._parity import max_rel_diff, randomize_


@pytest.mark.parametrize(("name", "weight_layers"), [("vgg11", 11), ("vgg13", 13), ("vgg16", 16), ("vgg19", 19)])
def test_table1_weight_layers(name: str, weight_layers: int) -> None:
    """The name counts weight layers: the 3x3 convs plus the three FC layers."""
    spec = zoo.get_spec(name)
    convs = sum(isinstance(v, int) for v in zoo.vgg.CFGS[name])
    assert convs + 3 == weight_layers
    assert spec.paper_params is not None


def test_head_keys_and_hidden_size() -> None:
    model = zoo.create_model("vgg11", num_classes=7)
    keys = list(model.state_dict())
    assert keys[-6:] == [
        "pre_logits.fc1.weight",
        "pre_logits.fc1.bias",
        "pre_logits.fc2.weight",
        "pre_logits.fc2.bias",
        "head.fc.weight",
        "head.fc.bias",
    ]
    assert model.num_features == 512 and model.pre_logits_dim == 4096
    assert model.head_modules() == [model.pre_logits, model.head]
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(0)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4096)


def test_conv_head_matches_timm_above_224() -> None:
    """Above 224 the 7x7 fc1 is applied densely and its outputs averaged, as in timm."""
    import timm

    ref = timm.create_model("vgg11").eval()
    randomize_(ref)
    native = zoo.create_model("vgg11").eval()
    native.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_rel_diff(native(x), ref(x)) < 1e-4


def test_torchvision_linear_layers_become_convs() -> None:
    import torchvision

    ref = torchvision.models.vgg11().eval()
    randomize_(ref)
    sd = zoo.convert_state_dict("vgg11", ref.state_dict(), "torchvision")
    assert sd["pre_logits.fc1.weight"].shape == (4096, 512, 7, 7)
    assert sd["pre_logits.fc2.weight"].shape == (4096, 4096, 1, 1)
    native = zoo.create_model("vgg11").eval()
    native.load_state_dict(sd)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_rel_diff(native(x), ref(x)) < 1e-4


def test_torchvision_shape_mismatch_is_an_error() -> None:
    sd = {"classifier.0.weight": torch.zeros(4096, 512), "classifier.0.bias": torch.zeros(4096)}
    with pytest.raises(AssertionError, match=r"classifier\.0\.weight"):
        zoo.convert_state_dict("vgg11", sd, "torchvision")


def test_batchnorm_variants_have_batchnorm() -> None:
    with torch.device("meta"):  # structure only
        plain, bn = zoo.create_model("vgg11"), zoo.create_model("vgg11_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 8
