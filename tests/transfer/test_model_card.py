"""The model card: registered with every version (its description), holding the numbers the fit measured.

Read back through ``MlflowClient`` from the digits model (``tests.helpers.digits_model``), and from a quick fit on
digits whose validation folder copies training images (the fit-time audit's findings).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.helpers import digits_model, leaky_digits_folder, shared_fit
from transfer.deploy.registry import register
from transfer.tracking import TrackingStore


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    return digits_model(tmp_path_factory)


@pytest.fixture(scope="module")
def card(fitted: dict) -> str:
    store = TrackingStore(fitted["tracking_uri"])
    mv = store.client.get_model_version_by_alias("digits-trust", "champion")
    assert mv.description, "the registered version has no description"
    return mv.description


def test_card_holds_the_measured_numbers(fitted: dict, card: str) -> None:
    m, d = fitted["metrics"], fitted["deployment"]
    run = TrackingStore(fitted["tracking_uri"]).client.get_run(fitted["run_id"]).data.metrics
    expected = [
        f"Accuracy {m['val_acc']:.3f} (95% Wilson interval {m['val_acc_low']:.3f}-{m['val_acc_high']:.3f})",
        f"{d['ece_before']:.4f} before, {d['ece_after']:.4f} after",
        f"Temperature {d['temperature']:.3f}",
        f"`ood_score` > {d['ood_threshold']:.4g}",
        f"measured {100 * d['ood_false_alarm_val']:.1f}% on the validation images",
        "onnx at int8",
        f"{100 * run['int8_acc_change']:+.2f} points",
        f"{run['latency_ms_b1']:.1f} ms for one image",
        "`linear_probe`",
        "`mobilenetv2_100`",
        "10 classes, ",
        "## Intended use and limits",
    ]
    missing = [e for e in expected if e not in card]
    assert not missing, (missing, card)


def test_card_is_a_run_artifact(fitted: dict, card: str) -> None:
    client = TrackingStore(fitted["tracking_uri"]).client
    with tempfile.TemporaryDirectory() as tmp:
        logged = Path(client.download_artifacts(fitted["run_id"], "model_card.md", tmp)).read_text()
    assert logged == card


def test_registering_a_logged_model_again_carries_its_card(fitted: dict, card: str) -> None:
    """The page registers models a fit logged (``register``): the new version's description is the run's card."""
    store = TrackingStore(fitted["tracking_uri"])
    version, _ = register(store, fitted["model_uri"], "digits-trust-copy", alias=None)
    assert store.client.get_model_version("digits-trust-copy", str(version)).description == card


def test_card_carries_the_fit_time_audit_findings(tmp_path_factory) -> None:
    leaky = shared_fit(
        tmp_path_factory,
        "leaky-digits",
        data={"source": str(leaky_digits_folder(tmp_path_factory.getbasetemp() / "leaky-digits"))},
        strategy={"name": "linear_probe"},
        tracking={"register_as": "leaky-digits"},
        deploy={"runtime": "torch", "ood": "off"},
    )
    client = TrackingStore(leaky["tracking_uri"]).client
    card = client.get_model_version_by_alias("leaky-digits", "champion").description
    audit = client.get_run(leaky["run_id"]).data.metrics
    expected = [
        f"leaks {audit['audit_leaks']:g}, ",
        f"exact duplicates {audit['audit_exact_duplicates']:g}, ",
        f"label issues {audit['audit_label_issues']:g}, ",
        f"outliers {audit['audit_outliers']:g}, ",
        f"unreadable {audit['audit_unreadable']:g}",
        "  - leakage: 12 validation images are copies of training images",
        "  - exact duplicates: remove these 12 extra copies",
    ]
    missing = [e for e in expected if e not in card]
    assert audit["audit_leaks"] == 12 and not missing, (missing, card)
