"""AmoebaNet-A specifics: the genotype's cell shapes, the paper's mobile row, drop-connect."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.amoebanet import AMOEBA_A_NORMAL, AMOEBA_A_REDUCTION, AmoebaCell, AmoebaNet


def test_cells_concat_unused_states() -> None:
    """The normal cell concatenates 4 hidden states (1, 3, 4, 6), the reduction cell 5 (2-6) at half resolution."""
    x, x_prev = torch.randn(2, 40, 8, 8), torch.randn(2, 30, 16, 16)
    normal = AmoebaCell(AMOEBA_A_NORMAL, 30, 40, 8, reduction=False, prev_resolution=2)
    reduction = AmoebaCell(AMOEBA_A_REDUCTION, 30, 40, 8, reduction=True, prev_resolution=2)
    assert normal.concat == [1, 3, 4, 6] and reduction.concat == [2, 3, 4, 5, 6]
    assert normal(x, x_prev).shape == (2, 32, 8, 8)
    assert reduction(x, x_prev).shape == (2, 40, 4, 4)
    # only ops reading a cell input stride in a reduction cell
    assert reduction.comb_iter_1_right.separable_1.depthwise_conv2d.stride == (1, 1)  # reads state 2
    assert reduction.comb_iter_1_left.pool.stride == 2  # reads state 0


def test_mobile_row_of_the_paper() -> None:
    """AmoebaNet-A (N=4, F=50) in the mobile setting: 5.1M parameters, 555M multiply-adds at 224 (Table 3)."""
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = AmoebaNet(num_cells=4, width=50).eval()
        x = torch.zeros(1, 3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.1e6, rel=0.01)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() // 2 == pytest.approx(555e6, rel=0.01)


def test_odd_stem_width_and_stage_outputs() -> None:
    """F/2 may be odd (F=190 gives 95): the factorized reduction still produces it; stages match feature_info."""
    model = AmoebaNet(num_cells=1, width=10).eval()
    assert model.cell_stem_1.conv_prev_1x1.final_path_bn.num_features == 5
    with torch.no_grad():
        outs = model.forward_stages(torch.randn(1, 3, 64, 64))
    assert [(o.shape[1], round(64 / o.shape[-1])) for o in outs] == [
        (f.num_chs, f.reduction) for f in model.feature_info
    ]


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    plain = AmoebaNet(num_cells=1, width=8, num_classes=3).eval()
    dropped = AmoebaNet(num_cells=1, width=8, num_classes=3, drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(dropped.eval()(x), plain(x))
        dropped.train()
        torch.manual_seed(1)
        a = dropped(x)
        torch.manual_seed(2)
        assert not torch.allclose(a, dropped(x))
