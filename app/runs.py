"""A visitor's trainings as folders on disk: what each one is, how far it got, and how it ended.

Each training the page starts is a folder ``<work folder>/runs/<stamp>/`` holding the recipe ``transfer fit``
runs (``recipe.yaml``), the page's note about it (``page.json``: backbone, dataset, start time, and the exit code
once its process is reaped), the fit's output (``fit.log``) and the fit's own run directory
(:class:`transfer.rundir.RunDir`: ``run.json`` and ``events.jsonl``). Everything the page shows about a run is read
back from these files, so a reload, a second tab or a restarted server sees the same thing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transfer.jsonfile import read_json, write_json
from transfer.progress import read_events
from transfer.rundir import FAILED, FINISHED, INTERRUPTED, RUNNING, TRAINED, RunDir

PAGE_FILE = "page.json"
RECIPE_FILE = "recipe.yaml"
LOG_FILE = "fit.log"
# What a visitor reads for each state of a run (the run directory's states, and the page's own).
STATUS_WORDS = {
    "starting": "starting",
    RUNNING: "running",
    "cancelling": "cancelling",
    FINISHED: "finished",
    INTERRUPTED: "cancelled",
    FAILED: "failed",
    TRAINED: "trained, not saved",
}
RUN_COLUMNS = ["run", "status", "backbone", "strategy", "val_acc", "started"]
_PATHISH = re.compile(r"(?:/[\w.@+-]+){2,}/?")


@dataclass
class RunFolder:
    """One training the page started (see the module docstring).

    Args:
        path: ``<work folder>/runs/<stamp>``.
    """

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @classmethod
    def create(cls, runs: Path, recipe: dict[str, Any], note: dict[str, Any]) -> RunFolder:
        """Write a new run folder: the recipe (its ``trainer.default_root_dir`` is the folder) and the note."""
        from transfer.recipe import load_recipe

        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = runs / stamp, 1
        while path.exists():
            n += 1
            path = runs / f"{stamp}-{n}"
        recipe = {**recipe, "trainer": {**recipe.get("trainer", {}), "default_root_dir": str(path)}}
        load_recipe(recipe)  # a bad recipe fails here, on the page, before anything is written
        path.mkdir(parents=True)
        (path / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        run = cls(path)
        run.note_update(started=time.time(), **note)
        return run

    # -- the page's note ---------------------------------------------------------------------------------------
    def note(self) -> dict[str, Any]:
        return read_json(self.path / PAGE_FILE)

    def note_update(self, **fields: Any) -> None:
        """Record ``fields`` in ``page.json`` (written atomically: a reader never sees half of it)."""
        write_json(self.path / PAGE_FILE, {**self.note(), **fields})

    # -- the fit's files ---------------------------------------------------------------------------------------
    @property
    def fit_dir(self) -> RunDir:
        """The fit's run directory: the folder ``transfer fit`` made in this one (found, not predicted: its name is
        the fit's digest of the recipe, which is the fit's business)."""
        for d in sorted(self.path.iterdir()) if self.path.is_dir() else ():
            if d.is_dir() and any((d / f).exists() for f in (".lock", "run.json", "events.jsonl")):
                return RunDir(d)
        return RunDir(self.path / "not-started")

    def events(self) -> list[dict[str, Any]]:
        """The fit's progress events so far (:mod:`transfer.progress`)."""
        return read_events(self.fit_dir.events)

    def fit_state(self) -> dict[str, Any]:
        """The fit's ``run.json`` (empty before its MLflow run began)."""
        return self.fit_dir.read()

    def result(self) -> dict[str, Any]:
        """A finished fit's result (``run_id``, ``model_uri``, ``metrics`` ...), else empty."""
        state = self.fit_state()
        return dict(state.get("result") or {}) if state.get("status") == FINISHED else {}

    def status(self, alive: bool) -> str:
        """The run's state (a key of :data:`STATUS_WORDS`); ``alive``: its process is still running."""
        if alive:
            if self.note().get("cancel_requested"):
                return "cancelling"
            return RUNNING if self.fit_state().get("status") == RUNNING else "starting"
        status = self.fit_state().get("status")
        if status in (None, RUNNING):  # ended before its MLflow run began, or died without a word
            return INTERRUPTED if self.note().get("cancel_requested") else FAILED
        return status

    def error(self, hide: list[Path]) -> str:
        """Why the run failed, in one line, with no server paths (``hide``: folders to leave out)."""
        ends = [e for e in self.events() if e["event"] == "end" and e.get("error")]
        text = ends[-1]["error"] if ends else _last_line(self.log_path)
        return scrub(text, [self.path, *hide])

    def row(self, alive: bool) -> list[Any]:
        """The runs table's row: run, status, backbone, strategy, val_acc, started."""
        note, state = self.note(), self.fit_state()
        acc = (state.get("result") or {}).get("metrics", {}).get("val_acc")
        strategy = state.get("strategy") or note.get("strategy", "")
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(note.get("started", 0)))
        val = "" if acc is None else f"{float(acc):.3f}"
        return [self.name, STATUS_WORDS[self.status(alive)], note.get("backbone", ""), strategy, val, started]


def list_runs(runs: Path) -> list[RunFolder]:
    """A work folder's runs, newest first."""
    if not runs.is_dir():
        return []
    found = [RunFolder(p) for p in runs.iterdir() if p.is_dir() and (p / PAGE_FILE).is_file()]
    return sorted(found, key=lambda r: r.note().get("started", 0), reverse=True)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "the training process ended without a word"
    errors = [ln for ln in lines if ln.startswith(("error:", "ERROR", "Error"))]
    return (errors or lines or ["the training process ended without a word"])[-1]


def scrub(text: str, hide: list[Path]) -> str:
    """``text`` without server paths: known folders dropped, any other absolute path reduced to its file name."""
    for folder in sorted({str(p) for p in hide}, key=len, reverse=True):
        text = text.replace(folder + "/", "").replace(folder, "")
    return _PATHISH.sub(lambda m: Path(m.group(0).rstrip("/")).name, text)
