"""Per-session work directories, uploads and the training subprocess of the web page.

Everything here is plain Python so it can be tested without a browser. The page never trains in its own
process: it writes a recipe and runs ``python -m transfer fit`` on it, reading the fit's progress from its run
directory's ``events.jsonl`` and its result from ``run.json`` (:mod:`transfer.rundir`), never from its output.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transfer.errors import UserError
from transfer.imaging import IMAGE_EXTENSIONS, probe_file
from transfer.progress import read_events
from transfer.rundir import RunDir
from transfer.sources import ScanResult, descend_wrappers, safe_extract_zip, scan_folder

_log = logging.getLogger(__name__)

MAX_UPLOAD_FILES = 5000
MAX_UPLOAD_BYTES = 500 * 1024 * 1024
TINY_CLASS = 10
IMBALANCE_RATIO = 3.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, default: str = "item") -> str:
    """A file-system-safe name (no separators, no dots first) for labels and registered names."""
    name = _SAFE_NAME.sub("_", text.strip()).strip("._")
    return name[:64] or default


@dataclass
class Session:
    """One visitor's isolated work directory: uploads, dataset, recipes and training logs live under ``root``."""

    root: Path
    tracking_uri: str
    data_dir: Path | None = None
    data_source: str | None = None
    classes: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    run_dir: Path | None = None  # the page's folder of one training: recipe.yaml, fit.log and the fit's run directory
    fit_dir: RunDir | None = None  # the fit's own run directory (run.json, events.jsonl, checkpoints)
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Path, session_id: str, tracking_uri: str) -> Session:
        root = base / "sessions" / safe_name(session_id, "anonymous")
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=root.resolve(), tracking_uri=tracking_uri)

    # ---------------------------------------------------------------------------------------------- data
    def load_zip(self, zip_path: str | Path) -> ScanResult:
        """Extract an uploaded zip of class folders inside the session (safely) and scan it."""
        zip_path = Path(zip_path)
        if zip_path.stat().st_size > MAX_UPLOAD_BYTES:
            raise UserError(
                f"the zip is {zip_path.stat().st_size / 1e6:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB"
            )
        folder = descend_wrappers(safe_extract_zip(zip_path, self.root / "uploads"))
        return self._use_folder(folder)

    def load_images(self, paths: list[str], labels: list[str]) -> ScanResult:
        """Copy dropped images into ``<session>/uploads/images/<label>/`` and scan them."""
        if not paths:
            raise UserError("no images uploaded; drop some images or upload a zip of class folders")
        if len(paths) > MAX_UPLOAD_FILES:
            raise UserError(f"{len(paths)} files is over the {MAX_UPLOAD_FILES}-file limit; upload a zip instead")
        if len(labels) != len(paths):
            raise UserError(
                f"{len(paths)} images but {len(labels)} labels; give one label per image, comma-separated, in order"
            )
        folder = self.root / "uploads" / f"images-{int(time.time() * 1000)}"
        for i, (p, label) in enumerate(zip(paths, labels)):
            dest = folder / safe_name(label, "unlabelled")
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest / f"{i:05d}_{safe_name(Path(p).name)}")
        return self._use_folder(folder)

    def use_builtin(self, name: str) -> ScanResult:
        from transfer.sources import BUILTINS, cache_root

        key = name.removeprefix("builtin:")
        if key not in BUILTINS:
            raise UserError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTINS)}")
        folder = BUILTINS[key](cache_root())
        result = self._use_folder(folder)
        self.data_source = f"builtin:{key}"
        return result

    def _use_folder(self, folder: Path) -> ScanResult:
        result = scan_folder(folder)
        self.data_dir, self.data_source, self.classes = folder, str(folder), result.classes
        return result

    # ---------------------------------------------------------------------------------------------- train
    def write_recipe(self, recipe: dict[str, Any]) -> Path:
        """Validate and save a recipe for this session's data; returns the file `transfer fit` will run."""
        from transfer.recipe import load_recipe

        if not self.data_source:
            raise UserError("load a dataset first (Data tab)")
        run_dir = self.root / "runs" / time.strftime("%Y%m%d-%H%M%S")
        recipe = {**recipe, "data": {**recipe.get("data", {}), "source": self.data_source}}
        recipe.setdefault("tracking", {})["uri"] = self.tracking_uri
        recipe["trainer"] = {**recipe.get("trainer", {}), "default_root_dir": str(run_dir)}
        load_recipe(recipe)  # fail here, on the page, rather than in the subprocess
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        self.run_dir, self.fit_dir = run_dir, RunDir.for_recipe(load_recipe(path))
        return path

    def start(self, recipe_path: Path) -> None:
        """Run ``transfer fit`` on the recipe in a subprocess of its own process group."""
        if self.running:
            raise UserError("a training run is already going on in this session; cancel it or wait")
        assert self.run_dir is not None
        self.result = {}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(self.run_dir / "fit.log", "wb")  # noqa: SIM115 - closed in poll() when the run ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transfer", "fit", str(recipe_path)],
            cwd=self.run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._log_file = log

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """The fit's progress events so far."""
        return read_events(self.fit_dir.events) if self.fit_dir else []

    def log_tail(self, lines: int = 5) -> str:
        if not self.run_dir or not (self.run_dir / "fit.log").exists():
            return ""
        text = (self.run_dir / "fit.log").read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def finish(self) -> dict[str, Any]:
        """After the subprocess ended: the fit's result from its ``run.json`` (run_id, model_uri, metrics, ...),
        the exit code, and the error its last event names."""
        assert self.proc is not None and self.fit_dir is not None
        self._log_file.close()
        state = self.fit_dir.read()
        result: dict[str, Any] = {"returncode": self.proc.returncode, "status": state.get("status")}
        result.update(state.get("result") or {})  # only a finished fit has one
        ends = [e for e in self.events() if e["event"] == "end"]
        if ends and ends[-1].get("error"):
            result["error"] = ends[-1]["error"]
        self.result = result
        return result

    def cancel(self, timeout: float = 20.0) -> None:
        """Stop the run cleanly: SIGTERM, which ``transfer fit`` handles as Ctrl+C whatever signals the page's own
        process ignores (the checkpoints stay resumable, the MLflow run ends KILLED); SIGKILL after ``timeout``."""
        if not self.running:
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def summarize(result: ScanResult) -> tuple[str, list[tuple[str, str]]]:
    """Markdown with class counts and warnings, and a gallery of up to 6 images per class."""
    counts = Counter(label for _, label in result.samples)
    lines = [
        f"**{len(result.samples)} images in {len(result.classes)} classes**",
        "",
        "| class | images |",
        "|---|---|",
    ]
    lines += [f"| {c} | {counts[i]} |" for i, c in enumerate(result.classes)]
    warnings = []
    tiny = [c for i, c in enumerate(result.classes) if counts[i] < TINY_CLASS]
    if tiny:
        warnings.append(f"tiny classes (under {TINY_CLASS} images): {', '.join(tiny)}")
    if counts and max(counts.values()) >= IMBALANCE_RATIO * max(1, min(counts.values())):
        warnings.append("imbalanced classes: the loss is re-weighted (data.balance auto)")
    if result.skipped:
        shown = "; ".join(f"{Path(p).name}: {r}" for p, r in result.skipped[:10])
        more = f" (and {len(result.skipped) - 10} more)" if len(result.skipped) > 10 else ""
        warnings.append(f"skipped {len(result.skipped)} files: {shown}{more}")
    if warnings:
        lines += ["", *[f"- ⚠️ {w}" for w in warnings]]
    gallery, per_class = [], Counter()
    for path, label in result.samples:
        if per_class[label] < 6:
            per_class[label] += 1
            gallery.append((path, result.classes[label]))
    return "\n".join(lines), gallery


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS and probe_file(path) is None
