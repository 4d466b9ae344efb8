"""The page in a real browser (Playwright driving Debian's Chromium, headless), as a visitor uses it.

Each expensive journey (a training) runs once in a module fixture that records what the visitor saw; the tests then
assert one behaviour each. The app runs under ``nohup`` with SIGINT ignored, as a service manager starts it.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import pytest

from app.runs import list_runs
from tests.app.support import CHROMIUM, App, browser, ignores_sigint, shot, zip_tree, zombies_of
from tests.helpers import digits_folder

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

PHONE = {"width": 390, "height": 844}
TABS = ("1 Data", "2 Model", "3 Train", "4 Evaluate", "5 Deploy", "6 Try it")
PROBE_EPOCHS = 10


# ------------------------------------------------------------------------------------------------ page actions
def _upload_zip(page: Any, path: Path) -> None:
    clear = page.locator("#data-zip button[aria-label=Clear]")
    if clear.count():  # a zip is loaded: take it away first, as a visitor would
        clear.click()
    page.locator("#data-zip input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(1500)  # the upload finishes before the button reads the component
    page.locator("#load-data").click()


def _number(page: Any, elem: str, value: int) -> None:
    box = page.locator(f"#{elem} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _model(page: Any, strategy: str, epochs: int, size: int, **advanced: int) -> None:
    page.get_by_role("tab", name="2 Model").click()
    page.get_by_label(strategy, exact=True).check()
    _number(page, "epochs", epochs)
    _number(page, "image-size", size)
    if advanced:
        page.locator("#advanced").get_by_text("Advanced").click()
        if "batch_size" in advanced:
            _number(page, "batch-size", advanced["batch_size"])
        if "max_per_class" in advanced:
            box = page.locator("#max-per-class input")
            box.fill(str(advanced["max_per_class"]))
            box.press("Enter")
    page.wait_for_timeout(800)


def _open_with(page: Any, url: str, data: Path, loaded: str, strategy: str, epochs: int, size: int) -> None:
    """Open the page, load the zip ``data`` (its summary says ``loaded``) and set the Model tab."""
    page.goto(url)
    _upload_zip(page, data)
    page.locator("#data-summary").get_by_text(loaded).wait_for(timeout=60_000)
    _model(page, strategy, epochs=epochs, size=size)


def _phase(page: Any) -> str:
    loc = page.locator("#train-progress .tw-phase")
    return loc.inner_text() if loc.count() else ""


def _wait_phase(page: Any, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _phase(page)
        if re.search(pattern, text):
            return text
        assert "Training failed" not in text, text
        page.wait_for_timeout(200)
    raise AssertionError(f"no {pattern!r} on the page in {timeout:.0f} s; last: {_phase(page)!r}")


def _markers(page: Any, chart: str, series: str) -> dict[str, Any]:
    """What the chart drew for one series: its marker count and its line's vertices."""
    group = page.locator(f"#{chart} g#curve-{series}")
    path = group.locator("path").first.get_attribute("d") or ""
    return {"markers": group.locator("use").count(), "vertices": len(re.findall(r"[ML] ", path))}


def _history_statuses(page: Any) -> list[str]:
    """The statuses Gradio's run history (the footer's "Runs") keeps in the browser."""
    script = """() => Object.keys(localStorage).flatMap(k => {
        try { const v = JSON.parse(localStorage.getItem(k)); return Array.isArray(v) ? v : []; }
        catch { return []; } }).filter(r => r && r.status).map(r => r.api_name + ':' + r.status)"""
    return page.evaluate(script)


def _mlflow(app: App) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{app.data_dir / 'mlflow.db'}")


def _only_run(app: App, dataset: str) -> Any:
    runs = [r for s in (app.data_dir / "sessions").iterdir() for r in list_runs(s / "runs")]
    return next(r for r in runs if r.note().get("dataset") == dataset)


