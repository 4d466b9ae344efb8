"""The page's training processes: started within the limits, cancelled cleanly, reaped, stopped when abandoned.

Each training is ``python -m transfer fit recipe.yaml`` in a process group of its own. Cancel sends the group
SIGTERM, which ``transfer fit`` handles as Ctrl+C whatever signals the page's own process ignores (a page started
under ``nohup`` ignores SIGINT, and its children inherit that): the fit stops at once, its MLflow run ends KILLED
and its checkpoints stay resumable. A fit that has not stopped ``cancel_grace_s`` later is killed, and its run
marked KILLED by :meth:`transfer.rundir.RunDir.recover`, as is any run whose process died without a word. A
thread per process waits for it, so no finished training lingers as a zombie.

A sweep (every minute) stops the trainings of visitors who have been gone (no page open, no request) for
``idle_stop_minutes`` and deletes the work folders of visitors not seen for ``session_ttl_hours``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.limits import Limits
from app.runs import RunFolder
from transfer.errors import UserError
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)

SWEEP_EVERY_S = 60.0


@dataclass
class Launched:
    """A training process this page started."""

    owner: str
    run: RunFolder
    proc: subprocess.Popen
    log: object
    ended: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Starts, cancels, reaps and sweeps the page's training processes.

    Args:
        limits: the page's limits (concurrency, grace, idle and session times).
        store: where a run killed without a word is marked KILLED.
        command: the training command before the recipe path (tests may pass another).
    """

    def __init__(self, limits: Limits, store: TrackingStore, command: Sequence[str] | None = None) -> None:
        self.limits, self.store = limits, store
        self.command = list(command or [sys.executable, "-m", "transfer", "fit"])
        self._live: dict[Path, Launched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- starting ----------------------------------------------------------------------------------------------
    def start(self, owner: str, run: RunFolder, resume: bool = False) -> None:
        """Start ``run``'s fit for ``owner`` (``resume``: continue its interrupted fit from its last checkpoint).

        Raises:
            UserError: the visitor or the server is already running as many trainings as the limits allow.
        """
        with self._lock:
            self._check_capacity(owner)
            if resume:
                run.note_update(cancel_requested=None, returncode=None, resumed=time.time())
            log = open(run.log_path, "ab" if resume else "wb")  # noqa: SIM115 - closed by the reaper at the end
            proc = subprocess.Popen(
                [*self.command, str(run.recipe_path), *(["--resume"] if resume else [])],
                cwd=run.path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Cancel stops it and every worker it starts
            )
            launched = Launched(owner, run, proc, log)
            self._live[run.path] = launched
        run.note_update(pid=proc.pid)
        threading.Thread(target=self._reap, args=(launched,), name=f"reap-{proc.pid}", daemon=True).start()

    def check_capacity(self, owner: str) -> None:
        """Raises UserError when ``owner`` may not start a training now (see :meth:`start`)."""
        with self._lock:
            self._check_capacity(owner)

    def _check_capacity(self, owner: str) -> None:
        mine = [x for x in self._live.values() if x.owner == owner]
        if len(mine) >= self.limits.trainings_per_visitor:
            raise UserError("you already have a training running; wait for it to finish or cancel it (Train tab) first")
        if len(self._live) >= self.limits.trainings_total:
            raise UserError(f"the server is running {len(self._live)} trainings, its limit; try again in a few minutes")

    def _reap(self, launched: Launched) -> None:
        code = launched.proc.wait()  # the one wait() that keeps a finished fit from staying a zombie
        launched.log.close()  # type: ignore[attr-defined]
        launched.run.note_update(returncode=code, ended=time.time())
        if launched.run.fit_dir.recover(self.store):  # killed before it could say so itself
            _log.warning("run %s ended without finishing its MLflow run; marked KILLED", launched.run.name)
        with self._lock:
            self._live.pop(launched.run.path, None)
        launched.ended.set()

    # -- looking -----------------------------------------------------------------------------------------------
    def alive(self, run: RunFolder) -> bool:
        """Whether ``run``'s process is running (started by this server, or by an earlier one and still going)."""
        with self._lock:
            if run.path in self._live:
                return True
        return run.fit_dir.is_held()

    def running_for(self, owner: str) -> list[RunFolder]:
        with self._lock:
            return [x.run for x in self._live.values() if x.owner == owner]

    def wait(self, run: RunFolder, timeout: float) -> bool:
        """Wait until ``run``'s process has been reaped; True when it has."""
        with self._lock:
            launched = self._live.get(run.path)
        return launched is None or launched.ended.wait(timeout)

    # -- stopping ----------------------------------------------------------------------------------------------
    def cancel(self, run: RunFolder) -> bool:
        """Ask ``run``'s fit to stop (SIGTERM to its process group; SIGKILL after the grace); False if not running."""
        with self._lock:
            launched = self._live.get(run.path)
        pid = launched.proc.pid if launched else _foreign_pid(run)
        if pid is None:
            return False
        run.note_update(cancel_requested=time.time())
        _signal_group(pid, signal.SIGTERM)
        timer = threading.Timer(self.limits.cancel_grace_s, self._kill_if_alive, args=(run, pid))
        timer.daemon = True
        timer.start()
        return True

    def _kill_if_alive(self, run: RunFolder, pid: int) -> None:
        if self.alive(run):
            _log.warning(
                "run %s did not stop within %.0f s of Cancel; killing it", run.name, self.limits.cancel_grace_s
            )
            _signal_group(pid, signal.SIGKILL)
            if run.path not in self._live:  # not ours to reap: mark its MLflow run once the lock is free
                time.sleep(1.0)
                run.fit_dir.recover(self.store)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Cancel every training (the server is going away) and wait a little for them to end."""
        with self._lock:
            live = list(self._live.values())
        for x in live:
            self.cancel(x.run)
        deadline = time.monotonic() + timeout
        for x in live:
            x.ended.wait(max(0.0, deadline - time.monotonic()))

    # -- sweeping ----------------------------------------------------------------------------------------------
    def sweep(self, gone_for: Callable[[str], float], sessions: Path) -> None:
        """Stop trainings whose visitor has gone; delete work folders nobody has visited for the session TTL."""
        with self._lock:
            live = list(self._live.values())
        for x in live:
            if gone_for(x.owner) > self.limits.idle_stop_minutes * 60 and not x.run.note().get("cancel_requested"):
                _log.info("stopping run %s: its visitor has been gone for a while", x.run.name)
                self.cancel(x.run)
        busy = {x.run.path.parents[1] for x in live}
        cutoff = time.time() - self.limits.session_ttl_hours * 3600
        for folder in sessions.iterdir() if sessions.is_dir() else ():
            if folder in busy or not folder.is_dir():
                continue
            if _last_visit(folder) < cutoff and not any(RunFolder(r).fit_dir.is_held() for r in _runs(folder)):
                _log.info("deleting work folder %s: no visit for %g h", folder.name, self.limits.session_ttl_hours)
                shutil.rmtree(folder, ignore_errors=True)

    def start_sweeping(
        self, gone_for: Callable[[str], float], sessions: Path, also: Callable[[], None] | None = None
    ) -> threading.Thread:
        """Run :meth:`sweep` (and ``also``) every minute in a daemon thread until :meth:`close`."""

        def loop() -> None:
            while not self._stop.wait(SWEEP_EVERY_S):
                try:
                    self.sweep(gone_for, sessions)
                    if also is not None:
                        also()
                except Exception:  # a sweep must never take the page down; the next one tries again
                    _log.exception("sweep failed")

        thread = threading.Thread(target=loop, name="app-sweep", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._stop.set()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _foreign_pid(run: RunFolder) -> int | None:
    """The pid of a fit an earlier server started, when it is still holding its run directory on this host."""
    import socket

    state = run.fit_state()
    if not run.fit_dir.is_held() or state.get("host", socket.gethostname()) != socket.gethostname():
        return None
    pid = state.get("pid") or run.note().get("pid")
    return int(pid) if pid else None


def _runs(folder: Path) -> list[Path]:
    runs = folder / "runs"
    return [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []


def _last_visit(folder: Path) -> float:
    marker = folder / "session.json"
    return marker.stat().st_mtime if marker.exists() else folder.stat().st_mtime
