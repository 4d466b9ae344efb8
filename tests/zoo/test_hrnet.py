"""HRNet specifics: branch widths, the multi-branch stages against timm, stage outputs and feature_info."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.hrnet import BasicBlock, HighResolutionModule

from ._parity import max_rel_diff, randomize_


@pytest.mark.parametrize(
    ("name", "widths", "modules"),
    [("hrnet_w18_small", (16, 32, 64, 128), (1, 1, 1)), ("hrnet_w18", (18, 36, 72, 144), (1, 4, 3))],
)
def test_branch_widths_and_modules(name: str, widths: tuple[int, ...], modules: tuple[int, ...]) -> None:
    """HRNet-Wn: branch widths n, 2n, 4n, 8n; HRNet-W18-C has 1, 4, 3 modules in stages 2-4 (paper Appendix)."""
    model = zoo.create_model(name)
    assert tuple(model.stage4[-1].out_chs) == widths
    assert (len(model.stage2), len(model.stage3), len(model.stage4)) == modules


def test_fusion_keeps_every_resolution() -> None:
    module = HighResolutionModule(BasicBlock, (1, 1, 1), [8, 16, 32], (8, 16, 32)).eval()
    xs = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    with torch.no_grad():
        assert [y.shape for y in module(xs)] == [x.shape for x in xs]


def test_branches_match_timm() -> None:
    """All four branches after stage 4 equal timm's (transitions and fusions wired alike), not just the logits."""
    import timm

    ref = timm.create_model("hrnet_w18_small").eval()
    randomize_(ref)
    native = zoo.create_model("hrnet_w18_small").eval()
    native.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = ref.stages(ref.act2(ref.bn2(ref.conv2(ref.act1(ref.bn1(ref.conv1(x)))))))
        h = x
        for stage in native.stages()[:5]:
            h = stage(h)
    assert len(h) == len(theirs) == 4
    for a, b in zip(h, theirs):
        assert max_rel_diff(a, b) < 1e-5


def test_stages_run_in_sequence_and_report_lowest_resolution() -> None:
    """Calling stages() in order is forward_features; forward_stages reports the newest branch of each stage."""
    model = zoo.create_model("hrnet_w18_small").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = model.forward_stages(x)
        assert torch.equal(outs[-1], model.forward_features(x))
    assert [(o.shape[1], 64 // o.shape[-1]) for o in outs] == [(f.num_chs, f.reduction) for f in model.feature_info]
    assert [f.reduction for f in model.feature_info] == [4, 4, 8, 16, 32, 32]
