"""ONNX Runtime inside the registered model: the same answers as PyTorch, int8 within a point, the runtime recorded.

The digits model (``tests.helpers.digits_model``: real ImageNet MobileNetV2 weights, a linear probe, fitted with
``deploy.int8: true``) is loaded from the registry three ways: as registered (ONNX Runtime, int8), with
``model_config={"precision": "fp32"}`` (ONNX Runtime, fp32) and with ``model_config={"runtime": "torch"}``
(PyTorch), and shown its validation images.
"""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.helpers import digits_model, textures_model
from transfer.deploy import runtime
from transfer.deploy.predict import classifier_of, load_pyfunc
from transfer.recipe import load_recipe
from transfer.tracking import TrackingStore

URI = "models:/digits-trust@champion"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    return digits_model(tmp_path_factory)


@pytest.fixture(scope="module")
def val_images(fitted: dict) -> tuple[list[bytes], np.ndarray]:
    """The fit's validation images and their class names (the recipe's split, as the fit made it)."""
    from transfer.job import dataset_index

    index = dataset_index(load_recipe(fitted["recipe"]))
    return [open(p, "rb").read() for p, _ in index.val], np.array([index.classes[c] for _, c in index.val])


def _load(fitted: dict, **model_config: str):
    store = TrackingStore(fitted["tracking_uri"])
    with store.activated(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.load_model(URI, model_config=model_config or None)


def _predict(model, images: list[bytes]) -> pd.DataFrame:
    out = model.predict(pd.DataFrame({"image": images}))
    assert out["error"].isna().all()
    return out


def test_registered_model_records_runtime_and_precision(fitted: dict) -> None:
    store = TrackingStore(fitted["tracking_uri"])
    mv = store.client.get_model_version_by_alias("digits-trust", "champion")
    assert mv.tags["runtime"] == "onnx" and mv.tags["precision"] == "int8"
    clf = classifier_of(load_pyfunc(URI, store))
    assert (clf.runtime, clf.precision) == ("onnx", "int8")
    assert clf.config["runtime"] == "onnx" and "agrees with PyTorch" in clf.config["runtime_reason"]


def test_onnx_runtime_and_pytorch_agree(fitted: dict, val_images: tuple) -> None:
    images, _ = val_images
    onnx, torch_ = _load(fitted, precision="fp32"), _load(fitted, runtime="torch")
    assert (classifier_of(onnx).runtime, classifier_of(torch_).runtime) == ("onnx", "torch")
    a, b = _predict(onnx, images), _predict(torch_, images)
    assert (a["label"] == b["label"]).mean() >= 0.995
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(float), b[probs].to_numpy(float), atol=1e-3, rtol=0)
    np.testing.assert_allclose(a["ood_score"].to_numpy(float), b["ood_score"].to_numpy(float), atol=1e-3, rtol=0)


def test_int8_loses_at_most_one_point(fitted: dict, val_images: tuple) -> None:
    images, names = val_images
    int8, torch_ = _load(fitted), _load(fitted, runtime="torch")
    assert classifier_of(int8).precision == "int8"  # else this compares fp32 with PyTorch
    acc8 = (_predict(int8, images)["label"].to_numpy() == names).mean()
    acc32 = (_predict(torch_, images)["label"].to_numpy() == names).mean()
    assert acc32 > 0.8 and acc8 >= acc32 - 0.01, (acc8, acc32)
    assert fitted["metrics"]["val_acc"] == pytest.approx(acc32, abs=0.005)  # calibration kept every label


def test_without_onnxruntime_the_model_runs_pytorch(fitted: dict, monkeypatch, caplog) -> None:
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    clf = classifier_of(load_pyfunc(URI, TrackingStore(fitted["tracking_uri"])))
    assert clf.runtime == "torch" and clf.precision == "fp32"
    assert "onnxruntime is not installed here" in caplog.text


@pytest.mark.parametrize("model", ["carried", "quantised-on-export"])
def test_export_int8(model: str, tmp_path_factory, tmp_path, capsys) -> None:
    """``transfer export --format onnx --int8``: the int8 graph a model carries, or one calibrated on its run's
    training images, with the accuracy change on its validation images logged to the run."""
    import onnxruntime as ort

    from transfer.cli import main

    fitted = digits_model(tmp_path_factory) if model == "carried" else textures_model(tmp_path_factory)
    name = "digits-trust" if model == "carried" else "textures"
    out = tmp_path / "m.onnx"
    args = ["export", f"models:/{name}@champion", "--format", "onnx", "--int8", "-o", str(out)]
    assert main([*args, "--tracking-uri", fitted["tracking_uri"]]) == 0
    assert capsys.readouterr().out.strip() == f"exported: {out.resolve()}"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = np.zeros((2, *session.get_inputs()[0].shape[1:]), dtype=np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape[0] == 2
    if model == "quantised-on-export":
        metrics = TrackingStore(fitted["tracking_uri"]).client.get_run(fitted["run_id"]).data.metrics
        assert metrics["export_int8_acc_change"] >= -0.01, json.dumps(metrics)
