"""MobileNet specifics: the papers' layer tables, where the residuals are, linear bottlenecks, torchvision keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.layers import DepthwiseSeparableConv, InvertedResidual


def _stage_shapes(name: str) -> list[tuple[int, int, int]]:
    model = zoo.create_model(name).eval()
    with torch.no_grad():
        return [(o.shape[2], o.shape[3], o.shape[1]) for o in model.forward_stages(torch.zeros(1, 3, 224, 224))]


def test_mobilenetv2_table2_shapes() -> None:
    """Table 2 at 224x224: the stem conv, each bottleneck row, then the 1x1 conv to 1280 (H x W x C)."""
    assert _stage_shapes("mobilenetv2_100") == [
        (112, 112, 32),
        (112, 112, 16),
        (56, 56, 24),
        (28, 28, 32),
        (14, 14, 64),
        (14, 14, 96),
        (7, 7, 160),
        (7, 7, 320),
        (7, 7, 1280),
    ]


def test_mobilenetv1_table1_shapes() -> None:
    assert _stage_shapes("mobilenetv1_100") == [
        (112, 112, 32),
        (112, 112, 64),
        (56, 56, 128),
        (28, 28, 256),
        (14, 14, 512),
        (7, 7, 1024),
    ]


def test_residuals_and_linear_bottlenecks() -> None:
    v2 = zoo.create_model("mobilenetv2_100")
    irs = [m for m in v2.modules() if isinstance(m, InvertedResidual)]
    assert len(irs) == 16
    # a residual on every repeat of a row (stride 1, same width): 1 + 2 + 3 + 2 + 2 + 0
    assert sum(m.has_skip for m in irs) == 10
    assert all(isinstance(m.bn3.act, nn.Identity) for m in irs)  # linear bottleneck (Sec. 3.2)
    assert isinstance(v2.blocks[0][0].bn2.act, nn.Identity)
    v1 = zoo.create_model("mobilenetv1_100")
    dss = [m for m in v1.modules() if isinstance(m, DepthwiseSeparableConv)]
    assert len(dss) == 13 and not any(m.has_skip for m in dss)
    assert all(isinstance(m.bn2.act, nn.ReLU6) for m in dss)


def test_drop_path_only_in_training() -> None:
    model = zoo.create_model("mobilenetv2_100", drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    assert any(m.drop_path.p > 0 for m in model.modules() if isinstance(m, InvertedResidual))


def test_torchvision_key_map_is_complete_and_checks_shapes() -> None:
    import torchvision

    sd = torchvision.models.mobilenet_v2().state_dict()
    converted = zoo.convert_state_dict("mobilenetv2_100", sd, "torchvision")
    assert converted.keys() == zoo.create_model("mobilenetv2_100").state_dict().keys()
    narrow = torchvision.models.mobilenet_v2(width_mult=0.5).state_dict()
    with pytest.raises(ValueError, match="shape"):
        zoo.convert_state_dict("mobilenetv2_100", narrow, "torchvision")
    with pytest.raises(KeyError, match="unexpected key"):
        zoo.convert_state_dict("mobilenetv2_100", {"fc.weight": torch.zeros(1)}, "torchvision")
