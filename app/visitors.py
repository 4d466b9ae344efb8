"""Who is visiting: the ``--auth`` user, or a session id the server signed and the browser keeps.

Without ``--auth`` a visitor is a random token kept in the browser's localStorage (``gr.BrowserState``), so a reload
(or a server restart) finds the same visitor, their runs and their models. The server signs each token it hands
out with a secret kept in its data folder: a client can only present a token this server issued, never choose one
(a guessable name would let two clients share a work folder and its models). A client without a page (the
``gradio_client`` API) is given a fresh token on its first call and keeps it in its connection's state.

:class:`Presence` remembers when each visitor was last seen and which pages they have open, so a training whose
visitor has gone for good can be stopped (:mod:`app.supervisor`).

:func:`check_exposure` decides who may reach the page at all: beyond loopback only with a password (``--auth``), or
with an explicit ``--no-auth``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transfer.errors import UserError

_SECRET_FILE = ".visitor-secret"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Visitor:
    """One visitor.

    Attributes:
        owner: what their models are tagged with (``transfer.owner``): the user name, or ``session-<id>``.
        token: the signed browser token (empty for an ``--auth`` user).
    """

    owner: str
    token: str = ""

    @property
    def folder_name(self) -> str:
        """Their work folder's name: a digest, so no visitor's name or token ever appears in a path."""
        return hashlib.sha256(self.owner.encode()).hexdigest()[:24]

    @property
    def suggested_model_name(self) -> str:
        """A registered-model name nobody else is likely to hold."""
        return f"{self.owner.removeprefix('session-')[:8]}-classifier"


class Tokens:
    """Issues and checks signed visitor tokens.

    Args:
        folder: where the signing secret lives (made on first use, readable by the owner only).
    """

    def __init__(self, folder: Path) -> None:
        path = folder / _SECRET_FILE
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        self._key = path.read_text().strip().encode()

    def _sign(self, ident: str) -> str:
        return hmac.new(self._key, ident.encode(), hashlib.sha256).hexdigest()[:24]

    def derived(self, purpose: str) -> str:
        """A secret for ``purpose`` derived from the server's (e.g. the key that encrypts the browser's copy)."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        """A new token: a random id and its signature."""
        ident = secrets.token_hex(12)
        return f"{ident}.{self._sign(ident)}"

    def check(self, token: object) -> str | None:
        """The id inside a token this server signed, else None."""
        if not isinstance(token, str) or token.count(".") != 1:
            return None
        ident, sig = token.split(".")
        return ident if len(ident) == 24 and hmac.compare_digest(sig, self._sign(ident)) else None

    def visitor(self, username: str | None, token: object) -> Visitor:
        """The ``--auth`` user, else the holder of ``token`` (a fresh visitor when it is missing or forged)."""
        if username:
            return Visitor(owner=username)
        ident = self.check(token)
        if ident is None:
            token = self.issue()
            ident = token.split(".")[0]
        return Visitor(owner=f"session-{ident}", token=str(token))


class Presence:
    """When each visitor was last seen, and how many of their pages are open."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._pages: dict[str, str] = {}  # Gradio session hash (one open page) -> owner
        self._lock = threading.Lock()

    def seen(self, owner: str, page: str | None = None) -> None:
        """``owner`` did something now (from the page ``page``, if known)."""
        with self._lock:
            self._seen[owner] = time.time()
            if page:
                self._pages[page] = owner

    def closed(self, page: str) -> None:
        """A page was closed or reloaded (Gradio's unload)."""
        with self._lock:
            owner = self._pages.pop(page, None)
            if owner:
                self._seen[owner] = time.time()

    def gone_for(self, owner: str, now: float | None = None) -> float:
        """Seconds since ``owner`` was last seen with no page open (0 while a page is open)."""
        with self._lock:
            if owner in self._pages.values():
                return 0.0
            last = self._seen.get(owner)
        return float("inf") if last is None else (now or time.time()) - last


def check_exposure(host: str, share: bool, auth: str | None, no_auth: bool) -> None:
    """Refuse to serve beyond loopback without a password, unless told the network is private.

    Raises:
        UserError: one line saying why, and what to pass.
    """
    if auth and no_auth:
        raise UserError("--auth and --no-auth contradict each other; give one of them")
    exposed = share or not (host in LOOPBACK or host.startswith("127."))
    if exposed and not auth and not no_auth:
        where = "a public share link" if share else f"{host}"
        raise UserError(
            f"refusing to serve on {where} without --auth: anyone who can reach it could upload data, run trainings "
            "and deploy models; pass --auth user:password (or set TRANSFER_APP_AUTH), or --no-auth if only trusted "
            "people can reach this network"
        )


# Why the page cannot listen, by the socket error's number (others say the system's own words).
_LISTEN_REFUSALS = {
    errno.EADDRINUSE: "another program is listening on that port",
    errno.EACCES: "ports below 1024 need root",
    errno.EADDRNOTAVAIL: "that host is not an address of this machine",
}


def check_port(host: str, port: int) -> None:
    """Refuse a host and port the page cannot listen on, before anything is set up (no data folder, no database).

    Raises:
        UserError: one line: the address, why, and what to pass instead.
    """
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        # As uvicorn will bind: SO_REUSEADDR, so a port a stopped server left in TIME_WAIT still counts as free.
        with socket.create_server((host, port), family=family):
            pass
    except socket.gaierror as exc:
        raise UserError(
            f"cannot serve on {host}:{port}: no such host; pass --host with an address of this machine"
        ) from exc
    except OSError as exc:
        reason = _LISTEN_REFUSALS.get(exc.errno, exc.strerror or str(exc))
        raise UserError(f"cannot serve on {host}:{port}: {reason}; choose another with --port or --host") from exc


def credentials_of(auth: str | None) -> tuple[str, str] | None:
    """``user:password`` as Gradio's ``auth`` pair (None without auth).

    Raises:
        UserError: not of the form user:password.
    """
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be user:password")
    return user, password
