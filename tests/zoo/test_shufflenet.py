"""ShuffleNet v1 (Table 1) and v2 (Table 5) stage tables, unit structure and the torchvision key map."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.shufflenet import ShuffleV1Unit, convert_torchvision

# Table 1 of arXiv 1707.01083: output channels of stage2/3/4 at 1x for each group count.
V1_TABLE = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
# Table 5 of arXiv 1807.11164: stage2/3/4 and conv5 output channels.
V2_TABLE = {
    "x0_5": (48, 96, 192, 1024),
    "x1_0": (116, 232, 464, 1024),
    "x1_5": (176, 352, 704, 1024),
    "x2_0": (244, 488, 976, 2048),
}


def _stage_shapes(name: str) -> list[tuple[int, ...]]:
    m = zoo.create_model(name).eval()
    with torch.no_grad():
        return [tuple(o.shape[1:]) for o in m.forward_stages(torch.zeros(1, 3, 224, 224))]


@pytest.mark.parametrize("groups", sorted(V1_TABLE))
def test_v1_stage_table(groups: int) -> None:
    c2, c3, c4 = V1_TABLE[groups]
    assert _stage_shapes(f"shufflenet_v1_g{groups}") == [(24, 56, 56), (c2, 28, 28), (c3, 14, 14), (c4, 7, 7)]


@pytest.mark.parametrize("groups", [3, 8])
def test_v1_units(groups: int) -> None:
    m = zoo.create_model(f"shufflenet_v1_g{groups}")
    for stage, repeats in ((m.stage2, 4), (m.stage3, 8), (m.stage4, 4)):
        assert len(stage) == repeats
        for i, unit in enumerate(stage):
            assert isinstance(unit, ShuffleV1Unit) and unit.stride == (2 if i == 0 else 1)
            out_chs = unit.pw2.conv.out_channels + (unit.pw1.conv.in_channels if i == 0 else 0)
            assert unit.pw1.conv.out_channels == out_chs // 4  # bottleneck is a quarter of the output
            assert unit.dw.conv.groups == unit.dw.conv.in_channels  # depthwise
            assert unit.pw2.conv.groups == groups
            assert isinstance(unit.dw.act, torch.nn.Identity)  # no ReLU after the depthwise conv
    # Section 3.3: the first pointwise conv of stage 2 is not grouped (24 input channels); all the others are.
    assert m.stage2[0].pw1.conv.groups == 1
    assert all(u.pw1.conv.groups == groups for s in (m.stage2[1:], m.stage3, m.stage4) for u in s)


def test_v1_stride2_unit_concatenates_pooled_input() -> None:
    unit = ShuffleV1Unit(24, 240, 2, 3, group_first=False).eval()
    x = torch.rand(1, 24, 8, 8)
    with torch.no_grad():
        out = unit(x)
        assert out.shape == (1, 240, 4, 4)
        assert torch.allclose(out[:, :24], torch.nn.functional.avg_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("width", sorted(V2_TABLE))
def test_v2_stage_table(width: str) -> None:
    c2, c3, c4, c5 = V2_TABLE[width]
    assert _stage_shapes(f"shufflenet_v2_{width}") == [
        (24, 56, 56),
        (c2, 28, 28),
        (c3, 14, 14),
        (c4, 7, 7),
        (c5, 7, 7),
    ]


def test_convert_torchvision_key_map() -> None:
    import torchvision

    sd = torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict()
    out = convert_torchvision(sd)
    native = zoo.create_model("shufflenet_v2_x0_5").state_dict()
    assert len(out) == len(sd) and set(out) == set(native)
    assert all(out[k].shape == native[k].shape for k in out)
    with pytest.raises(KeyError, match="unexpected key"):
        convert_torchvision({**sd, "stage2.0.branch2.2.weight": torch.zeros(1)})
    bad = dict(sd)
    bad["stage2.0.branch2.3.weight"] = torch.zeros(24, 24, 1, 1)  # a pointwise kernel where the depthwise one goes
    with pytest.raises(AssertionError, match="depthwise"):
        convert_torchvision(bad)
