"""Xception: the paper's Figure 5 layout and timm's stage taps."""

from __future__ import annotations

import torch
from torch import nn

import zoo

from ._parity import max_rel_diff, randomize_


def test_figure5_layout() -> None:
    model = zoo.create_model("xception")
    # entry flow widths, then eight identical 728-channel middle-flow blocks with identity shortcuts
    assert [model.block1.skip.out_channels, model.block2.skip.out_channels, model.block3.skip.out_channels] == [
        128,
        256,
        728,
    ]
    middle = [getattr(model, f"block{i}") for i in range(4, 12)]
    assert all(b.skip is None and sum(isinstance(m, nn.ReLU) for m in b.rep) == 3 for b in middle)
    # depthwise separable convs: a per-channel 3x3 then a 1x1, neither with bias
    sep = model.conv4
    assert sep.conv1.groups == sep.conv1.in_channels == 1536 and sep.pointwise.kernel_size == (1, 1)
    assert sep.conv1.bias is None and sep.pointwise.bias is None


def test_stages_match_timm_taps() -> None:
    """Stage outputs are timm's feature taps before the ReLU that opens the next block (the last is activated)."""
    import timm

    ref = timm.create_model("legacy_xception").eval()
    randomize_(ref)
    native = zoo.create_model("xception").eval()
    native.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 71, 71, generator=torch.Generator().manual_seed(0))  # large enough for every stride
    with torch.no_grad():
        taps = ref.forward_intermediates(x, intermediates_only=True)
        outs = native.forward_stages(x)
        assert max_rel_diff(native(x), ref(x)) < 1e-4
    assert [(f.num_chs, f.reduction) for f in native.feature_info] == [
        (f["num_chs"], f["reduction"]) for f in ref.feature_info
    ]
    for i, (o, t) in enumerate(zip(outs, taps)):
        assert max_rel_diff(o.relu(), t) < 1e-4, f"stage {i}"
