"""The page end to end in a real browser: Playwright driving Debian's Chromium, headless.

Upload a zip of real images, pick a backbone, train one short epoch, see progress and the confusion matrix, deploy
to the registry, classify an image in "Try it". Screenshots of the main steps go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_upload_train_deploy_try(app_server: tuple[str, Path], digits_zip: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _ = app_server
    ARTIFACTS.mkdir(exist_ok=True)
    sample = next((digits_zip.parent / "digits" / "digit_7").glob("*.png"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(url)

        # 1. Data: upload the zip, load it, see the class counts
        page.locator("input[type=file]").first.set_input_files(str(digits_zip))
        page.wait_for_timeout(1500)  # the upload finishes before the button reads the component
        page.locator("#load-data").click()
        expect(page.locator("#data-summary")).to_contain_text("48 images in 3 classes", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "1-data.png"), full_page=True)

        # 2. Model: the small default backbone, a linear probe, one epoch
        page.get_by_role("tab", name="2. Model").click()
        page.get_by_label("linear_probe").check()
        epochs = page.locator("#epochs input[type=number]")
        epochs.fill("1")
        epochs.press("Enter")
        page.screenshot(path=str(ARTIFACTS / "2-model.png"), full_page=True)

        # 3. Train: progress, then done
        page.get_by_role("tab", name="3. Train").click()
        page.locator("#train").click()
        expect(page.locator("#train-progress")).not_to_be_empty(timeout=60_000)
        expect(page.locator("#train-progress")).to_contain_text("Training finished", timeout=240_000)
        expect(page.locator("#run-info")).to_contain_text("MLflow run")
        page.screenshot(path=str(ARTIFACTS / "3-train.png"), full_page=True)

        # 4. Evaluate: the confusion matrix is shown
        page.get_by_role("tab", name="4. Evaluate").click()
        expect(page.locator("#eval-summary")).to_contain_text("val_acc", timeout=120_000)
        expect(page.locator("#confusion img")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "4-evaluate.png"), full_page=True)

        # 5. Deploy to the registry
        page.get_by_role("tab", name="5. Deploy").click()
        page.locator("#reg-name textarea, #reg-name input").first.fill("browser-digits")
        page.locator("#deploy").click()
        expect(page.locator("#deploy-info")).to_contain_text("Registered", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "5-deploy.png"), full_page=True)

        # 6. Try it: the deployed model labels an uploaded image
        page.get_by_role("tab", name="6. Try it").click()
        page.locator("#try-image input[type=file]").set_input_files(str(sample))
        page.wait_for_timeout(1500)
        page.locator("#try").click()
        expect(page.locator("#try-label")).to_contain_text("digit_", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "6-try.png"), full_page=True)
        browser.close()
