"""Contract, metadata and parity tests, parametrised over the whole registry (as timm's tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch

import zoo

from ._parity import max_rel_diff, randomize_

MODELS = zoo.list_models()
TIMM_MODELS = [n for n in MODELS if zoo.get_spec(n).timm]
TV_MODELS = [n for n in MODELS if zoo.get_spec(n).torchvision]


def _input(spec: zoo.ArchSpec, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec.input_size[0], spec.min_size, spec.min_size, generator=g)


def _watch_stages(model: zoo.Backbone) -> list[int]:
    """Hook every stage (the list records which ran, in order), then make ``model.stages()`` raise.

    No forward path may call ``stages()``: it is for callers outside the model, and the forward runs the very
    modules it returns, so a hook on a stage fires.
    """
    stages = model.stages()
    assert all(a is b for a, b in zip(stages, model.stages(), strict=True)), "stages() built new modules"
    fired: list[int] = []
    for i, stage in enumerate(stages):
        stage.register_forward_hook(lambda *_, i=i: fired.append(i))

    def forbidden() -> list[torch.nn.Module]:
        raise AssertionError("a forward path called stages()")

    model.stages = forbidden  # an instance attribute shadows the method
    return fired


@pytest.mark.parametrize("name", MODELS)
def test_contract(name: str) -> None:
    """Parameter count, stages/head coverage, held stages run by every forward (hooks fire), shapes, gradients."""
    spec = zoo.get_spec(name)
    torch.manual_seed(0)
    model = zoo.create_model(name)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == spec.num_params, "ArchSpec.num_params disagrees with the built model"

    # stages() + head_modules() cover every parameter exactly once
    seen: dict[int, str] = {}
    groups = [(f"stage{i}", s) for i, s in enumerate(model.stages())] + [
        (f"head{i}", h) for i, h in enumerate(model.head_modules())
    ]
    for group, module in groups:
        for p in module.parameters():
            assert id(p) not in seen, f"a parameter is in both {seen[id(p)]} and {group}"
            seen[id(p)] = group
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    assert not missing, f"parameters in no stage and not in the head: {missing[:5]}"
    assert len(model.feature_info) == len(model.stages())
    n_stages = len(model.feature_info)

    model.reset_classifier(5)
    fired = _watch_stages(model)
    x = _input(spec)
    model.train()
    out = model(x)
    assert out.shape == (2, 5)
    assert n_stages - 1 in fired, "a forward hook on stages()[-1] did not fire during model(x) in training mode"
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.pre_logits_dim)
        stage_outs = model.forward_stages(x)
        assert len(stage_outs) == len(model.feature_info)
        for i, (o, info) in enumerate(zip(stage_outs, model.feature_info)):
            assert o.shape[1] == info.num_chs, f"stage {i}: {o.shape[1]} channels, feature_info says {info.num_chs}"
            # same padding gives ceil(size / reduction); valid padding (Inception, NASNet) a few pixels less
            side = o.shape[-1]
            assert side == 1 or spec.min_size / (2 * info.reduction) < side <= -(-spec.min_size // info.reduction), (
                f"stage {i}: {side} pixels wide at input {spec.min_size}, feature_info says reduction {info.reduction}"
            )
        fired.clear()
        logits = model(x)
        assert fired == list(range(n_stages)), f"stage hooks fired as {fired} in eval, not once each in order"
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_in_chans(name: str) -> None:
    spec = zoo.get_spec(name)
    with torch.device("meta"):  # a shape question: no need to spend time on weights and arithmetic
        model = zoo.create_model(name, in_chans=1, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 1, spec.min_size, spec.min_size)).shape == (1, 3)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_metadata_matches_timm(name: str) -> None:
    import timm.models

    spec = zoo.get_spec(name)
    cfg = timm.models.get_pretrained_cfg(spec.timm)
    assert cfg is not None, f"timm has no pretrained config {spec.timm!r}"
    assert spec.input_size == tuple(cfg.input_size)
    assert spec.mean == pytest.approx(cfg.mean) and spec.std == pytest.approx(cfg.std)
    assert spec.interpolation == cfg.interpolation
    assert spec.crop_pct == pytest.approx(cfg.crop_pct)
    assert spec.first_conv == (cfg.first_conv if isinstance(cfg.first_conv, str) else cfg.first_conv[0])
    assert spec.classifier == (cfg.classifier if isinstance(cfg.classifier, str) else cfg.classifier[0])


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_parity(name: str) -> None:
    import timm

    spec = zoo.get_spec(name)
    ref = timm.create_model(spec.timm.split(".")[0], pretrained=False, **spec.timm_kwargs).eval()
    randomize_(ref)
    native = zoo.create_model(name).eval()
    zoo._weights.load_into(native, spec, zoo.convert_state_dict(name, ref.state_dict(), "timm"))
    x = _input(spec, seed=1)
    with torch.no_grad():
        diff = max_rel_diff(native(x), ref(x))
    assert diff < 1e-4, f"native {name} differs from timm {spec.timm} by {diff:.2e} (relative)"


@pytest.mark.parametrize("name", TV_MODELS)
def test_torchvision_parity(name: str) -> None:
    import torchvision

    spec = zoo.get_spec(name)
    ref = torchvision.models.get_model(spec.torchvision, weights=None).eval()
    randomize_(ref)
    native = zoo.create_model(name).eval()
    zoo._weights.load_into(native, spec, zoo.convert_state_dict(name, ref.state_dict(), "torchvision"))
    x = _input(spec, seed=2)
    with torch.no_grad():
        ref_out = ref(x)
        diff = max_rel_diff(native(x), ref_out)
    assert diff < 1e-4, f"native {name} differs from torchvision {spec.torchvision} by {diff:.2e} (relative)"


PAPER_MODELS = [n for n in MODELS if zoo.get_spec(n).paper_params or zoo.get_spec(n).paper_macs]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_matches_paper(name: str) -> None:
    """Parameter count and multiply-adds at the paper's input size agree with the paper's table within 5%."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = zoo.get_spec(name)
    with torch.device("meta"):  # shapes are all that counting needs: no weights, no arithmetic
        model = zoo.create_model(name).eval()
    if spec.paper_params:
        n = sum(p.numel() for p in model.parameters())
        assert n == pytest.approx(spec.paper_params, rel=0.05), f"{n:,} parameters, paper says {spec.paper_params:,}"
    if spec.paper_macs:
        size = spec.paper_input_size or spec.input_size
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, *size, device="meta"))
        macs = counter.get_total_flops() // 2
        assert macs == pytest.approx(spec.paper_macs, rel=0.05), f"{macs:,} MACs, paper says {spec.paper_macs:,}"