# ------------------------------------------------------------------------------------------------ journeys
@pytest.fixture(scope="module")
def reloaded(app_server: App, digits_zip: Path) -> dict[str, Any]:
    """Train, reload the page mid-training, and watch the same run finish."""
    seen: dict[str, Any] = {}
    with browser() as page:
        _open_with(page, app_server.url, digits_zip, "48 images in 3 classes", "partial", epochs=5, size=64)
        page.get_by_role("tab", name="3 Train").click()
        page.locator("#train").click()
        seen["before"] = _wait_phase(page, r"^Training: epoch", 300)
        page.reload()
        page.get_by_role("tab", name="3 Train").click()
        seen["after"] = _wait_phase(page, r"\S", 30)
        page.locator("#cancel:enabled").wait_for(timeout=15_000)
        seen["cancel_after"] = page.locator("#cancel").is_enabled()
        seen["final"] = _wait_phase(page, r"Training finished|Cancelled", 400)
        seen["run_md"] = page.locator("#run-info").inner_text()
        seen["acc"] = _markers(page, "acc-chart", "val_acc")
        seen["loss"] = _markers(page, "loss-chart", "train_loss")
        seen["legend"] = page.locator("#acc-chart").inner_text()
        shot(page, "3-train.png")
        page.get_by_role("tab", name="4 Evaluate").click()
        page.locator("#eval-summary").get_by_text("val_acc").wait_for(timeout=180_000)
        seen["evaluation"] = page.locator("#eval-summary").inner_text()
        shot(page, "4-evaluate.png")
        seen["history"] = _history_statuses(page)
    time.sleep(1.0)  # the reaper thread's wait() has run by now
    seen["zombies"] = zombies_of(app_server.pid)
    seen["run"] = _only_run(app_server, digits_zip.name)
    return seen


@pytest.fixture(scope="module")
def builtin(app_server: App) -> dict[str, Any]:
    """Pick builtin:digits, train a one-epoch linear probe on 8 images a class, deploy it and try it."""
    seen: dict[str, Any] = {}
    sample = Path.home() / ".cache" / "transfer" / "builtin" / "digits-v1" / "7"
    with browser() as page:
        page.goto(app_server.url)
        page.locator("#builtin input").click()
        page.get_by_role("option", name="builtin:digits").click()
        page.locator("#load-data").click()
        page.locator("#data-summary").get_by_text("1797 images in 10 classes").wait_for(timeout=120_000)
        seen["gallery"] = page.locator("#data-samples figure").count()
        shot(page, "1-data.png")
        _model(page, "linear_probe", epochs=1, size=32, max_per_class=8)
        shot(page, "2-model.png")
        page.get_by_role("tab", name="3 Train").click()
        seen["plan"] = page.locator("#train-plan").inner_text()
        page.locator("#train").click()
        seen["final"] = _wait_phase(page, r"Training finished", 400)
        seen["acc"] = _markers(page, "acc-chart", "val_acc")
        page.get_by_role("tab", name="5 Deploy").click()
        page.locator("#deploy:enabled").wait_for(timeout=180_000)
        page.locator("#deploy").click()
        page.locator("#deploy-info").get_by_text("Registered").wait_for(timeout=120_000)
        seen["deployed"] = page.locator("#deploy-info").inner_text()
        shot(page, "5-deploy.png")
        page.get_by_role("tab", name="6 Try it").click()
        page.locator("#try-image input[type=file]").set_input_files(str(sorted(sample.glob("*.png"))[0]))
        page.wait_for_timeout(1500)
        page.locator("#try").click()
        page.locator("#try-label").get_by_text("7").first.wait_for(timeout=120_000)
        seen["tried"] = page.locator("#try-label").inner_text()
        shot(page, "6-try.png")
    return seen


