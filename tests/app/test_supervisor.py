"""The page's training processes: the concurrency limits, reaping, cancel's escalation, the sweep of gone visitors and
old work folders, and a dead fit's MLflow run marked KILLED.

The limits and the process handling do not depend on what the process does, so most tests supervise a plain Python
process (sleeping, or ignoring SIGTERM) rather than a fit; the fit itself is supervised in the page's browser tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from app.limits import Limits
from app.runs import RunFolder
from app.supervisor import Supervisor
from tests.app.support import zombies_of
from transfer.errors import UserError
from transfer.tracking import TrackingStore

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"]


def _run(root: Path, name: str) -> RunFolder:
    run = RunFolder(root / "sessions" / name / "runs" / "r1")
    run.path.mkdir(parents=True)
    run.note_update(started=time.time())
    return run


def _wait_ended(sup: Supervisor, run: RunFolder, timeout: float = 30.0) -> None:
    assert sup.wait(run, timeout), "the process did not end"


@pytest.fixture
def store(tmp_path: Path) -> TrackingStore:
    return TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_one_training_per_visitor_and_two_on_the_server(tmp_path: Path, store: TrackingStore) -> None:
    sup = Supervisor(Limits(), store, command=SLEEP)
    a1, a2, b, c = (_run(tmp_path, n) for n in ("a1", "a2", "b", "c"))
    try:
        sup.start("alice", a1)
        with pytest.raises(UserError, match="already have a training running"):
            sup.start("alice", a2)
        sup.start("bob", b)
        with pytest.raises(UserError, match="running 2 trainings, its limit"):
            sup.start("carol", c)
        assert [r.name for r in sup.running_for("alice")] == ["r1"] and sup.alive(a1) and not sup.alive(a2)
    finally:
        sup.stop_all()


def test_an_ended_process_is_reaped_and_its_exit_recorded(tmp_path: Path, store: TrackingStore) -> None:
    sup = Supervisor(Limits(), store, command=[sys.executable, "-c", "raise SystemExit(3)"])
    run = _run(tmp_path, "a")
    sup.start("alice", run)
    _wait_ended(sup, run)
    assert run.note()["returncode"] == 3 and not sup.alive(run)
    assert zombies_of(os.getpid()) == []


def test_cancel_kills_a_fit_that_ignores_sigterm_after_the_grace(tmp_path: Path, store: TrackingStore) -> None:
    sup = Supervisor(Limits(cancel_grace_s=1.0), store, command=STUBBORN)
    run = _run(tmp_path, "a")
    sup.start("alice", run)
    time.sleep(1.5)  # let it install its handler
    t0 = time.monotonic()
    assert sup.cancel(run)
    _wait_ended(sup, run, timeout=15)
    assert time.monotonic() - t0 < 10 and run.note()["returncode"] == -9 and run.note()["cancel_requested"]


def test_a_gone_visitors_training_is_stopped(tmp_path: Path, store: TrackingStore) -> None:
    sup = Supervisor(Limits(idle_stop_minutes=1), store, command=SLEEP)
    run = _run(tmp_path, "a")
    sup.start("alice", run)
    sup.sweep(lambda owner: 61.0, tmp_path / "sessions")
    _wait_ended(sup, run)
    assert run.note()["returncode"] == -15


def test_a_present_visitors_training_goes_on(tmp_path: Path, store: TrackingStore) -> None:
    sup = Supervisor(Limits(idle_stop_minutes=1), store, command=SLEEP)
    run = _run(tmp_path, "a")
    try:
        sup.start("alice", run)
        sup.sweep(lambda owner: 0.0, tmp_path / "sessions")
        time.sleep(1.0)
        assert sup.alive(run)
    finally:
        sup.stop_all()


def test_old_work_folders_are_deleted_recent_ones_kept(tmp_path: Path, store: TrackingStore) -> None:
    sessions = tmp_path / "sessions"
    for name, age_h in (("old", 30), ("recent", 1)):
        (sessions / name).mkdir(parents=True)
        marker = sessions / name / "session.json"
        marker.write_text("{}")
        t = time.time() - age_h * 3600
        os.utime(marker, (t, t))
    Supervisor(Limits(session_ttl_hours=24), store).sweep(lambda owner: 0.0, sessions)
    assert sorted(p.name for p in sessions.iterdir()) == ["recent"]


def test_a_fit_that_died_without_a_word_is_marked_killed(tmp_path: Path, store: TrackingStore) -> None:
    """A fit killed by SIGKILL leaves run.json "running" and its MLflow run RUNNING: the reaper marks it KILLED."""
    client = store.check().client
    mlrun = client.create_run(client.create_experiment("app"))
    run = _run(tmp_path, "a")
    fit_dir = run.path / "recipe-0123456789"
    fit_dir.mkdir()
    (fit_dir / "run.json").write_text(json.dumps({"status": "running", "run_id": mlrun.info.run_id}))
    sup = Supervisor(Limits(), store, command=[sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"])
    sup.start("alice", run)
    _wait_ended(sup, run)
    assert client.get_run(mlrun.info.run_id).info.status == "KILLED"
    assert run.fit_state()["status"] == "interrupted" and run.status(alive=False) == "interrupted"
