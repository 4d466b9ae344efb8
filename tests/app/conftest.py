"""Fixtures for the web-page tests: a small real dataset as a zip, and the app served on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits_folder(root: Path, classes: tuple[int, ...] = (0, 1, 7), per_class: int = 16) -> Path:
    """scikit-learn's real handwritten digits as PNG class folders."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        idx = np.flatnonzero(d.target == c)[:per_class]
        (root / f"digit_{c}").mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = (d.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(img).resize((32, 32), Image.NEAREST).save(root / f"digit_{c}" / f"{i}.png")
    return root


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
