"""Calibrated scores: the registered model's probabilities mean what they say, and its labels did not move.

A quickly fitted digits model (``tests.helpers.digits_quick_model``: real ImageNet MobileNetV2 weights, a linear
probe trained briefly, so underconfident) has its temperature fitted on its 600 validation images; the ECE before
and after is cross-fitted (each half calibrated by the other half's temperature).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import digits_quick_model
from transfer.recipe import load_recipe
from transfer.tracking import TrackingStore


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    return digits_quick_model(tmp_path_factory)


def test_temperature_halves_the_calibration_error(fitted: dict) -> None:
    metrics = TrackingStore(fitted["tracking_uri"]).client.get_run(fitted["run_id"]).data.metrics
    before, after = metrics["ece_before"], metrics["ece_after"]
    assert after <= before / 2 or after < 0.03, (before, after)
    assert fitted["deployment"]["temperature"] == pytest.approx(metrics["temperature"])
    assert fitted["deployment"]["ece_after"] == pytest.approx(after)


def test_reliability_diagram_is_logged(fitted: dict) -> None:
    client = TrackingStore(fitted["tracking_uri"]).client
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(fitted["run_id"], "calibration/reliability.png", tmp)
        img = Image.open(io.BytesIO(Path(path).read_bytes()))
        assert img.format == "PNG" and img.width > 2 * img.height * 0.8  # two panels side by side: before, after


def test_calibrated_probabilities_keep_the_labels(fitted: dict) -> None:
    """The served (calibrated) model's labels on the validation images give the accuracy the fit reported on its
    uncalibrated logits."""
    from transfer.deploy.predict import classifier_of, load_pyfunc
    from transfer.job import dataset_index

    index = dataset_index(load_recipe(fitted["recipe"]))
    clf = classifier_of(load_pyfunc("models:/digits-quick@champion", TrackingStore(fitted["tracking_uri"])))
    assert clf.temperature != 1.0
    out = clf.predict([Path(p).read_bytes() for p, _ in index.val])
    acc = (out["label"].to_numpy() == [index.classes[c] for _, c in index.val]).mean()
    assert acc == pytest.approx(fitted["metrics"]["val_acc"], abs=0.01)
    assert out["score"].astype(float).between(0, 1).all()
