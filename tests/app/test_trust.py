"""The page's trust views, through its handlers (no browser): the Evaluate tab's reliability diagram, the Deploy
tab's model card, and the try-it's "not sure" on a photo shown to a digits model.

The run is the shared digits fit (``tests.helpers.digits_model``: real ImageNet MobileNetV2 weights, a linear probe,
calibrated, ``deploy.ood: knn``, int8 ONNX Runtime), opened as one of a visitor's page runs; the visitor deploys it
from the page and tries it on scikit-image's photos and on digits the fit never saw. One journey, walked once per
test session, records what the page returned; each test asserts one behaviour.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from app.evaluate import UNKNOWN_NOTE
from app.main import build_page
from app.runs import RunFolder
from tests.helpers import DIGITS_TRAIN_PER_CLASS, digit_images, digits_model, session_dir

PHOTOS = ("chelsea", "coffee")
FRESH_DIGITS = 10  # one unseen image of each digit


def _request() -> Any:
    return SimpleNamespace(username=None, session_hash="trust")


def _walk(tmp: Path, fitted: dict[str, Any]) -> dict[str, Any]:
    """A visitor opens the digits fit as one of their page runs, looks at its Evaluate tab, deploys it from the page
    and tries it on photos and on unseen digits; what each handler returned, as the page would show it."""
    from skimage import data

    _, page = build_page(tmp / "base", tracking_uri=fitted["tracking_uri"])
    ui, conn = page.ui, page.conn(None, _request())
    session = page.session(conn)
    run = RunFolder.create(session.runs_dir, yaml.safe_load(Path(fitted["recipe"]).read_text()), {})
    fit_dir = RunFolder(Path(fitted["dir"]) / "runs").fit_dir.path  # the fit's run.json, found as the page finds it
    shutil.copytree(fit_dir, run.path / fit_dir.name, ignore=shutil.ignore_patterns("*.ckpt", ".lock"))
    session.open_run(run.name)
    evaluated = page.on_evaluate(conn, _request())
    diagram, card = evaluated[ui.reliability] or {}, evaluated[ui.card_md]
    if isinstance(diagram.get("value"), Image.Image):
        diagram["value"].save(tmp / "reliability.png")
    name = f"trust-{uuid.uuid4().hex[:8]}"
    seen = {
        "diagram": {"visible": diagram.get("visible"), "file": str(tmp / "reliability.png")},
        "card": {"visible": card.get("visible"), "text": card.get("value")},
        "deployed": page.on_deploy(name, "champion", False, conn, _request())[ui.deploy_md],
        "photos": {},
        "digits": [],
    }
    for photo in PHOTOS:
        Image.fromarray(getattr(data, photo)()).save(tmp / f"{photo}.jpg", quality=90)
    for i, (png, _) in enumerate(digit_images(DIGITS_TRAIN_PER_CLASS, per_class=1)):  # one unseen image per digit
        (tmp / f"digit-{i}.png").write_bytes(png)
    for path in [tmp / f"{p}.jpg" for p in PHOTOS] + sorted(tmp.glob("digit-*.png")):
        out = page.on_try(str(path), f"{name}@champion", conn, _request())
        shown = {"scores": bool(out[ui.try_label]), "note": out[ui.try_md]}
        if path.stem in PHOTOS:
            seen["photos"][path.stem] = shown
        else:
            seen["digits"].append(shown)
    return seen


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> dict[str, Any]:
    """The walk (:func:`_walk`), made once per test session whatever the number of xdist workers."""
    from filelock import FileLock

    fitted = digits_model(tmp_path_factory)
    shared = session_dir(tmp_path_factory) / "trust-page"
    shared.mkdir(exist_ok=True)
    done = shared / "journey.json"
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            done.write_text(json.dumps({**_walk(shared, fitted), "fitted": fitted}))
    return json.loads(done.read_text())


def test_evaluate_shows_a_visible_reliability_diagram(journey: dict[str, Any]) -> None:
    shown = journey["diagram"]
    assert shown["visible"] is True and Path(shown["file"]).is_file(), shown
    img = Image.open(shown["file"])
    assert min(img.size) >= 200 and np.asarray(img.convert("L")).std() > 10  # a drawn chart, not a blank


def test_deploy_tab_shows_the_model_card_with_ece_and_the_unknown_operating_point(journey: dict[str, Any]) -> None:
    card, d = journey["card"], journey["fitted"]["deployment"]
    expected = [
        f"ECE (15 bins) {d['ece_before']:.4f} before, {d['ece_after']:.4f} after",
        f"`ood_score` > {d['ood_threshold']:.4g}",
        f"measured {100 * d['ood_false_alarm_val']:.1f}% on the validation images",
    ]
    assert card["visible"] is True
    missing = [e for e in expected if e not in card["text"]]
    assert not missing, (missing, card["text"])


@pytest.mark.parametrize("photo", PHOTOS)
def test_try_it_says_not_sure_on_a_photo(journey: dict[str, Any], photo: str) -> None:
    shown = journey["photos"][photo]
    assert "Registered" in journey["deployed"] and shown["scores"]  # the scores are shown whatever the note says
    assert UNKNOWN_NOTE in shown["note"], shown


def test_try_it_is_sure_on_most_unseen_digits(journey: dict[str, Any]) -> None:
    notes = [shown["note"] for shown in journey["digits"]]
    flagged = sum(UNKNOWN_NOTE in n for n in notes)
    assert len(notes) == FRESH_DIGITS and flagged <= 1, notes  # the detector's operating point: 5% false alarms
