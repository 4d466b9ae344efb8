"""The Data tab's audit, "Drop these" and the Model tab's backbone recommendation, through the page's handlers (no
browser): real digits with a planted duplicate (with a conflicting label) and an unreadable file, real MobileNetV2
weights, 64 px. One journey, walked once per test session, records what each visitor saw; each test asserts one
behaviour."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.data_audit import ANALYSIS, DataChecks
from app.limits import Limits
from app.main import build_page
from app.page import APP_EXPERIMENT, Page, Settings
from tests.helpers import session_dir
from transfer.deploy.registry import OWNER_TAG
from transfer.job import dataset_index
from transfer.recipe import load_recipe

# backbone, strategy, epochs, image size, lr, pretrained, batch, augment, optimizer, val fraction, max per class
SETTINGS = ("mobilenetv2_100", "linear_probe", 1, 64, "1e-3", True, 16, "none", "adamw", 0.25, 0)


def _request(name: str) -> Any:
    return SimpleNamespace(username=None, session_hash=name)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def _by_id(out: dict) -> dict[str, Any]:
    return {getattr(k, "elem_id", None) or str(k): v for k, v in out.items()}


def _walk(tmp: Path, flawed_zip: Path) -> dict[str, Any]:
    """Alice loads the flawed digits, audits, asks for a backbone (from resnet18), drops the findings; Bob loads the
    same zip and looks for findings; Carol audits on a page that allows 10 images."""
    demo, page = build_page(tmp / "base", tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    checks, seen = DataChecks(page), {}
    queues = {f.api_name: [f.concurrency_id, f.concurrency_limit] for f in demo.fns.values()}
    seen["queues"] = {name: queues[name] for name in ("audit", "recommend")}
    alice, bob, carol = _request("alice"), _request("bob"), _request("carol")
    conn = page.on_load_data(str(flawed_zip), None, "", None, None, alice)[page.ui.state]
    s = page.session(conn)
    upload = Path(s.dataset.source)
    seen["upload_before"] = _digests(upload)
    seen["audit"] = _by_id(checks.on_audit(conn, *SETTINGS, request=alice))
    seen["shown_again"] = _by_id(checks.on_show(conn, request=alice))
    seen["recommend"] = _by_id(checks.on_recommend(conn, "resnet18", *SETTINGS[1:], request=alice))
    runs = page.store.client.search_runs([page.store.experiment_id(APP_EXPERIMENT)], "params.choice != ''")
    seen["recommend_runs"] = [{**r.data.params, "owner": r.data.tags.get(OWNER_TAG)} for r in runs]
    seen["alice"], seen["recommended_on"] = conn.visitor.owner, s.dataset.label
    seen["drop"] = _by_id(checks.on_drop(conn, request=alice))
    seen["upload_after"] = _digests(upload)
    seen["dataset"], seen["root"] = asdict(s.dataset), str(s.root)
    seen["plan"] = page.on_plan(conn, *SETTINGS, request=alice)[page.ui.train_plan]
    run = s.new_run(Settings.of(*SETTINGS).recipe(False, page.store.uri), {})  # what Train would write now
    index = dataset_index(load_recipe(str(run.recipe_path)))
    seen["next_fit"] = {split: [Path(p).name for p, _ in getattr(index, split)] for split in ("train", "val")}
    other = page.on_load_data(str(flawed_zip), None, "", None, None, bob)[page.ui.state]
    seen["bob_show"] = _by_id(checks.on_show(other, request=bob))
    seen["bob_drop"] = _by_id(checks.on_drop(other, request=bob))
    small = Page(page.base, page.store, Limits(audit_max_images=10))
    small.ui = page.ui
    conn = page.on_load_data(str(flawed_zip), None, "", None, None, carol)[page.ui.state]
    seen["over_limit"] = DataChecks(small).on_audit(conn, *SETTINGS, request=carol)[page.ui.data_audit]
    return seen


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory, flawed_digits_zip: Path) -> dict[str, Any]:
    """:func:`_walk`, once per test session whatever the number of xdist workers (the others read its record)."""
    from filelock import FileLock

    root = session_dir(tmp_path_factory) / "data-audit-journey"
    root.mkdir(parents=True, exist_ok=True)
    done = root / "seen.json"
    with FileLock(str(root) + ".lock"):
        if not done.is_file():
            done.write_text(json.dumps(_walk(root, flawed_digits_zip), default=str))
    return json.loads(done.read_text())


def test_the_audit_shows_each_finding_with_thumbnails(journey: dict[str, Any]) -> None:
    shown = journey["audit"]["data-audit"]
    assert "Exact duplicates (1)" in shown and "labels conflict" in shown and "Unreadable files (1)" in shown
    findings = shown.split('<div class="tw-findings">', 1)[1]  # the sections, after the verdicts and the curve
    assert findings.count('<img src="data:image/png;base64,') >= 2  # both copies of the duplicate at least
    assert "digit_1/copy_of_0.png" in shown and "digit_7/broken.png" in shown
    assert journey["audit"]["drop-findings"]["interactive"] is True


def test_the_audit_shows_the_learning_curve_and_no_forecast_from_a_few_validation_images(
    journey: dict[str, Any],
) -> None:
    shown = journey["audit"]["data-audit"]
    assert 'alt="learning curve"' in shown and "No forecast: too few validation images" in shown


def test_the_audit_shows_no_server_path(journey: dict[str, Any]) -> None:
    shown = journey["audit"]["data-audit"]
    assert str(journey["root"]) not in shown and "/tmp" not in shown and "sessions/" not in shown


def test_a_reload_shows_the_same_findings(journey: dict[str, Any]) -> None:
    assert journey["shown_again"]["data-audit"] == journey["audit"]["data-audit"]


def test_recommend_ranks_with_intervals_and_selects_the_first(journey: dict[str, Any]) -> None:
    rec = journey["recommend"]
    assert rec["backbone"] == "mobilenetv2_100" and rec["pretrained"] is True  # from resnet18, without weights here
    assert "Selected: mobilenetv2_100" in rec["recommend-table"]
    assert re.search(r"\| 1 \| mobilenetv2_100 \(mobilenet_v2-b0353104\.pth\) \| [\d.]+% \([\d.]+% to [\d.]+%\)",
                     rec["recommend-table"])  # fmt: skip


def test_drop_leaves_the_upload_unchanged(journey: dict[str, Any]) -> None:
    assert journey["upload_after"] == journey["upload_before"]


def test_drop_uses_the_cleaned_copy_and_says_what_it_left_out(journey: dict[str, Any]) -> None:
    dataset, said = SimpleNamespace(**journey["dataset"]), journey["drop"]["data-audit"]
    assert "2 files left out" in said and "exact duplicates: 1" in said and "unreadable: 1" in said
    assert dataset.images == 48 and dataset.label.endswith("cleaned") and "48 images" in journey["drop"]["data-summary"]
    assert Path(dataset.source).is_relative_to(Path(journey["root"]) / "uploads")
    assert "cleaned" in journey["plan"]  # the next training says it uses the cleaned copy


def test_the_next_training_reads_the_cleaned_copy(journey: dict[str, Any]) -> None:
    fit = journey["next_fit"]
    assert len(fit["train"]) + len(fit["val"]) == 48 and "broken.png" not in fit["train"] + fit["val"]
    assert ("copy_of_0.png" in fit["train"] + fit["val"]) != ("0.png" in fit["train"] + fit["val"])  # one copy left


def test_a_second_visitor_cannot_see_or_drop_the_first_visitors_findings(journey: dict[str, Any]) -> None:
    assert journey["bob_show"]["data-audit"] == "" and journey["bob_show"]["drop-findings"]["interactive"] is False
    assert "click “Audit my data” first" in journey["bob_drop"]["data-audit"]


def test_an_audit_over_the_image_limit_is_one_line(journey: dict[str, Any]) -> None:
    said = journey["over_limit"]
    assert "49 images is over the 10-image limit" in said and "At most this many images per class" in said


def test_a_recommendation_is_logged_to_mlflow_as_its_visitors_without_a_server_path(journey: dict[str, Any]) -> None:
    (run,) = journey["recommend_runs"]
    assert run["owner"] == journey["alice"] and run["choice"].startswith("mobilenetv2_100")
    assert run["source"] == journey["recommended_on"] == "flawed.zip"


def test_audits_and_recommendations_run_one_at_a_time_on_the_server(journey: dict[str, Any]) -> None:
    assert journey["queues"] == {"audit": [ANALYSIS, 1], "recommend": [ANALYSIS, 1]}
