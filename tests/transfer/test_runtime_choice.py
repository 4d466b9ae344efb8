"""How a fit chooses the engine its model serves with: every path of ``choose_runtime``, on a small real network.

The held-out images are decoded once whatever is compared; what does not check out falls back to PyTorch (or to
fp32) with the reason recorded, or is an error when the recipe asked for ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import zoo
from transfer.deploy import runtime
from transfer.deploy.model_format import ONNX_ARTIFACTS, ServingNet
from transfer.errors import UserError

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def net() -> ServingNet:
    torch.manual_seed(0)
    return ServingNet(zoo.create_model("resnet18", num_classes=3).eval())


def _batches(calls: list[int] | None = None) -> Callable:
    """Three batches of 8 random images (the same ones each call); ``calls`` counts the calls."""
    x = torch.randn(24, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(24) % 3

    def batches():
        if calls is not None:
            calls.append(1)
        return iter([(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)])

    return batches


def _choose(net: ServingNet, tmp_path: Path, want: str = "auto", int8: bool = False, val: Callable | None = None):
    return runtime.choose_runtime(net, want, int8, val or _batches(), _batches(), tmp_path, {}, SHAPE)


def test_onnx_serves_when_it_agrees_and_the_held_out_images_are_read_once(net, tmp_path):
    calls: list[int] = []
    choice = _choose(net, tmp_path, int8=True, val=_batches(calls))
    assert len(calls) == 1
    assert choice.runtime == "onnx" and "agrees with PyTorch on 24 held-out images" in choice.reason
    assert choice.metrics["onnx_label_agreement"] >= runtime.MIN_LABEL_AGREEMENT
    assert set(choice.files) <= {ONNX_ARTIFACTS["fp32"], ONNX_ARTIFACTS["int8"]}
    assert "int8_val_acc" in choice.metrics


def test_torch_serves_when_the_recipe_says_so(net, tmp_path):
    choice = _choose(net, tmp_path, want="torch")
    assert (choice.runtime, choice.precision, choice.files) == ("torch", "fp32", {})
    assert choice.reason == "deploy.runtime is torch" and len(choice.val.labels) == 24


def test_an_onnx_model_that_disagrees_falls_back_to_torch_with_the_reason(net, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_PROB_DIFF", -1.0)
    choice = _choose(net, tmp_path)
    assert choice.runtime == "torch" and choice.reason.startswith("ONNX Runtime not used: the ONNX model disagrees")


def test_an_onnx_model_that_disagrees_is_an_error_when_the_recipe_asks_for_onnx(net, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_PROB_DIFF", -1.0)
    with pytest.raises(UserError, match=r"deploy\.runtime onnx: the ONNX model disagrees"):
        _choose(net, tmp_path, want="onnx")


def test_an_export_failure_falls_back_to_torch_with_the_reason(net, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    choice = _choose(net, tmp_path, int8=True)
    assert (
        choice.runtime == "torch" and choice.reason == "ONNX Runtime not used: onnxruntime (or onnx) is not installed"
    )


def test_int8_that_loses_accuracy_is_not_served(net, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "INT8_MAX_LOSS", -1.0)
    choice = _choose(net, tmp_path, int8=True)
    assert (choice.runtime, choice.precision) == ("onnx", "fp32") and "int8 not served" in choice.reason
    assert list(choice.files) == [ONNX_ARTIFACTS["fp32"]]


def test_int8_that_keeps_accuracy_is_served_beside_the_fp32_file(net, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "INT8_MAX_LOSS", 1.0)
    choice = _choose(net, tmp_path, int8=True)
    assert (choice.runtime, choice.precision) == ("onnx", "int8") and "int8 calibrated on up to" in choice.reason
    assert set(choice.files) == {ONNX_ARTIFACTS["fp32"], ONNX_ARTIFACTS["int8"]}
    assert choice.engine.path == choice.files[ONNX_ARTIFACTS["int8"]]


def test_a_quantisation_failure_serves_fp32_with_the_reason(net, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no calibration data")

    monkeypatch.setattr(runtime, "quantize_int8", broken)
    choice = _choose(net, tmp_path, int8=True)
    assert (choice.runtime, choice.precision) == ("onnx", "fp32")
    assert choice.reason.endswith("; int8 quantisation failed: no calibration data")


class _Recorder:
    """An engine that returns fixed features and counts the images it saw."""

    def __init__(self) -> None:
        self.images = 0

    def run(self, batch: torch.Tensor):
        self.images += len(batch)
        return torch.zeros(len(batch), 3).numpy(), torch.full((len(batch), 5), 7.0).numpy()


def test_the_unknown_detector_indexes_what_the_served_engine_computes(net):
    from types import SimpleNamespace

    from transfer.deploy.package import _train_features

    engine = _Recorder()
    job = SimpleNamespace(
        dm=SimpleNamespace(eval_loader=lambda split: _batches()() if split == "train" else None),
        events=SimpleNamespace(phase=lambda *args: None),
        data_config={"input_size": SHAPE},
    )
    feats, labels = _train_features(job, SimpleNamespace(uses_features=False), net, engine)
    assert engine.images == 24 and (feats == 7.0).all() and labels.tolist() == [i % 3 for i in range(24)]
