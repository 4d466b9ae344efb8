"""A fit's directory: ``run.json`` and its states, the checkpoints, the events, and the lock that makes it one fit's.

Every recipe maps to one directory, ``<trainer.default_root_dir or ./runs>/<recipe name>-<digest>/``::

    run.json               {"status", "run_id", "pid", "host", "strategy", ..., "result"} (written atomically)
    recipe.yaml            the resolved recipe
    events.jsonl           progress events (transfer.progress): phases, steps, epochs, the end
    last.ckpt, best.ckpt   the last epoch's and the best epoch's checkpoints
    pending_metrics.jsonl  epoch metrics waiting for a tracking server that went away
    previous/<run id>/     an interrupted run's files, kept when a new run starts over it (--restart)

The states and the only transitions between them::

    (new) -> running -> finished | interrupted | failed | trained
    interrupted | failed | trained -> running   (--resume)

``trained`` means the training ended but the model could not be logged (the tracking server went away); a resume
logs it. An exclusive lock (``.lock``, held for the whole fit) makes a second fit of the same recipe stop at once
with one line, touching nothing. A ``running`` state whose lock is free belongs to a process that died (SIGKILL,
the OOM killer): the next fit marks its MLflow run KILLED and treats it as interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from transfer.errors import UserError
from transfer.jsonfile import read_json, write_json

_log = logging.getLogger(__name__)

RUNNING, FINISHED, INTERRUPTED, FAILED, TRAINED = "running", "finished", "interrupted", "failed", "trained"
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({RUNNING}),
    RUNNING: frozenset({FINISHED, INTERRUPTED, FAILED, TRAINED}),
    INTERRUPTED: frozenset({RUNNING}),
    FAILED: frozenset({RUNNING}),
    TRAINED: frozenset({RUNNING}),
    FINISHED: frozenset(),
}
RESUMABLE = (INTERRUPTED, FAILED, TRAINED)
_RUN_FILES = ("run.json", "recipe.yaml", "events.jsonl", "pending_metrics.jsonl")


class RunDir:
    """The directory of one recipe's runs.

    Args:
        path: the directory (made on :meth:`claim`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last_ckpt, self.best_ckpt = self.path / "last.ckpt", self.path / "best.ckpt"
        self.events, self.pending_metrics = self.path / "events.jsonl", self.path / "pending_metrics.jsonl"
        self.state: dict[str, Any] = self.read()

    @classmethod
    def for_recipe(cls, recipe: Any) -> RunDir:
        """``<trainer.default_root_dir or ./runs>/<recipe name>-<digest>``: the same recipe always maps here."""
        root = Path(recipe.trainer.get("default_root_dir") or "runs")
        return cls(root / f"{recipe.name}-{recipe.digest()}")

    @property
    def status(self) -> str | None:
        return self.state.get("status")

    def read(self) -> dict[str, Any]:
        """``run.json`` as found (empty when there is none, or it is unreadable)."""
        return read_json(self.path / "run.json")

    def _write(self) -> None:
        write_json(self.path / "run.json", self.state, default=str)

    # -- states --------------------------------------------------------------------------------------------------
    def transition(self, status: str, **fields: Any) -> None:
        """Move to ``status`` (one of :data:`TRANSITIONS`' targets from the current one) and record ``fields``.

        Raises:
            RuntimeError: a transition the state machine does not have (a bug, not a user error).
        """
        if status != self.status and status not in TRANSITIONS[self.status]:
            raise RuntimeError(f"run state {self.status} -> {status} is not a transition of {self.path}")
        self.state.update(fields, status=status)
        self._write()

    def update(self, **fields: Any) -> None:
        """Record ``fields`` in ``run.json`` without changing the status."""
        self.state.update(fields)
        self._write()

    def begin(self, run_id: str, **fields: Any) -> None:
        """The run is training: its MLflow run, this process (for stale-run detection) and ``fields``."""
        self.transition(
            RUNNING,
            run_id=run_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            started=self.state.get("started") or time.time(),
            **fields,
        )

    # -- the lock ------------------------------------------------------------------------------------------------
    def is_held(self) -> bool:
        """Whether a live fit holds this directory now (its lock is taken)."""
        if not (self.path / ".lock").exists():
            return False
        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def recover(self, store: Any = None) -> bool:
        """Mark a dead fit's run (``running`` in ``run.json``, nobody holding the lock) interrupted here and KILLED
        in MLflow; True when there was one. Front ends call this for runs they did not start (after a restart)."""
        if self.read().get("status") != RUNNING or self.is_held():
            return False
        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # a fit took it in between: it is alive after all
            return False
        try:
            self.state = self.read()
            if self.status != RUNNING:
                return False
            self._recover_dead(store)
            return True
        finally:
            lock.release()

    @contextlib.contextmanager
    def claim(self, *, resume: bool, restart: bool = False, store: Any = None, command: str = "") -> Iterator[RunDir]:
        """Hold this directory for a fit: refuse a second fit, recover a dead one, keep interrupted checkpoints.

        Args:
            resume: continue the resumable run found here (its ``last.ckpt``).
            restart: start a new run even over an interrupted one (whose files move to ``previous/<run id>/``).
            store: the :class:`~transfer.tracking.TrackingStore` in which a dead run is marked KILLED.
            command: how the user ran this (``transfer fit recipe.yaml``), for the messages.

        Raises:
            UserError: another fit holds the directory; nothing to resume; or an interrupted run would be replaced
                without ``--resume`` / ``--restart``.
        """
        if resume and not (self.path / "run.json").is_file():
            raise UserError(
                f"nothing to resume in {self.path}: no interrupted run of this recipe; run without --resume"
            )
        created = _first_missing(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(self._busy_message()) from None
        try:
            self.state = self.read()
            if self.status == RUNNING:
                self._recover_dead(store)
            self._prepare(resume, restart, command or "transfer fit RECIPE")
            yield self
        except BaseException:
            if created is not None and not self.state.get("run_id"):  # failed before its run began: leave nothing
                shutil.rmtree(created, ignore_errors=True)
            raise
        finally:
            lock.release()

    def _busy_message(self) -> str:
        s = self.read()
        who = f"pid {s.get('pid', '?')} on {s.get('host', '?')}"
        since = time.strftime("%H:%M:%S", time.localtime(s["started"])) if s.get("started") else "just now"
        run = f", MLflow run {s['run_id']}" if s.get("run_id") else ""
        return (
            f"another `transfer fit` of this recipe is running in {self.path} ({who}{run}, since {since}); "
            "wait for it to finish, or stop it first"
        )

    def _recover_dead(self, store: Any) -> None:
        """A ``running`` state with a free lock: its process died without a word (SIGKILL, out of memory)."""
        run_id = self.state.get("run_id")
        marked = bool(run_id and store is not None and store.mark_run(run_id, "KILLED"))
        _log.warning(
            "run %s of this recipe died without finishing (pid %s on %s)%s",
            run_id,
            self.state.get("pid"),
            self.state.get("host"),
            "; marked KILLED in MLflow" if marked else "",
        )
        self.transition(INTERRUPTED, recovered=True)

    def _prepare(self, resume: bool, restart: bool, command: str) -> None:
        has_ckpt = self.last_ckpt.is_file()
        if resume:
            if self.status == FINISHED:
                raise UserError(
                    f"run {self.state.get('run_id')} of this recipe has finished already; run without --resume for a "
                    "new one"
                )
            if self.status not in RESUMABLE or not self.state.get("run_id") or not has_ckpt:
                raise UserError(
                    f"nothing to resume in {self.path}: no interrupted run with a checkpoint; run without --resume"
                )
            return
        if self.status in RESUMABLE and has_ckpt and not restart:
            raise UserError(
                f"run {self.state.get('run_id')} of this recipe stopped before finishing ({self.status}); its "
                f"checkpoints are in {self.path}: `{command} --resume` continues it, `{command} --restart` starts a "
                "new run and keeps the old one's files"
            )
        if self.status in RESUMABLE and has_ckpt:
            self._keep_aside()
        self._clear()

    def _keep_aside(self) -> None:
        dest = self.path / "previous" / str(self.state.get("run_id") or int(time.time()))
        dest.mkdir(parents=True, exist_ok=True)
        for f in [*self.path.glob("*.ckpt"), *(self.path / n for n in _RUN_FILES)]:
            if f.is_file():
                shutil.move(str(f), dest / f.name)
        _log.warning("run %s is kept in %s; a new run starts", self.state.get("run_id"), dest)

    def _clear(self) -> None:
        """A fresh run starts from nothing (a finished run's model lives in MLflow, not in its checkpoints)."""
        for f in [*self.path.glob("*.ckpt"), *(self.path / n for n in _RUN_FILES)]:
            f.unlink(missing_ok=True)
        self.state = {}


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what making it creates), or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing
