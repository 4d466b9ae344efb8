"""FractalNet: the expansion rule, element-wise-mean joins and drop-path (local, global, off at test time)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.fractalnet import FractalBlock, FractalNet


def _small(**kwargs) -> FractalNet:
    torch.manual_seed(0)
    return FractalNet(num_classes=5, channels=(8, 16, 16), **kwargs)


def _bn_eval(model: nn.Module) -> None:
    """BatchNorm on running stats, so images of a batch are computed independently while drop-path stays on."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _reference(columns: list[list[nn.Module]], x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of the final (merged) join of f_C, from f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), f_1(z) = conv(z)."""
    if len(columns) == 1:
        return [columns[0][0](x)]
    first = [c[: len(c) // 2] for c in columns[1:]]
    second = [c[len(c) // 2 :] for c in columns[1:]]
    inner = torch.stack(_reference(first, x)).mean(0)  # the first f_C is complete before the second starts
    return [*_reference(second, inner), columns[0][0](x)]


def test_registered_config_follows_expansion_rule() -> None:
    spec = zoo.get_spec("fractalnet")
    model = zoo.create_model("fractalnet")
    assert spec.input_size == (3, 32, 32)
    assert len(model.blocks) == 5 and model.num_columns == 3
    assert model.depth == 5 * 2 ** (3 - 1) == 20  # the paper's "20 layers"
    for block, chs in zip(model.blocks, (64, 128, 256, 512, 512)):
        assert [len(col) for col in block.columns] == [1, 2, 4]
        assert sum(len(col) for col in block.columns) == 2**3 - 1
        assert all(layer.conv.out_channels == chs for col in block.columns for layer in col)


@pytest.mark.parametrize("num_columns", [1, 2, 3, 4])
def test_block_equals_recursive_expansion(num_columns: int) -> None:
    torch.manual_seed(0)
    block = FractalBlock(3, 4, num_columns, 0.0, 0.15, nn.BatchNorm2d).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        cols = [list(c) for c in block.columns]
        want = torch.stack([block.pool(t) for t in _reference(cols, x)]).mean(0)  # pool each column, then join
        assert torch.allclose(block(x), want, atol=1e-6)


def test_eval_is_deterministic_and_averages_all_columns() -> None:
    model = _small().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert model.last_global_columns is None


def test_drop_path_only_in_training() -> None:
    model = _small()
    model.train()
    _bn_eval(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        outs = [model(x) for _ in range(4)]
        ref = model.eval()(x)
    assert any(not torch.allclose(o, outs[0]) for o in outs[1:]), "drop-path should make training passes differ"
    assert any(not torch.allclose(o, ref) for o in outs)


def test_global_drop_path_selects_a_single_column() -> None:
    model = _small(global_drop_ratio=1.0)
    model.train()
    _bn_eval(model)
    x = torch.randn(6, 3, 32, 32)
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(x)
        cols = model.last_global_columns
        assert cols is not None and (cols >= 0).all() and len(set(cols.tolist())) > 1
        for i, c in enumerate(cols.tolist()):
            assert torch.allclose(out[i], model.forward_column(x[i : i + 1], c)[0], atol=1e-5)


def test_local_drop_path_keeps_at_least_one_input() -> None:
    block = FractalBlock(3, 4, 2, 0.0, 1.0, nn.BatchNorm2d).train()  # every input dropped -> one is rescued
    xs = [torch.full((5, 1, 1, 1), float(v)) for v in (1.0, 2.0, 4.0)]
    out = block.join(xs, [0, 1, 2]).flatten()
    assert set(out.tolist()) <= {1.0, 2.0, 4.0}
    block.drop_path_rate = 0.0
    assert torch.allclose(block.join(xs, [0, 1, 2]), torch.full((5, 1, 1, 1), 7.0 / 3))


def test_deepest_column_is_a_plain_network() -> None:
    model = _small().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = x
        for block in model.blocks:
            for layer in block.columns[-1]:
                y = layer(y)
            y = block.pool(y)
        assert torch.allclose(model.forward_column(x), model.forward_head(y), atol=1e-6)
