"""The page through its API (``gradio_client``): two visitors at once, each with their own data, runs and models.

Both deploy under the **same** name: the second is refused, the first keeps answering with the first's classes, and
neither can try the other's model by typing its name.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.app.support import App, zip_tree
from tests.helpers import digits_folder

SHARED = "shared-model"
# backbone, strategy, epochs, image size, lr, pretrained, batch, augment, optimizer, val fraction, max per class
SETTINGS = ("mobilenetv2_100", "linear_probe", 1, 32, 1e-3, True, 16, "none", "adamw", 0.25, 0)
CLASSES = {"alice": (0, 1), "bob": (3, 8, 9)}


def _progress(outputs: tuple) -> str:
    return next(o for o in outputs if isinstance(o, str) and "tw-progress" in o)


def _train(url: str, zip_path: Path) -> tuple[Any, dict[str, Any]]:
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False)
    summary = c.predict(handle_file(str(zip_path)), [], "", None, api_name="/load_data")[0]
    started = _progress(c.predict(*SETTINGS, api_name="/train"))
    again = _progress(c.predict(*SETTINGS, api_name="/train"))  # while the first one runs
    watch = c.submit(api_name="/watch")
    final, run_md = watch.result(timeout=900)
    evaluation = c.predict(api_name="/evaluate")[0]
    return c, {"summary": summary, "started": started, "again": again, "final": final, "run_md": run_md,
               "updates": len(watch.outputs()), "evaluation": evaluation}  # fmt: skip


def _labels(client: Any, sample: Path, model: str) -> tuple[set[str], str]:
    from gradio_client import handle_file

    label, note = client.predict(handle_file(str(sample)), model, api_name="/try")
    return {c["label"] for c in (label or {}).get("confidences", [])}, note


@pytest.fixture(scope="module")
def visitors(app_server: App, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Alice and Bob train at the same time; then Alice deploys `shared-model`, Bob tries the same name, then his
    own; each tries models, theirs and the other's."""
    tmp = tmp_path_factory.mktemp("visitors")
    zips = {}
    for who, classes in CLASSES.items():
        zips[who] = zip_tree(digits_folder(tmp / who / "data", classes=classes, per_class=12), tmp / f"{who}.zip")
    samples = {w: next((tmp / w / "data").rglob("*.png")) for w in CLASSES}
    with ThreadPoolExecutor(2) as ex:
        futures = {w: ex.submit(_train, app_server.url, zips[w]) for w in CLASSES}
        trained = {w: f.result() for w, f in futures.items()}
    (alice, res_a), (bob, res_b) = trained["alice"], trained["bob"]
    res_a["deployed"] = alice.predict(SHARED, "champion", True, api_name="/deploy")[0]
    res_b["deployed_shared"] = bob.predict(SHARED, "champion", True, api_name="/deploy")[0]
    res_b["deployed"] = bob.predict("bobs-model", "champion", True, api_name="/deploy")[0]
    res_a["tried"] = _labels(alice, samples["alice"], f"{SHARED}@champion")
    res_b["tried"] = _labels(bob, samples["bob"], "bobs-model@champion")
    res_b["tried_alices"] = _labels(bob, samples["bob"], f"{SHARED}@champion")
    return {"alice": res_a, "bob": res_b}


def test_each_visitor_trains_on_their_own_data(visitors: dict[str, dict[str, Any]]) -> None:
    assert "24 images in 2 classes" in visitors["alice"]["summary"]
    assert "36 images in 3 classes" in visitors["bob"]["summary"]
    for r in visitors.values():
        assert r["final"] == "finished" and "done" in r["run_md"], r
        assert r["updates"] >= 2  # progress came before the end
        assert "val_acc" in r["evaluation"]


def test_a_second_training_of_the_same_visitor_is_refused(visitors: dict[str, dict[str, Any]]) -> None:
    for r in visitors.values():
        assert "Starting the training process" in r["started"]
        assert "you already have a training running" in r["again"]


def test_the_second_visitor_cannot_take_the_first_ones_name(visitors: dict[str, dict[str, Any]]) -> None:
    assert "Registered" in visitors["alice"]["deployed"] and SHARED in visitors["alice"]["deployed"]
    refused = visitors["bob"]["deployed_shared"]
    assert refused.startswith("❌") and "taken by someone else" in refused
    assert "Registered" in visitors["bob"]["deployed"]


def test_each_deployed_model_answers_with_its_own_visitors_classes(visitors: dict[str, dict[str, Any]]) -> None:
    for who, classes in CLASSES.items():
        labels, note = visitors[who]["tried"]
        assert labels == {f"digit_{c}" for c in classes}, (who, labels, note)


def test_a_visitor_cannot_try_another_visitors_model_by_name(visitors: dict[str, dict[str, Any]]) -> None:
    labels, note = visitors["bob"]["tried_alices"]
    assert not labels and note.startswith("❌") and "of yours" in note


def test_versions_carry_owner_run_and_dataset(visitors: dict[str, dict[str, Any]], app_server: App) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{app_server.data_dir / 'mlflow.db'}")
    version = client.get_model_version_by_alias(SHARED, "champion")
    owner = client.get_registered_model(SHARED).tags["transfer.owner"]
    assert owner.startswith("session-") and version.tags["transfer.owner"] == owner
    assert re.fullmatch(r"[0-9a-f]{32}", version.tags["run_id"]) and version.tags["dataset_digest"]
    assert client.get_registered_model("bobs-model").tags["transfer.owner"] not in (owner, None)


def test_messages_name_no_server_paths(visitors: dict[str, dict[str, Any]], app_server: App) -> None:
    for r in visitors.values():
        for text in (r["deployed"], r["evaluation"], r["run_md"]):
            assert str(app_server.data_dir) not in text and "/tmp" not in text and "sqlite" not in text


def test_training_without_a_dataset_is_refused(app_server: App) -> None:
    from gradio_client import Client

    c = Client(app_server.url, verbose=False)
    assert "no dataset loaded" in _progress(c.predict(*SETTINGS, api_name="/train"))


def test_bad_uploads_get_a_message_on_the_page(app_server: App, tmp_path: Path, one_class_zip: Path) -> None:
    import zipfile

    from gradio_client import Client, handle_file

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("cats/1.png", b"x")
        zf.writestr("../../../escaped.txt", b"gotcha")
    c = Client(app_server.url, verbose=False)
    summary = c.predict(handle_file(str(evil)), [], "", None, api_name="/load_data")[0]
    assert summary.startswith("❌") and "points outside the folder" in summary and "evil.zip" in summary
    assert not list(app_server.data_dir.parent.rglob("escaped.txt"))
    summary = c.predict(handle_file(str(one_class_zip)), [], "", None, api_name="/load_data")[0]
    assert "at least 2 classes" in summary
    summary = c.predict(None, [], "", None, api_name="/load_data")[0]
    assert "upload a zip" in summary
