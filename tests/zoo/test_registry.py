"""Registry, weight loading and bad-input behaviour of the zoo API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import zoo
from zoo._registry import register_model


def test_list_models_pattern() -> None:
    names = zoo.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert all(n.startswith("resnet") for n in zoo.list_models("resnet*"))
    assert zoo.list_models("no-such-model*") == []


def test_duplicate_registration_is_an_error() -> None:
    existing = zoo.list_models()[0]
    spec = zoo.get_spec(existing)

    def builder(**kwargs):
        return None

    builder.__name__ = existing
    with pytest.raises(ValueError, match="registered twice"):
        register_model(family="x", paper="x", arxiv=None, year=2000, num_params=1)(builder)
    assert zoo.get_spec(existing) is spec


def test_unknown_model_suggests_close_match() -> None:
    with pytest.raises(zoo.UnknownModelError, match="did you mean 'resnet50'"):
        zoo.create_model("resnet5O")
    with pytest.raises(zoo.UnknownModelError, match="unknown model 'qwertyuiop'"):
        zoo.get_spec("qwertyuiop")


def test_aliases_resolve() -> None:
    assert zoo.get_spec("resnet-50").name == "resnet50"
    assert zoo.get_spec("mobilenet_v2").name == "mobilenetv2_100"
    assert zoo.get_spec("ResNet_18").name == "resnet18"


def test_missing_weight_file(tmp_path) -> None:
    with pytest.raises(zoo.WeightsUnavailableError, match="does not exist"):
        zoo.create_model("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_wrong_architecture_checkpoint(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(zoo.create_model("resnet18").state_dict(), path)
    with pytest.raises(zoo.CheckpointMismatchError, match="does not fit mobilenetv2_100"):
        zoo.create_model("mobilenetv2_100", pretrained=str(path))


def test_local_checkpoint_roundtrip_safetensors_and_pth(tmp_path) -> None:
    from safetensors.torch import save_file

    src = zoo.create_model("resnet18", num_classes=10).eval()
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(src.state_dict(), tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    for f in ("w.safetensors", "w.pth"):
        dst = zoo.create_model("resnet18", num_classes=10, pretrained=str(tmp_path / f)).eval()
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))


def test_head_is_remade_and_stem_adapted(tmp_path) -> None:
    src = zoo.create_model("resnet18").eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = zoo.create_model("resnet18", num_classes=4, in_chans=1, pretrained=str(tmp_path / "w.pth"))
    assert dst.fc.out_features == 4
    # a gray image as one channel gives the same features as that image repeated over RGB
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = dst.eval().forward_features(gray)
        b = src.forward_features(gray.expand(1, 3, 64, 64))
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": subprocess.Popen}, path)  # needs unpickling code
    with pytest.raises(zoo.CheckpointMismatchError, match="cannot read weight file"):
        zoo.create_model("resnet18", pretrained=str(path))


def test_offline_hub_gives_one_clear_error(tmp_path) -> None:
    """With the hubs unreachable and empty caches, pretrained=True names the ways out."""
    code = (
        "import zoo\n"
        "try:\n"
        "    zoo.create_model('resnet18', pretrained='timm')\n"
        "except zoo.WeightsUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    import os

    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert out.stdout.startswith("ERR could not get timm weights"), out.stderr[-2000:]
    assert "local .safetensors/.pth/.bin file" in out.stdout and "pretrained=False" in out.stdout

    code_tv = code.replace("pretrained='timm'", "pretrained='torchvision'")
    out = subprocess.run([sys.executable, "-c", code_tv], env={**os.environ, **env}, capture_output=True, text=True)
    # torch.hub announces its download attempt on stdout before failing
    assert "ERR could not get torchvision weights" in out.stdout, out.stderr[-2000:]


def test_unknown_tags() -> None:
    with pytest.raises(zoo.WeightsUnavailableError, match=r"timm has no weights 'resnet18\.nope'"):
        zoo.create_model("resnet18", pretrained="timm:nope")
    with pytest.raises(zoo.WeightsUnavailableError, match="IMAGENET1K_V1"):
        zoo.create_model("resnet18", pretrained="torchvision:NOPE")
    with pytest.raises(zoo.WeightsUnavailableError, match="neither a source"):
        zoo.create_model("resnet18", pretrained="hub")
