"""Fixtures for the web-page tests: a small real dataset as a zip, and the app served on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import digits_folder, free_port


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = digits_folder(tmp_path_factory.mktemp("digits") / "digits")
    path = root.parent / "digits.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    return path


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`transfer app` on a free port of 127.0.0.1, stopped after the tests; yields (url, its data dir)."""
    base = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "TRANSFER_APP_DIR": str(base / "data"), "GRADIO_ANALYTICS_ENABLED": "0"}
    log = open(base / "app.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "transfer", "app", "--port", str(port)],
        cwd=base,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((base / "app.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("the app did not start in 120 s: " + (base / "app.log").read_text()[-3000:])
    try:
        yield url, base / "data"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
