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

from tests.servers import PortTakenError, free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
START_TIMEOUT_S = 240
PORT_TAKEN = "another program is listening on that port"  # what `transfer app` says, exiting 2


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
    port: int
    data_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_for(app: App) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(app.url, timeout=2)
            if "transfer app: serving on" in app.log_text():  # ours says so once it listens (not another's server)
                return
            time.sleep(0.2)
        except OSError:
            if app.proc.poll() is not None:
                if PORT_TAKEN in app.log_text():
                    raise PortTakenError(app.url) from None
                raise RuntimeError(app.log_text()[-3000:]) from None
            time.sleep(0.5)
    raise RuntimeError(f"the app did not start in {START_TIMEOUT_S} s: " + app.log_text()[-3000:])


def _start(base: Path, args: tuple[str, ...], ignore_sigint: bool) -> App:
    env = {**os.environ, "TRANSFER_APP_DIR": str(base / "data"), "GRADIO_ANALYTICS_ENABLED": "0"}
    log, port = base / "app.log", free_port()
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
    return App(f"http://127.0.0.1:{port}", port, base / "data", proc, log)


def _stop(app: App) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(app.proc.pid, signal.SIGTERM)
    try:
        app.proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(app.proc.pid, signal.SIGKILL)
        app.proc.wait(5)


@contextlib.contextmanager
def serve_app(base: Path, *args: str, ignore_sigint: bool = True, tries: int = 3) -> Iterator[App]:
    """``nohup transfer app --port PORT ARGS`` on a free port, with SIGINT ignored, as a service manager or ``cmd &``
    starts it; stopped (SIGTERM, as a service manager stops it) afterwards. When a parallel test process took the
    port first, the app refuses it (exit 2) and starts again on another."""
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        app = _start(base, args, ignore_sigint)
        try:
            _wait_for(app)
            break
        except PortTakenError:
            _stop(app)
            if attempt == tries - 1:
                raise
        except BaseException:
            _stop(app)
            raise
    try:
        yield app
    finally:
        _stop(app)


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
