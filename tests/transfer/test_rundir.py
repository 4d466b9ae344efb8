"""A fit's run directory belongs to one fit: a second one stops at once, a killed one is recovered and resumed,
an interrupted run's checkpoints are never thrown away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import write_recipe
from transfer.cli import main
from transfer.errors import UserError
from transfer.progress import read_events
from transfer.recipe import load_recipe
from transfer.rundir import FINISHED, INTERRUPTED, RUNNING, RunDir
from transfer.tracking import TrackingStore
from transfer.train import fit


def _spawn(recipe: Path, workdir: Path, *args: str) -> subprocess.Popen:
    log = (workdir / "first.log").open("w")  # a file, not a pipe nobody reads (a full pipe would stall the fit)
    return subprocess.Popen(
        [sys.executable, "-m", "transfer", "fit", str(recipe), *args],
        cwd=workdir,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(what, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.mark.timeout(900)
def test_second_fit_stops_at_once_and_a_killed_fit_is_recovered_and_resumed(workdir):
    recipe = write_recipe(
        workdir,
        data={"max_per_class": 20, "image_size": 64, "augment": "none", "audit": "off"},
        strategy={"name": "full"},
        trainer={"max_epochs": 4},
    )
    rd = RunDir.for_recipe(load_recipe(recipe))
    first = _spawn(recipe, workdir)
    try:
        # The second epoch has begun: the first one's checkpoint is complete.
        _wait(
            lambda: any(e["event"] == "step" and e["epoch"] >= 1 for e in read_events(rd.events)),
            first,
            workdir / "first.log",
        )
        # Paused, not finished: it holds the run as a slow fit would while the second one starts (a python start).
        os.killpg(first.pid, signal.SIGSTOP)
        assert rd.read().get("status") == RUNNING, (workdir / "first.log").read_text()[-3000:]
        before, run_id = _files(rd.path), rd.read()["run_id"]
        second = subprocess.run(
            [sys.executable, "-m", "transfer", "fit", str(recipe)], cwd=workdir, capture_output=True, text=True
        )
        log = (workdir / "first.log").read_text()[-3000:]
        assert second.returncode == 2 and second.stdout == "", (first.poll(), log, second.stderr[-2000:])
        assert len(second.stderr.splitlines()) == 1 and "another `transfer fit`" in second.stderr, second.stderr
        assert f"pid {first.pid}" in second.stderr
        # Nothing of the first fit's was touched: every file is still there and the run is still the same.
        assert set(before) <= set(_files(rd.path)) and rd.read()["run_id"] == run_id
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as the OOM killer would: no chance to clean up
        first.wait(30)
    assert rd.read()["status"] == RUNNING  # what it left behind: a run that looks alive
    ckpt = rd.last_ckpt.read_bytes()

    # Without --resume: one line saying how to go on; the checkpoints are kept, the dead MLflow run marked KILLED.
    with pytest.raises(UserError, match=r"--resume.*--restart") as err:
        fit(recipe)
    assert "\n" not in str(err.value)
    assert rd.last_ckpt.read_bytes() == ckpt and rd.read()["status"] == INTERRUPTED
    client = TrackingStore(f"sqlite:///{workdir}/mlflow.db").client
    assert client.get_run(run_id).info.status == "KILLED"

    result = fit(recipe, resume=True)
    assert result.run_id == run_id and rd.read()["status"] == FINISHED
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))
    assert steps == list(range(4))


def _interrupted(path: Path, run_id: str = "r1") -> RunDir:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"status": INTERRUPTED, "run_id": run_id}))
    (path / "last.ckpt").write_bytes(b"weights")
    (path / "events.jsonl").write_text("")
    return RunDir(path)


def test_restart_keeps_the_interrupted_run_aside(tmp_path):
    rd = _interrupted(tmp_path / "run")
    with rd.claim(resume=False, restart=True) as held:
        assert held.state == {} and not held.last_ckpt.exists()
    kept = tmp_path / "run" / "previous" / "r1"
    assert (kept / "last.ckpt").read_bytes() == b"weights"
    assert json.loads((kept / "run.json").read_text())["status"] == INTERRUPTED


def test_resume_and_restart_together_is_one_line(workdir, capsys, stderr_logging):
    recipe = write_recipe(workdir)
    assert main(["fit", str(recipe), "--resume", "--restart"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


@pytest.mark.parametrize(
    ("start", "to", "ok"),
    [
        (None, RUNNING, True),
        (RUNNING, FINISHED, True),
        (INTERRUPTED, RUNNING, True),
        (FINISHED, RUNNING, False),
        (None, FINISHED, False),
    ],
)
def test_run_states_follow_the_state_machine(tmp_path, start, to, ok):
    rd = RunDir(tmp_path)
    rd.state = {"status": start} if start else {}
    if ok:
        rd.transition(to)
        assert RunDir(tmp_path).status == to
    else:
        with pytest.raises(RuntimeError, match="not a transition"):
            rd.transition(to)


def test_a_front_end_recovers_a_dead_fit_it_did_not_start(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": RUNNING, "run_id": "r9", "pid": 1, "host": "h"}))
    rd = RunDir(tmp_path)
    assert not rd.is_held()
    assert rd.recover() and RunDir(tmp_path).status == INTERRUPTED
    assert not rd.recover()  # once
