"""GoogLeNet, Inception-v3, Inception-v4 and Inception-ResNet-v2: paper shapes, auxiliary heads, torchvision's
``transform_input`` and timm's stage split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo._registry import IMAGENET_MEAN, IMAGENET_STD

from ._parity import max_rel_diff, randomize_

# GoogLeNet paper, Table 1: output size (C, H, W) of every layer at 224x224 input
GOOGLENET_TABLE1 = {
    "conv1": (64, 112, 112),
    "maxpool1": (64, 56, 56),
    "conv2": (64, 56, 56),
    "conv3": (192, 56, 56),
    "maxpool2": (192, 28, 28),
    "inception3a": (256, 28, 28),
    "inception3b": (480, 28, 28),
    "maxpool3": (480, 14, 14),
    "inception4a": (512, 14, 14),
    "inception4b": (512, 14, 14),
    "inception4c": (512, 14, 14),
    "inception4d": (528, 14, 14),
    "inception4e": (832, 14, 14),
    "maxpool4": (832, 7, 7),
    "inception5a": (832, 7, 7),
    "inception5b": (1024, 7, 7),
}


def _set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def test_googlenet_table1_shapes() -> None:
    model = zoo.create_model("googlenet").eval()
    shapes: dict[str, tuple[int, ...]] = {}
    for name in GOOGLENET_TABLE1:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v) for k, v in shapes.items()} == GOOGLENET_TABLE1
    assert feats.shape == (1, 1024, 7, 7)  # then 7x7 average pool, dropout, linear 1000 (Table 1)


def _tv_googlenet() -> nn.Module:
    """torchvision's GoogLeNet as its pretrained builder makes it: transform_input and aux heads on."""
    import torchvision

    ref = torchvision.models.GoogLeNet(transform_input=True, aux_logits=True, init_weights=False)
    randomize_(ref)
    return ref


def test_googlenet_transform_input_matches_torchvision() -> None:
    """torchvision's pretrained model on ImageNet-normalised input == the zoo default on mean=std=0.5 input."""
    ref = _tv_googlenet().eval()
    same = zoo.create_model("googlenet", transform_input=True, aux_logits=True).eval()
    same.load_state_dict(ref.state_dict())  # identical key layout, aux heads included
    default = zoo.create_model("googlenet").eval()
    zoo._weights.load_into(
        default, zoo.get_spec("googlenet"), zoo.convert_state_dict("googlenet", ref.state_dict(), "torchvision")
    )

    raw = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    imagenet = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    spec = zoo.get_spec("googlenet")
    native = (raw - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(imagenet)
        assert max_rel_diff(same(imagenet), expected) < 1e-4
        assert max_rel_diff(default(native), expected) < 1e-4


def test_googlenet_aux_heads_match_torchvision() -> None:
    ref = _tv_googlenet().train()
    native = zoo.create_model("googlenet", transform_input=True, aux_logits=True).train()
    native.load_state_dict(ref.state_dict())
    for m in (ref, native):
        _set_dropout(m, 0.0)  # both in training mode (batch-stat BN), without random masks
    native.drop_rate = 0.0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # training-mode BatchNorm still normalises by batch statistics
        out, expected = native(x), ref(x)
    assert type(out).__name__ == "GoogLeNetOutputs" and out._fields == expected._fields
    for a, b in zip(out, expected):
        assert max_rel_diff(a, b) < 1e-4


def test_googlenet_aux_training_contract() -> None:
    model = zoo.create_model("googlenet", aux_logits=True, num_classes=4)
    in_head = {id(p) for h in model.head_modules() for p in h.parameters()}
    in_stages = {id(p) for s in model.stages() for p in s.parameters()}
    assert not in_head & in_stages and in_head | in_stages == {id(p) for p in model.parameters()}
    model.reset_classifier(3)
    logits, aux2, aux1 = model.train()(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux1.shape == aux2.shape == (2, 3)
    (logits.sum() + 0.3 * (aux1.sum() + aux2.sum())).backward()  # the paper weights the aux losses by 0.3
    assert all(p.grad is not None for p in model.parameters())
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)  # eval: logits only, as torchvision


def test_pretrained_load_leaves_aux_heads_fresh() -> None:
    import torchvision

    ref = torchvision.models.GoogLeNet(aux_logits=True, init_weights=False)
    model = zoo.create_model("googlenet", aux_logits=True)
    before = model.aux1.fc2.weight.clone()
    spec = zoo.get_spec("googlenet")
    zoo._weights.load_into(model, spec, zoo.convert_state_dict("googlenet", ref.state_dict(), "torchvision"))
    assert torch.equal(model.aux1.fc2.weight, before)
    assert torch.equal(model.conv1.conv.weight, ref.conv1.conv.weight)


def test_transform_input_needs_rgb() -> None:
    with pytest.raises(ValueError, match="in_chans=3"):
        zoo.create_model("googlenet", in_chans=1, transform_input=True)


def test_inception_v3_aux_matches_timm() -> None:
    import timm

    ref = timm.create_model("inception_v3", aux_logits=True).eval()
    randomize_(ref)
    native = zoo.create_model("inception_v3", aux_logits=True).eval()
    native.load_state_dict(ref.state_dict())  # timm keeps the aux head under the same keys
    x = torch.randn(1, 3, 299, 299, generator=torch.Generator().manual_seed(2))  # the aux head needs 299
    with torch.no_grad():
        logits, aux = native.forward_aux(x)
        ref_logits, ref_aux = ref(x)
    assert max_rel_diff(logits, ref_logits) < 1e-4 and max_rel_diff(aux, ref_aux) < 1e-4
    native.forward_aux = lambda x: "aux outputs"  # training mode dispatches to forward_aux (not run: it is slow)
    assert native.train()(x) == "aux outputs"


def test_inception_v3_transform_input_matches_torchvision() -> None:
    import torchvision

    ref = torchvision.models.Inception3(transform_input=True, aux_logits=False, init_weights=False).eval()
    randomize_(ref)
    native = zoo.create_model("inception_v3", transform_input=True).eval()
    native.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 75, 75, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_rel_diff(native(x), ref(x)) < 1e-4


@pytest.mark.parametrize("name", ["inception_v3", "inception_v4", "inception_resnet_v2"])
def test_stages_follow_timm_feature_info(name: str) -> None:
    """Each stage output equals timm's feature tap of the same index (timm's forward_intermediates)."""
    import timm

    ref = timm.create_model(name).eval()
    randomize_(ref)
    native = zoo.create_model(name).eval()
    native.load_state_dict(ref.state_dict())
    assert [(f.num_chs, f.reduction) for f in native.feature_info] == [
        (f["num_chs"], f["reduction"]) for f in ref.feature_info
    ]
    x = torch.randn(1, 3, 107, 107, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        taps = ref.forward_intermediates(x, intermediates_only=True)
        outs = native.forward_stages(x)
    assert len(outs) == len(taps)
    for i, (o, t) in enumerate(zip(outs, taps)):
        assert o.shape == t.shape and max_rel_diff(o, t) < 1e-4, f"stage {i}"
