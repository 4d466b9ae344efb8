"""ResNet-family specifics: paper shapes, widths, dilation, deformable convs, pre-activation, converters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.layers import DeformableConv2d, dilate_strides
from zoo.resnet import convert_torchvision
from zoo.resnetv2 import convert_timm as convert_timm_v2

from ._parity import max_rel_diff, randomize_


@pytest.fixture(scope="module")
def resnet50() -> zoo.Backbone:
    torch.manual_seed(0)
    model = zoo.create_model("resnet50").eval()
    randomize_(model)
    return model


def test_resnet50_stage_shapes_match_paper_table1(resnet50: zoo.Backbone) -> None:
    """Table 1 of the ResNet paper: conv1 112 -> pool 56 (conv2_x), 28, 14, 7 at 224x224."""
    with torch.no_grad():
        outs = resnet50.forward_stages(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (64, 56, 56),
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]


@pytest.mark.parametrize(
    ("name", "conv2", "groups"),
    [
        ("resnet50", (512, 512), 1),  # layer4.0.conv2: 512 -> 512
        ("wide_resnet50_2", (1024, 1024), 1),  # bottleneck width doubled
        ("resnext50_32x4d", (1024, 32), 32),  # 32 groups of 32 at the last stage (4 per group at stage 1)
    ],
)
def test_bottleneck_widths(name: str, conv2: tuple[int, int], groups: int) -> None:
    model = zoo.create_model(name)
    conv = model.layer4[0].conv2
    assert (conv.weight.shape[0], conv.weight.shape[1]) == conv2
    assert conv.groups == groups
    assert model.layer4[0].conv3.weight.shape[:2] == (2048, conv2[0])


def test_resnext_stage1_is_32x4d() -> None:
    conv = zoo.create_model("resnext50_32x4d").layer1[0].conv2
    assert conv.groups == 32 and conv.weight.shape[:2] == (128, 4)


def test_se_blocks_reduce_by_16() -> None:
    model = zoo.create_model("seresnet50")
    se = model.layer4[2].se
    assert se.fc1.weight.shape[:2] == (128, 2048) and se.fc2.weight.shape[:2] == (2048, 128)
    assert zoo.create_model("resnet50").layer4[2].se is None


def test_senet154_structure() -> None:
    """SENet-154 (SE paper appendix): deep 3x3 stem, first 1x1 halved, 3x3 stride-2 projections, 64x4d groups."""
    model = zoo.create_model("senet154")
    assert isinstance(model.conv1, nn.Sequential) and model.conv1[0].kernel_size == (3, 3)
    block = model.layer2[0]
    assert block.conv1.out_channels == block.conv2.out_channels // 2
    assert block.conv2.groups == 64
    assert block.downsample[0].kernel_size == (3, 3) and block.downsample[0].stride == (2, 2)
    assert model.layer1[0].downsample[0].kernel_size == (1, 1)  # stride 1: no spatial kernel needed
    assert block.se is not None


def test_dilate_strides() -> None:
    assert dilate_strides((1, 2, 2, 2), 32, net_stride=4) == [(1, 1), (2, 1), (2, 1), (2, 1)]
    assert dilate_strides((1, 2, 2, 2), 16, net_stride=4) == [(1, 1), (2, 1), (2, 1), (1, 2)]
    assert dilate_strides((1, 2, 2, 2), 8, net_stride=4) == [(1, 1), (2, 1), (1, 2), (1, 4)]


def test_dilated_resnet50_keeps_stride_8_and_resnet50_weights(resnet50: zoo.Backbone) -> None:
    model = zoo.create_model("resnet50_dilated").eval()
    own = model.state_dict()
    ref = resnet50.state_dict()
    assert own.keys() == ref.keys() and all(own[k].shape == ref[k].shape for k in own)
    zoo._weights.load_into(model, zoo.get_spec("resnet50_dilated"), ref)
    assert [f.reduction for f in model.feature_info] == [4, 4, 8, 8, 8]
    assert model.layer4[1].conv2.dilation == (4, 4) and model.layer3[1].conv2.dilation == (2, 2)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 2048, 8, 8)
    os16 = zoo.create_model("resnet50_dilated", output_stride=16)
    assert [f.reduction for f in os16.feature_info] == [4, 4, 8, 16, 16]


def test_deformable_resnet50_starts_as_resnet50(resnet50: zoo.Backbone) -> None:
    spec = zoo.get_spec("resnet50_dcn")
    model = zoo.create_model("resnet50_dcn").eval()
    zoo._weights.load_into(model, spec, resnet50.state_dict())  # offsets are new keys, everything else loads
    dcn = [n for n, m in model.named_modules() if isinstance(m, DeformableConv2d)]
    assert dcn == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(model(x), resnet50(x)) < 1e-5
        nn.init.normal_(model.layer4[0].conv2.conv_offset.weight, std=0.1)
        assert max_rel_diff(model(x), resnet50(x)) > 1e-3  # offsets move the sampling grid


def test_deformable_offsets_train() -> None:
    # zero_init_last off: a zeroed bn3 would block every gradient into the residual branch, offsets included
    model = zoo.create_model("resnet50_dcn", num_classes=3, deformable_stages=(3, 4), zero_init_last=False).train()
    assert isinstance(model.layer3[0].conv2, DeformableConv2d)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.layer4[1].conv2.conv_offset.weight.grad.abs().sum() > 0


def test_deformable_conv_with_zero_offsets_is_a_conv() -> None:
    torch.manual_seed(0)
    dcn = DeformableConv2d(8, 16, 3, stride=2, dilation=2, groups=2)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
    conv.weight.data.copy_(dcn.weight.data)
    x = torch.randn(2, 8, 15, 15)
    assert torch.allclose(dcn(x), conv(x), atol=1e-5)


def test_preact_block_order() -> None:
    """Pre-activation (Identity Mappings, Fig. 4e): stage outputs are raw sums, the final BN-ReLU makes them >= 0."""
    model = zoo.create_model("resnetv2_50").eval()
    randomize_(model)
    assert model.stem.conv.weight.shape == (64, 3, 7, 7) and not hasattr(model, "bn1")
    with torch.no_grad():
        outs = model.forward_stages(torch.randn(2, 3, 64, 64))
    assert (outs[3] < 0).any()  # no ReLU after a pre-activation block
    assert (outs[4] >= 0).all()  # the last stage ends with the final norm + ReLU
    assert model.pre_logits_dim == 2048 and model.get_classifier().out_features == 1000
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.head_modules() == [model.head]


def test_resnetv2_convert_timm_maps_stages_and_conv_head() -> None:
    sd = {"stages.0.blocks.0.conv1.weight": torch.zeros(1), "head.fc.weight": torch.zeros(10, 2048, 1, 1)}
    out = convert_timm_v2(sd)
    assert set(out) == {"layers.0.blocks.0.conv1.weight", "head.fc.weight"}
    assert out["head.fc.weight"].shape == (10, 2048)


def test_torchvision_converter_refuses_foreign_keys() -> None:
    assert convert_torchvision({"layer1.0.conv1.weight": torch.zeros(1)}) == {"layer1.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="not a torchvision ResNet"):
        convert_torchvision({"features.0.weight": torch.zeros(1)})


def test_drop_path_schedule() -> None:
    model = zoo.create_model("resnet18", drop_path_rate=0.3)
    assert model.layer1[0].drop_path is None  # first block: rate 0
    assert model.layer4[1].drop_path.p == pytest.approx(0.3)


def test_group_norm_option() -> None:
    model = zoo.create_model("resnet18", norm_layer="groupnorm")
    assert isinstance(model.bn1, nn.GroupNorm)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("se_resnet50", "seresnet50"), ("resnet-50", "resnet50"), ("preact_resnet50", "resnetv2_50")],
)
def test_aliases(alias: str, name: str) -> None:
    assert zoo.get_spec(alias).name == name
