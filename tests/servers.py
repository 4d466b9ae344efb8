"""Real servers for tests, on 127.0.0.1, that always clean up: an MLflow tracking server and a PostgreSQL cluster.

```python
from tests.servers import MlflowServer, PostgresCluster

with PostgresCluster() as pg, MlflowServer(pg.uri, tmp_path / "artifacts", log=tmp_path / "mlflow.log") as server:
    ...  # tracking.uri = server.url; pg.query("SELECT name FROM registered_models")
    server.stop()
    server.start()  # the same port again, e.g. to check that a fit survives a server restart
```

Each server runs in a process group of its own, stopped with SIGTERM and then SIGKILL. A failed start stops
what it started and fails the test with the tail of the server's log. PostgreSQL refuses to run as root: then its
commands run as Debian's ``postgres`` user. Without PostgreSQL's binaries the test is skipped, unless
``TRANSFER_REQUIRE_POSTGRES=1`` (CI sets it, so a broken install cannot hide behind a skip).
"""

from __future__ import annotations

import abc
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


def _stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process group of ``proc``, SIGKILL after ``timeout`` s; also reaps stray group members."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent, or a leader that hung
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def require(what: str) -> None:
    """Skip the test because ``what`` is missing, or fail it when ``TRANSFER_REQUIRE_POSTGRES=1``."""
    if os.environ.get("TRANSFER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{what} (TRANSFER_REQUIRE_POSTGRES=1, so this is an error, not a skip)", pytrace=False)
    pytest.skip(what)


def _listening_sockets(port: int) -> set[str] | None:
    """``socket:[inode]`` of every TCP socket listening on ``port`` (any address), from /proc/net; None when this
    system shows no socket table there."""
    found, read = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            lines = Path(table).read_text().splitlines()[1:]
            read = True
            for fields in (line.split() for line in lines):
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.add(f"socket:[{fields[9]}]")
    return found if read else None


def listens(pgid: int, port: int) -> bool:
    """Whether a process of process group ``pgid`` holds a socket listening on TCP ``port`` (True when /proc shows
    no socket table, so that the health check alone decides, as before this check existed).

    A port from :func:`free_port` is free only when it is chosen: another test process may start its own server on
    it before ours binds. Then ours fails to bind, while the other one answers every request sent to the port.
    """
    sockets = _listening_sockets(port)
    if sockets is None:
        return True
    if not sockets:
        return False
    for fds in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):  # a process may end while we look
            if os.getpgid(int(fds.parent.name)) == pgid and any(os.readlink(fd) in sockets for fd in fds.iterdir()):
                return True
    return False


class PortTakenError(Exception):
    """The server exited because another process took its port first."""


