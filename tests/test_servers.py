"""The test servers talk only to themselves: a port another test process took first is never mistaken for ours."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.servers import HOST, Server, listens


class _Files(Server):
    """``python -m http.server`` over one folder: what it serves says whose server answered."""

    what = "http.server"
    health = "/whose.txt"

    def __init__(self, folder: Path, log: Path) -> None:
        super().__init__(log, timeout=60)
        self.folder = folder

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "-b", HOST, "-d", str(self.folder), str(self.port)]


def _serving(tmp_path: Path, name: str) -> _Files:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "whose.txt").write_text(name)
    return _Files(folder, tmp_path / f"{name}.log")


def _whose(url: str) -> str:
    with urllib.request.urlopen(f"{url}/whose.txt", timeout=10) as resp:
        return resp.read().decode()


def test_a_server_whose_port_was_taken_first_starts_on_another_and_answers_itself(tmp_path: Path) -> None:
    with _serving(tmp_path, "theirs") as theirs:
        ours = _serving(tmp_path, "ours")
        ours.port = theirs.port  # as when two test processes pick the same free port
        with ours:
            assert ours.port != theirs.port
            assert _whose(ours.url) == "ours" and _whose(theirs.url) == "theirs"


def test_listens_names_the_process_group_that_holds_the_port() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a process group of its own
        try:
            assert listens(os.getpgid(0), port) and not listens(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert not listens(os.getpgid(0), port)  # closed: nobody listens