@pytest.fixture(scope="module")
def cancelled(app_server: App, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A stage probe on 300 fresh images: watch its feature extraction, Cancel it after its first epoch, Resume it.

    10 epochs at batch 8 leave Cancel a margin of several epochs, and the resumed run (on cached features) ends soon.
    """
    tmp = tmp_path_factory.mktemp("probe")
    data = zip_tree(digits_folder(tmp / "digits300", classes=tuple(range(10)), per_class=30), tmp / "digits300.zip")
    seen: dict[str, Any] = {"texts": []}
    with browser() as page:
        page.goto(app_server.url)
        _upload_zip(page, data)
        page.locator("#data-summary").get_by_text("300 images in 10 classes").wait_for(timeout=60_000)
        _model(page, "stage_probe", epochs=PROBE_EPOCHS, size=64, batch_size=8)
        page.get_by_role("tab", name="3 Train").click()
        page.locator("#train").click()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 400:
            text = _phase(page)
            seen["texts"].append((time.monotonic(), text))
            if re.search(rf"epoch [1-9]\d*/{PROBE_EPOCHS} done|epoch [2-9]\d*/{PROBE_EPOCHS}", text):
                break
            assert "failed" not in text, text
            page.wait_for_timeout(200)
        page.locator("#cancel").click()
        t_cancel = time.monotonic()
        seen["cancelling"] = _wait_phase(page, r"Cancel", 10)
        seen["final"] = _wait_phase(page, r"^Cancelled", 60)
        seen["stopped_after_s"] = time.monotonic() - t_cancel
        shot(page, "3-train-cancelled.png")
        seen["run"] = _only_run(app_server, data.name)
        seen["killed_state"] = state = dict(seen["run"].fit_state())
        seen["returncode"] = seen["run"].note()["returncode"]  # before Resume starts the process again
        seen["mlflow_after_cancel"] = _mlflow(app_server).get_run(state["run_id"]).info.status
        page.locator("#resume:enabled").wait_for(timeout=15_000)
        page.locator("#resume").click()
        seen["resumed"] = _wait_phase(page, r"Training finished", 600)
    return seen


# ------------------------------------------------------------------------------------------------ issue 14
def test_reload_brings_back_progress_and_cancel(reloaded: dict[str, Any]) -> None:
    assert reloaded["before"].startswith("Training: epoch")
    assert reloaded["after"] and "Starting the training process" not in reloaded["after"]
    assert reloaded["cancel_after"]


def test_the_reloaded_run_finishes_and_shows_its_results(reloaded: dict[str, Any]) -> None:
    assert reloaded["final"] == "Training finished." and "done, val_acc" in reloaded["run_md"]
    assert "val_acc" in reloaded["evaluation"]


def test_the_runs_history_does_not_call_it_failed(reloaded: dict[str, Any]) -> None:
    statuses = reloaded["history"]
    assert any(s.startswith("/train:") or s.startswith("train:") for s in statuses), statuses
    assert not [s for s in statuses if not s.endswith(":completed")], statuses


def test_no_zombie_remains_after_the_run(reloaded: dict[str, Any]) -> None:
    assert reloaded["zombies"] == []


def test_a_first_runs_curves_draw_a_line_with_every_epoch(reloaded: dict[str, Any]) -> None:
    assert reloaded["acc"] == {"markers": 5, "vertices": 5} and reloaded["loss"] == {"markers": 5, "vertices": 5}
    assert "val accuracy" in reloaded["legend"] and "NaN" not in reloaded["legend"]


def test_epoch_events_carry_the_same_val_acc_as_mlflow(reloaded: dict[str, Any], app_server: App) -> None:
    run = reloaded["run"]
    events = {e["epoch"]: e["val_acc"] for e in run.events() if e["event"] == "epoch"}
    history = {m.step + 1: m.value for m in _mlflow(app_server).get_metric_history(run.result()["run_id"], "val_acc")}
    assert sorted(events) == [1, 2, 3, 4, 5]
    assert events == pytest.approx({e: history[e] for e in events})


# ------------------------------------------------------------------------------------------------ issue 13
def test_builtin_digits_load_train_deploy_and_answer(builtin: dict[str, Any]) -> None:
    assert builtin["gallery"] == 60  # 6 samples of each of the 10 classes, served without a server path
    assert "builtin:digits" in builtin["plan"] and "1797 images" in builtin["plan"]
    assert builtin["final"] == "Training finished." and "Registered" in builtin["deployed"]
    assert "7" in builtin["tried"]


def test_a_one_epoch_probe_shows_its_point(builtin: dict[str, Any]) -> None:
    assert builtin["acc"] == {"markers": 1, "vertices": 1}


def test_feature_extraction_reports_in_words_at_least_every_5_s(cancelled: dict[str, Any]) -> None:
    texts = cancelled["texts"]
    features = [(t, x) for t, x in texts if x.startswith("Computing features")]
    # A count that moves, not one line (on a quiet machine the 300 images take about a second: two counts).
    assert len({x for _, x in features}) >= 2, features
    changes = [texts[0][0]] + [t for (_, prev), (t, x) in itertools.pairwise(texts) if x != prev]
    start, end = features[0][0], features[-1][0]
    during = sorted(t for t in changes if start <= t <= end)
    assert max((b - a for a, b in itertools.pairwise(during)), default=0.0) <= 5.0


def test_the_app_under_test_ignores_sigint(app_server: App) -> None:
    assert ignores_sigint(app_server.pid)  # as under nohup or a service manager: Cancel cannot rely on SIGINT


def test_cancel_stops_the_fit_within_10_s(cancelled: dict[str, Any]) -> None:
    # "Cancelling…" shows while the fit winds down; a fit that stops within one refresh goes straight to "Cancelled".
    assert cancelled["cancelling"].startswith(("Cancelling", "Cancelled"))
    assert cancelled["stopped_after_s"] < 10
    assert cancelled["returncode"] not in (0, None)


def test_a_cancelled_run_is_killed_in_mlflow(cancelled: dict[str, Any]) -> None:
    assert cancelled["killed_state"]["status"] == "interrupted" and cancelled["mlflow_after_cancel"] == "KILLED"


def test_resume_continues_the_cancelled_run_in_the_same_mlflow_run(cancelled: dict[str, Any], app_server: App) -> None:
    client = _mlflow(app_server)
    state = cancelled["run"].fit_state()
    assert cancelled["resumed"] == "Training finished."
    assert state["run_id"] == cancelled["killed_state"]["run_id"] and state["status"] == "finished"
    assert client.get_run(state["run_id"]).info.status == "FINISHED"


def test_a_failed_load_leaves_nothing_to_train(app_server: App, digits_zip: Path, one_class_zip: Path) -> None:
    with browser() as page:
        page.goto(app_server.url)
        _upload_zip(page, digits_zip)
        page.locator("#data-summary").get_by_text("48 images in 3 classes").wait_for(timeout=60_000)
        page.get_by_role("tab", name="3 Train").click()
        page.locator("#train:enabled").wait_for(timeout=15_000)
        page.get_by_role("tab", name="1 Data").click()
        _upload_zip(page, one_class_zip)
        page.locator("#data-summary").get_by_text("at least 2 classes").wait_for(timeout=60_000)
        page.get_by_role("tab", name="3 Train").click()
        page.locator("#train-plan").get_by_text("No dataset loaded").wait_for(timeout=15_000)
        assert page.locator("#train").is_disabled()
        page.locator("#train").click(force=True)
        page.wait_for_timeout(2000)
        assert _phase(page) == "" and page.locator("#runs tbody tr").count() <= 1
        shot(page, "5-failed-load.png")


def test_on_a_phone_every_tab_is_reachable_and_the_backbone_readable(app_server: App) -> None:
    with browser(**PHONE, device_scale_factor=2, is_mobile=True, has_touch=True) as page:
        page.goto(app_server.url)
        for name in TABS:
            tab = page.get_by_role("tab", name=name)
            box = tab.bounding_box()
            assert tab.is_visible() and box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], name
        page.get_by_role("tab", name="6 Try it").click()
        page.locator("#try-model").wait_for()
        page.get_by_role("tab", name="2 Model").click()
        field = page.locator("#backbone input")
        field.wait_for()
        page.wait_for_timeout(1500)
        fits = field.evaluate(
            """e => { const s = getComputedStyle(e), c = document.createElement('canvas').getContext('2d');
            c.font = s.font; const name = e.value.split(' · ')[0];
            const room = e.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
            return [name, c.measureText(name).width, room]; }"""
        )
        shot(page, "phone-model.png")
    name, needed, room = fits
    assert "mobilenetv2_100" in name and needed < room, fits


# ------------------------------------------------------------------------------------------------ issue 16
def test_the_data_tab_shows_the_audit_with_thumbnails(app_server: App, flawed_digits_zip: Path, tmp_path: Path) -> None:
    """Digits with a planted duplicate and an unreadable file: Audit shows the findings with their thumbnails."""
    with browser() as page:
        _open_with(page, app_server.url, flawed_digits_zip, "49 images in 3 classes", "linear_probe", epochs=1, size=64)
        page.get_by_role("tab", name="1 Data").click()
        page.locator("#audit:enabled").click()
        thumbs = page.locator('#data-audit .tw-findings img[src^="data:image/png;base64,"]')
        thumbs.first.wait_for(timeout=180_000)
        seen = {"thumbs": thumbs.count(), "verdicts": page.locator("#data-audit .tw-verdicts").inner_text()}
        seen["drop"] = page.locator("#drop-findings").is_enabled()
        path = tmp_path / "data-audit.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the audit: {path}")
    assert seen["thumbs"] >= 2 and "exact duplicates" in seen["verdicts"] and "unreadable" in seen["verdicts"]
    assert seen["drop"]