class Server(abc.ABC):
    """A server process on 127.0.0.1 in a process group of its own, up once its health URL answers 200 *and* its
    group listens on the port; when another process took the port first, it starts again on another free port
    (unless the port was given).

    Subclasses say :meth:`command` and :attr:`health`.

    Args:
        log: the server's stdout and stderr (appended to across restarts).
        port: default a free port; kept across :meth:`stop` and :meth:`start`.
        env: extra environment variables for the server.
        timeout: seconds to wait for the server to be up.
    """

    what = "server"
    health = "/health"
    tries = 3

    def __init__(
        self, log: str | Path, *, port: int | None = None, env: Mapping[str, str] | None = None, timeout: float = 240.0
    ) -> None:
        self.log = Path(log)
        self.port = port or free_port()
        self._port_given = port is not None
        self.env = dict(env or {})
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line, for :attr:`port`."""

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{self.health}", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start(self) -> Server:
        """Start the server (on the same port as before, after a stop) and wait until it is up."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.what} on port {self.port} is already running")
        for attempt in range(self.tries):
            try:
                self._launch()
                return self
            except PortTakenError:
                if self._port_given or attempt == self.tries - 1:
                    pytest.fail(f"{self.what}: port {self.port} taken; {self.log}:\n{_tail(self.log)}", pytrace=False)
                self.port = free_port()
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            out.write(f"--- {' '.join(self.command())}\n".encode())
            out.flush()
            logged = out.tell()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.log.parent,  # whatever the server writes by default lands beside its log
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        while not (self.healthy() and listens(self.proc.pid, self.port)):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                said = self.log.read_bytes()[logged:]
                if b"Address already in use" in said or b"[Errno 98]" in said:
                    raise PortTakenError(self.port)
                pytest.fail(f"{self.what} exited with code {code}; {self.log}:\n{_tail(self.log)}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"{self.what} not up after {self.timeout:.0f} s; {self.log}:\n{_tail(self.log)}", pytrace=False
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and its workers (SIGTERM to the process group, SIGKILL after ``timeout`` s)."""
        if self.proc is not None:
            _stop_group(self.proc, timeout)
            self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowServer(Server):
    """``mlflow server`` on 127.0.0.1 with a backend store and a local artifact root it serves (proxies).

    Args:
        backend_store_uri: e.g. ``postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow`` or ``sqlite:////tmp/x/mlflow.db``.
        artifacts_destination: the folder (or URI) where the server stores artifacts; clients upload through it.
        port: default a free port; kept across :meth:`stop` and :meth:`start`.
        log: the server's stdout and stderr (appended to across restarts); default beside a local artifact root.
        workers: server worker processes (MLflow's default is 4; 1 is plenty for tests on a small machine).
        env: extra environment variables for the server. By default its job runner (a process and seven huey
            consumers for GenAI scorers and trace rollups, none of which a workbench uses) stays off:
            ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``.
        timeout: seconds to wait for ``GET /health`` to answer 200.
    """

    what = "mlflow server"

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str | Path,
        *,
        port: int | None = None,
        log: str | Path | None = None,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        timeout: float = 240.0,
    ) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = str(artifacts_destination)
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
            default_log = Path(self.artifacts_destination).resolve().parent / "mlflow-server.log"
        else:
            default_log = Path(tempfile.mkdtemp(prefix="mlflow-server-")) / "mlflow-server.log"
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        super().__init__(log or default_log, port=port, env=env, timeout=timeout)
        self.workers = workers

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]


class ModelServer(Server):
    """``mlflow models serve -m MODEL_URI`` on 127.0.0.1 in the current environment, reading the registry at
    ``tracking_uri``; up once ``GET /ping`` answers 200.

    Args:
        model_uri: e.g. ``models:/digits@champion``.
        tracking_uri: where ``models:/`` URIs resolve (passed as ``MLFLOW_TRACKING_URI``).
        log: the server's stdout and stderr.
        timeout: seconds to wait for it to be up (it loads the model first).
    """

    what = "mlflow models serve"
    health = "/ping"

    def __init__(self, model_uri: str, tracking_uri: str, log: str | Path, *, timeout: float = 300.0) -> None:
        super().__init__(log, env={"MLFLOW_TRACKING_URI": tracking_uri}, timeout=timeout)
        self.model_uri = model_uri

    def command(self) -> list[str]:
        serve = ["mlflow", "models", "serve", "-m", self.model_uri, "--env-manager", "local"]
        return [sys.executable, "-m", *serve, "-h", HOST, "-p", str(self.port)]


def _postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: Debian's newest ``/usr/lib/postgresql/N/bin``, else the PATH."""

    def version(p: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/", p)
        return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    if found:
        folder = Path(found).resolve().parent  # /usr/local/bin/initdb may be a link into Debian's folder
        if (folder / "pg_ctl").is_file():
            return folder
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, user ``postgres``) with one database.

    Args:
        database: the database to create.
        port: default a free port.
        timeout: seconds for ``pg_ctl start`` to see the server accept connections.
    """

    user = "postgres"

    def __init__(self, database: str = "mlflow", *, port: int | None = None, timeout: float = 120.0) -> None:
        self.database = database
        self.port = port or free_port()
        self.timeout = timeout
        self.bin: Path | None = None
        self.root: Path | None = None
        self.running = False

    @property
    def uri(self) -> str:
        """The database's SQLAlchemy URI: ``postgresql+psycopg2://postgres@127.0.0.1:PORT/mlflow``.

        The driver is named: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, 2.0 as psycopg2.
        """
        return f"postgresql+psycopg2://{self.user}@{HOST}:{self.port}/{self.database}"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def _as_postgres(self, cmd: Sequence[str]) -> list[str]:
        """Root cannot run PostgreSQL: run its commands as the ``postgres`` user then."""
        if os.geteuid() != 0:
            return list(cmd)
        return ["runuser", "-u", self.user, "--", *cmd]

    def _run(self, cmd: Sequence[str], what: str) -> None:
        assert self.root is not None
        proc = subprocess.run(
            self._as_postgres(cmd), cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-3000:]
            log = _tail(self.log) if self.log.exists() else ""
            pytest.fail(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{output}\n{log}", pytrace=False)

    def start(self) -> PostgresCluster:
        """initdb into a fresh temporary folder, start the server, create the database."""
        if self.running:
            raise RuntimeError(f"PostgreSQL on port {self.port} is already running")
        self.bin = _postgres_bin()
        if self.bin is None:
            require("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb or initdb on PATH)")
        owner = None
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam(self.user)
            except KeyError:
                require("running as root and there is no 'postgres' user to run PostgreSQL as")
            if not shutil.which("runuser"):
                require("running as root and runuser (util-linux) is missing")
        # Under /tmp: pytest's own temporary folders are private to root (0700) and the postgres user could not
        # enter them; and the socket's path must stay short (about 100 bytes at most), whatever $TMPDIR is.
        self.root = Path(tempfile.mkdtemp(prefix="transfer-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        if owner:
            for p in (self.root, sockets):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(data),
                    "--auth=trust",
                    "-U",
                    self.user,
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
            )
            options = f"-p {self.port} -k {sockets} -c listen_addresses={HOST} -c fsync=off"
            wait = ["-w", "-t", str(int(self.timeout))]
            self._run(
                [str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.log), *wait, "-o", options, "start"],
                "pg_ctl start",
            )
            self.running = True
            self.psql(f'CREATE DATABASE "{self.database}"', database="postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL with ``psql`` over TCP; returns its unaligned, tuples-only output."""
        assert self.bin is not None
        psql = self.bin / "psql" if (self.bin / "psql").is_file() else shutil.which("psql") or "psql"
        cmd = [str(psql), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", HOST, "-p", str(self.port), "-U", self.user]
        proc = subprocess.run(
            [*cmd, "-d", database or self.database, "-c", sql], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            pytest.fail(f"psql failed ({proc.returncode}): {sql}\n{proc.stderr[-2000:]}", pytrace=False)
        return proc.stdout

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one SQL query, through psycopg2 (the driver MLflow's server uses too)."""
        import psycopg2

        conn = psycopg2.connect(host=HOST, port=self.port, user=self.user, dbname=self.database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, tuple(params))
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self, timeout: float = 60.0) -> None:
        """``pg_ctl -m fast stop``, then remove the cluster's folder."""
        if self.root is None:
            return
        data = self.root / "data"
        if self.running and self.bin is not None:
            cmd = [str(self.bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"]
            proc = subprocess.run(self._as_postgres(cmd), cwd=self.root, capture_output=True, text=True)
            if proc.returncode != 0:  # last resort: the postmaster's pid is the first line of postmaster.pid
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int((data / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGKILL)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
