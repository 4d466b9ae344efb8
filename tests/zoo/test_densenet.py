"""DenseNet specifics: Table 1 shapes, memory-efficient checkpointing, DenseNet-264, old torchvision keys."""

from __future__ import annotations

import re

import pytest
import torch

import zoo
from zoo.densenet import DenseNet

from ._parity import max_rel_diff, randomize_


def test_table1_output_sizes() -> None:
    """Stage outputs at 224: stem conv 112x112, dense blocks 56, 28, 14, 7 (Table 1's output-size column)."""
    model = zoo.create_model("densenet121").eval()
    with torch.no_grad():
        outs = model.forward_stages(torch.zeros(1, 3, 224, 224))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (64, 112, 112),
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (1024, 7, 7),
    ]


@pytest.mark.parametrize(("name", "layers"), [("densenet121", (6, 12, 24, 16)), ("densenet264", (6, 12, 64, 48))])
def test_block_config(name: str, layers: tuple[int, ...]) -> None:
    with torch.device("meta"):  # structure only
        model = zoo.create_model(name)
    blocks = [getattr(model.features, f"denseblock{i + 1}") for i in range(4)]
    assert tuple(len(b) for b in blocks) == layers


def test_memory_efficient_same_output_gradients_and_running_stats() -> None:
    torch.manual_seed(0)
    small = dict(growth_rate=8, block_config=(2, 3, 3, 2), num_classes=10)  # the code path, not the size, matters
    plain = DenseNet(**small).train()
    efficient = DenseNet(**small, memory_efficient=True).train()
    efficient.load_state_dict(plain.state_dict())
    calls = {"plain": 0, "efficient": 0}
    for key, model in (("plain", plain), ("efficient", efficient)):
        norm1 = model.features.denseblock1.denselayer2.norm1
        norm1.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    x = torch.randn(2, 3, 32, 32)
    out_plain, out_eff = plain(x), efficient(x)
    torch.testing.assert_close(out_eff, out_plain)
    out_plain.square().sum().backward()
    out_eff.square().sum().backward()
    grads = dict(efficient.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert calls == {"plain": 1, "efficient": 2}, "the bottleneck was not recomputed in the backward pass"
    # the backward recomputation must not count as a second training step for BatchNorm
    eff_state = efficient.state_dict()
    for name, t in plain.state_dict().items():
        torch.testing.assert_close(eff_state[name], t, msg=name)


def test_set_memory_efficient_toggles_every_layer() -> None:
    with torch.device("meta"):
        model = zoo.create_model("densenet121")
    model.set_memory_efficient(True)
    layers = [m for m in model.modules() if type(m).__name__ == "DenseLayer"]
    assert len(layers) == 58 and all(m.memory_efficient for m in layers)


def test_densenet264_matches_timm_densenet_class() -> None:
    """timm registers no DenseNet-264 of the paper (its densenet264d has a deep stem and k=48), but its DenseNet
    class builds the paper's configuration; the native model must match it key for key."""
    from timm.models.densenet import DenseNet

    ref = DenseNet(growth_rate=32, block_config=(6, 12, 64, 48)).eval()
    randomize_(ref)
    native = zoo.create_model("densenet264").eval()
    native.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_rel_diff(native(x), ref(x)) < 1e-4


def test_old_style_torchvision_keys() -> None:
    """Released torchvision files say ``denselayer1.norm.1``; both key styles convert to the same state dict."""
    import torchvision

    new_style = torchvision.models.densenet121().state_dict()
    old_style = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in new_style.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_style
    converted = zoo.convert_state_dict("densenet121", old_style, "torchvision")
    assert converted.keys() == zoo.convert_state_dict("densenet121", new_style, "torchvision").keys()
    assert converted.keys() == zoo.create_model("densenet121").state_dict().keys()


def test_foreign_torchvision_keys_are_rejected() -> None:
    with pytest.raises(KeyError, match="unexpected key"):
        zoo.convert_state_dict("densenet121", {"fc.weight": torch.zeros(1)}, "torchvision")
