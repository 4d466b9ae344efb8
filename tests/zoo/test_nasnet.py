"""NASNet-A Large and PNASNet-5 Large specifics: TF 'SAME' ops, cell widths, stage taps as timm's."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.layers import FactorizedReduction, create_conv2d_same, create_pool2d_same

from ._parity import max_rel_diff, randomize_


@pytest.mark.parametrize("size", [7, 8, 15])
@pytest.mark.parametrize(("kernel", "stride"), [(1, 2), (3, 1), (3, 2), (5, 2), (7, 2), (7, 1)])
def test_same_padding_ops_match_timm(size: int, kernel: int, stride: int) -> None:
    """Convs and pools with TF 'SAME' padding agree with timm's ``padding='same'`` layers at odd and even sizes."""
    from timm.layers import create_conv2d, create_pool2d

    x = torch.randn(1, 4, size, size)
    ours = create_conv2d_same(4, 4, kernel, stride, groups=4)
    ref = create_conv2d(4, 4, kernel, stride=stride, padding="same", groups=4)
    ref.load_state_dict(ours.state_dict())
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    if kernel == 3:
        for kind, kw in (("max", {}), ("avg", {"count_include_pad": False})):
            ref_pool = create_pool2d(kind, kernel, stride, padding="same", **kw)
            assert torch.allclose(create_pool2d_same(kind, kernel, stride)(x), ref_pool(x), atol=1e-6)


@pytest.mark.parametrize("size", [7, 8])
def test_factorized_reduction_halves_and_splits_odd_width(size: int) -> None:
    """Output is ceil(H/2) for odd and even inputs; an odd width gives the first path the extra channel."""
    fr = FactorizedReduction(6, 5).eval()
    assert fr.path_1.conv.out_channels == 3 and fr.path_2.conv.out_channels == 2
    assert fr(torch.randn(1, 6, size, size)).shape == (1, 5, (size + 1) // 2, (size + 1) // 2)


@pytest.fixture(scope="module", params=["nasnetalarge", "pnasnet5large"])
def pair(request: pytest.FixtureRequest) -> tuple[zoo.Backbone, torch.nn.Module]:
    """A native model and the timm model it mirrors, with the same random weights."""
    import timm

    spec = zoo.get_spec(request.param)
    ref = timm.create_model(spec.timm.split(".")[0]).eval()
    randomize_(ref)
    native = zoo.create_model(request.param).eval()
    native.load_state_dict(ref.state_dict())
    return native, ref


def test_forward_stages_match_timm_intermediates(pair: tuple[zoo.Backbone, torch.nn.Module]) -> None:
    """Every stage output equals the tensor timm's ``forward_intermediates`` taps (activated cell outputs)."""
    native, ref = pair
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = native.forward_stages(x)
        theirs = ref.forward_intermediates(x, intermediates_only=True)
    assert len(ours) == len(theirs) == len(native.feature_info)
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        assert max_rel_diff(o, t) < 1e-5


def test_cell_widths_follow_the_papers(pair: tuple[zoo.Backbone, torch.nn.Module]) -> None:
    """NASNet-A Large is "6 @ 4032" (F=168 doubling at each reduction, normal cells output 6F); PNASNet-5 Large
    has F=216 and 5F-wide cells."""
    native, _ = pair
    if isinstance(native, zoo.nasnet.NASNetALarge):
        widths = [getattr(native, f"cell_{i}").conv_1x1.conv.out_channels for i in (0, 6, 12)]
        assert widths == [168, 336, 672]
        assert [native.cell_0.comb_iter_0_left.bn_sep_2.num_features * 6, native.num_features] == [1008, 4032]
        assert native.reduction_cell_0.comb_iter_1_left.stride == 2
    else:
        assert [native.cell_0.conv_1x1.conv.out_channels, native.cell_4.conv_1x1.conv.out_channels] == [216, 432]
        assert native.cell_11.conv_1x1.conv.out_channels * 5 == native.num_features == 4320
        assert native.cell_4.comb_iter_4_right is not None and native.cell_5.comb_iter_4_right is None
