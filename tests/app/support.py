"""Helpers of the web-page tests: zips of real images, a `transfer app` server, a browser, and /proc checks.

Imported as ``from tests.app.support import ...`` (only the page's tests use them; the repository-wide ones are in
``tests/helpers.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
START_TIMEOUT_S = 240


def zip_tree(root: Path, dest: Path) -> Path:
    """A zip of ``root`` (its class folders under one top folder, as people zip a folder)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(root.parent))
    return dest


@dataclass
class App:
    """A running ``transfer app``."""

    url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            if "transfer app: serving on" in log.read_text(errors="replace"):  # it says so once it has started
                return
            time.sleep(0.2)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.5)
    raise RuntimeError(f"the app did not start in {START_TIMEOUT_S} s: " + log.read_text()[-3000:])


@contextlib.contextmanager
def serve_app(base: Path, port: int, *args: str, ignore_sigint: bool = True) -> Iterator[App]:
    """``nohup transfer app --port PORT ARGS`` with SIGINT ignored, as a service manager or ``cmd &`` starts it;
    stopped (SIGTERM, as a service manager stops it) afterwards."""
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRANSFER_APP_DIR": str(base / "data"), "GRADIO_ANALYTICS_ENABLED": "0"}
    log = base / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nohup", sys.executable, "-m", "transfer", "app", "--port", str(port), *args],
            cwd=base,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
        )
    app = App(f"http://127.0.0.1:{port}", base / "data", proc, log)
    try:
        _wait_for(app.url, proc, log)
        yield app
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its ``SigIgn`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def zombies_of(pid: int) -> list[int]:
    """Children of ``pid`` that have ended but were never waited for."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text.rsplit(")", 1)[1].split()[:2]
        if state == "Z" and int(ppid) == pid:
            found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900, **context: object) -> Iterator[object]:
    """A headless Debian Chromium page (Playwright); a fresh browser profile, so a fresh visitor."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = b.new_context(viewport={"width": width, "height": height}, **context).new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            b.close()


def shot(page: object, name: str) -> Path:
    """A full-page screenshot in ``test-artifacts/``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
