"""AlexNet (paper and torchvision variants) and ZFNet: paper layer shapes, counts, LRN and the torchvision key map."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.alexnet import convert_torchvision


def _macs(model: nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def _shapes(model: zoo.Backbone, size: int) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(o.shape[1:]) for o in model.forward_stages(torch.zeros(1, 3, size, size))]


def test_paper_variant_layer_shapes() -> None:
    """Section 3.5 / Fig. 2 at the effective 227x227 input: conv1 gives 55x55x96, pools give 27, 13 and 6."""
    m = zoo.create_model("alexnet", variant="paper").eval()
    with torch.no_grad():
        assert m.conv1(torch.zeros(1, 3, 227, 227)).shape == (1, 96, 55, 55)
    assert _shapes(m, 227) == [(96, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13), (256, 6, 6)]
    # The two-GPU split: conv2, conv4 and conv5 read half of the previous layer's maps, conv3 all of them.
    assert m.conv2.weight.shape == (256, 48, 5, 5)
    assert m.conv3.weight.shape == (384, 256, 3, 3)
    assert m.conv4.weight.shape == (384, 192, 3, 3)
    assert m.conv5.weight.shape == (256, 192, 3, 3)
    assert isinstance(m.lrn, nn.LocalResponseNorm)


def test_paper_variant_counts() -> None:
    m = zoo.create_model("alexnet", variant="paper").eval()
    n = sum(p.numel() for p in m.parameters())
    assert n == 60_965_224
    assert n == pytest.approx(60_000_000, rel=0.05)  # "60 million parameters" (abstract)
    assert _macs(m, 227) == pytest.approx(724_000_000, rel=0.01)  # Sze et al. 2017, Table IV


def test_paper_variant_init() -> None:
    """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere."""
    torch.manual_seed(0)
    m = zoo.create_model("alexnet", variant="paper")
    assert m.fc6.weight.std().item() == pytest.approx(0.01, rel=0.05)
    for name, value in (("conv1", 0), ("conv2", 1), ("conv3", 0), ("conv4", 1), ("conv5", 1), ("fc6", 1), ("fc7", 1)):
        assert torch.all(getattr(m, name).bias == value), name


def test_torchvision_variant_shapes() -> None:
    m = zoo.create_model("alexnet").eval()
    assert _shapes(m, 224) == [(64, 27, 27), (192, 13, 13), (384, 13, 13), (256, 13, 13), (256, 6, 6)]
    assert isinstance(m.lrn, nn.Identity)
    assert m.forward_head(m.forward_features(torch.zeros(1, 3, 224, 224)), pre_logits=True).shape == (1, 4096)


def test_lrn_is_the_papers_formula() -> None:
    """b = a / (k + alpha * sum of a^2 over the n=5 neighbouring maps)^beta with k=2, alpha=1e-4, beta=0.75."""
    m = zoo.create_model("alexnet", variant="paper")
    a = torch.randn(2, 12, 3, 3) * 30
    sq = torch.nn.functional.pad(a.square(), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, i : i + 12] for i in range(5))
    ref = a / (2.0 + 1e-4 * window) ** 0.75
    assert torch.allclose(m.lrn(a), ref, rtol=1e-5, atol=1e-6)


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        zoo.create_model("alexnet", variant="caffe")


def test_convert_torchvision_key_map() -> None:
    import torchvision

    sd = torchvision.models.alexnet(weights=None).state_dict()
    out = convert_torchvision(sd)
    native = zoo.create_model("alexnet").state_dict()
    assert set(out) == set(native)
    assert all(out[k].shape == native[k].shape for k in out)
    with pytest.raises(KeyError, match="unexpected key"):
        convert_torchvision({**sd, "features.2.weight": torch.zeros(1)})


def test_zfnet_layer_shapes() -> None:
    """Fig. 3: 7x7/2 conv1 -> 110, pool -> 55; 5x5/2 conv2 -> 26, pool -> 13; conv3-5 at 13; pool -> 6."""
    m = zoo.create_model("zfnet").eval()
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        c1 = m.conv1(x)
        assert c1.shape == (1, 96, 110, 110)
        s0 = m.stages()[0](x)
        assert s0.shape == (1, 96, 55, 55)
        assert m.conv2(s0).shape == (1, 256, 26, 26)
    assert _shapes(m, 224) == [(96, 55, 55), (256, 13, 13), (512, 13, 13), (1024, 13, 13), (512, 6, 6)]
    assert m.conv3.groups == m.conv4.groups == m.conv5.groups == 1  # dense: one GPU


def test_zfnet_fig3_widths() -> None:
    m = zoo.create_model("zfnet", conv_widths=(384, 384, 256)).eval()
    assert _shapes(m, 224)[2:] == [(384, 13, 13), (384, 13, 13), (256, 6, 6)]
    assert sum(p.numel() for p in m.parameters()) == 62_357_608
