"""Parity with the reference model at each family's real input size.

``test_models.py`` compares every model with its timm / torchvision reference at ``spec.min_size``, where nearly
every network ends at 1x1: there a late 3x3 kernel sees one pixel and zero padding, so a flipped or dilated kernel
in the last stage goes unnoticed. Here one model per family (the cheapest variant that has a reference) runs at
``spec.input_size`` (224, 299 or 331), where the last stage is 6x6 to 11x11, with random weights, batch 1, in eval
mode, under ``torch.inference_mode()``.

Picks (family: model, reference):

- alexnet: ``alexnet``, torchvision (224)
- densenet: ``densenet121``, timm (224)
- hrnet: ``hrnet_w18_small``, timm (224)
- inception: ``googlenet``, torchvision (224; ``inception_v3`` is 4x the multiply-adds)
- inception_v4: ``inception_v4``, timm (299; fewer multiply-adds than ``inception_resnet_v2``)
- mobilenet: ``mobilenetv2_100``, timm (224; half of ``mobilenetv1_100``'s multiply-adds)
- nasnet: ``nasnetalarge``, timm (331)
- pnasnet: ``pnasnet5large``, timm (331)
- resnet: ``resnet18``, timm (224)
- resnetv2: ``resnetv2_50``, timm (224)
- shufflenet: ``shufflenet_v2_x0_5``, torchvision (224; v1 has no reference)
- vgg: ``vgg11``, timm (224)
- xception: ``xception``, timm (299)

Cost, measured on one thread (``OMP_NUM_THREADS=1``): the 14 tests take about 16 s of CPU. The heaviest are
NASNet-A Large and PNASNet-5 Large at 331 (about 3 s each: two 24-25 GMAC forwards plus the build), then AlexNet
and VGG-11, whose time goes on drawing 60-130M random weights, not on the forward.

Both models are built on the meta device and materialised empty: their own initialisation would be thrown away
(``randomize_`` overwrites every tensor), and for the 60-130M-parameter models it costs more than the forward.
"""

from __future__ import annotations

import pytest
import torch

import zoo

from ._parity import max_rel_diff, randomize_

PICKS = {
    "alexnet": ("alexnet", "torchvision"),
    "densenet": ("densenet121", "timm"),
    "hrnet": ("hrnet_w18_small", "timm"),
    "inception": ("googlenet", "torchvision"),
    "inception_v4": ("inception_v4", "timm"),
    "mobilenet": ("mobilenetv2_100", "timm"),
    "nasnet": ("nasnetalarge", "timm"),
    "pnasnet": ("pnasnet5large", "timm"),
    "resnet": ("resnet18", "timm"),
    "resnetv2": ("resnetv2_50", "timm"),
    "shufflenet": ("shufflenet_v2_x0_5", "torchvision"),
    "vgg": ("vgg11", "timm"),
    "xception": ("xception", "timm"),
}


def _reference(spec: zoo.ArchSpec, source: str) -> torch.nn.Module:
    if source == "timm":
        import timm

        return timm.create_model(spec.timm.split(".")[0], pretrained=False, **spec.timm_kwargs)
    import torchvision

    return torchvision.models.get_model(spec.torchvision, weights=None)


def _pair(name: str, source: str) -> tuple[zoo.Backbone, torch.nn.Module]:
    """The native model and its reference, in eval mode, with the same random weights."""
    spec = zoo.get_spec(name)
    with torch.device("meta"):
        ref, native = _reference(spec, source), zoo.create_model(name)
    ref, native = ref.to_empty(device="cpu").eval(), native.to_empty(device="cpu").eval()
    # to_empty leaves memory uninitialised: every tensor the forward reads must come from the state dict
    for model in (ref, native):
        held = set(model.state_dict())
        loose = [n for n, _ in (*model.named_parameters(), *model.named_buffers()) if n not in held]
        assert not loose, f"{type(model).__name__}: tensors outside the state dict stay uninitialised: {loose[:3]}"
    randomize_(ref)
    sd = zoo.convert_state_dict(name, ref.state_dict(), source)
    unloaded = [k for k in native.state_dict() if k not in sd and not k.endswith("num_batches_tracked")]
    assert not unloaded, f"native {name} keys the reference does not fill: {unloaded[:3]}"
    zoo._weights.load_into(native, spec, sd)
    return native, ref


def test_every_family_with_a_reference_has_a_pick() -> None:
    with_reference = {zoo.get_spec(n).family for n in zoo.list_models() if zoo.get_spec(n).weight_sources}
    assert set(PICKS) == with_reference
    for family, (name, source) in PICKS.items():
        spec = zoo.get_spec(name)
        assert spec.family == family and source in spec.weight_sources


@pytest.mark.parametrize("name, source", sorted(PICKS.values()), ids=[n for n, _ in sorted(PICKS.values())])
def test_parity_at_input_size(name: str, source: str) -> None:
    """Native and reference logits agree to 1e-4 (relative) at the family's real input size."""
    spec = zoo.get_spec(name)
    side = spec.input_size[1]
    native, ref = _pair(name, source)
    x = torch.randn(1, spec.input_size[0], side, side, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        feats = native.forward_features(x)
        diff = max_rel_diff(native.forward_head(feats), ref(x))
    # the point of this test: the last stage is no 1x1 map, so late-stage kernels act on real neighbourhoods
    assert min(feats.shape[-2:]) >= 3, f"{name} ends at {tuple(feats.shape[-2:])} at {side}x{side}"
    ref_name = spec.timm if source == "timm" else spec.torchvision
    assert diff < 1e-4, f"native {name} differs from {source} {ref_name} by {diff:.2e} (relative) at {side}px"
