"""`transfer app` from the command line: it refuses to listen beyond loopback without a password (exit 2, one
line), serves with ``--auth`` or an explicit ``--no-auth``, and prints its URL."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.app.support import serve_app
from tests.servers import free_port


@pytest.mark.parametrize("exposure", [["--host", "0.0.0.0"], ["--share"]], ids=["host", "share"])
def test_exposed_without_auth_exits_2_with_one_line(exposure: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "transfer", "app", "--port", str(free_port()), *exposure],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: refusing to serve") and "--auth" in lines[0] and "--no-auth" in lines[0]
    assert not (tmp_path / "app-data").exists()  # nothing was set up


def test_a_bad_limit_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "transfer", "app", "--limit", "trainings_total=lots"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --limit 'trainings_total=lots': trainings_total takes a number"


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("taken", "another program is listening on that port"),
        (["--port", "70000"], "a port is a number from 1 to 65535"),
        (["--host", "nosuch.invalid", "--no-auth"], "no such host"),
    ],
    ids=["taken", "out-of-range", "no-such-host"],
)
def test_an_address_it_cannot_listen_on_exits_2_with_one_line_and_sets_nothing_up(
    where: str | list[str], says: str, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:  # another program's server
        args = ["--port", str(held.getsockname()[1])] if where == "taken" else where
        proc = subprocess.run(
            [sys.executable, "-m", "transfer", "app", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and says in lines[0]
    assert not (tmp_path / "app-data").exists()  # nothing was set up


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(("flags", "config_status"), [(["--auth", "ann:s3cret"], 401), (["--no-auth"], 200)])
def test_with_auth_or_no_auth_it_serves_beyond_loopback(flags: list[str], config_status: int, tmp_path: Path) -> None:
    with serve_app(tmp_path, "--host", "0.0.0.0", *flags) as app:
        said = [line for line in app.log_text().splitlines() if line.startswith("transfer app: serving on")]
        where = f"http://0.0.0.0:{app.port}/ (all interfaces; on this machine {app.url}/)"
        assert said == [f"transfer app: serving on {where}" + (", password required" if "--auth" in flags else "")]
        assert _status(f"{app.url}/config") == config_status  # with --auth, nothing without logging in
