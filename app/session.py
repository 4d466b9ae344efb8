"""A visitor's work folder: the dataset they loaded, their weights file, their runs, and which run is open.

Everything here is plain Python so it can be tested without a browser. The folder is
``<data dir>/sessions/<digest of the visitor>/`` and its state lives in ``session.json`` (so a reload, another tab
or a restarted server finds the same dataset and runs): uploads under ``uploads/``, trainings under ``runs/``
(:mod:`app.runs`). Loading data replaces the dataset only when the new one is good: a failed load leaves *no*
dataset, never the previous one, so Train cannot quietly use data the visitor meant to replace.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.limits import Limits
from app.runs import RunFolder, list_runs, scrub
from app.visitors import Visitor
from transfer.errors import UserError
from transfer.jsonfile import read_json, write_json
from transfer.sources import ScanResult, descend_wrappers, safe_extract_zip, scan_folder

_log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
TINY_CLASS = 10
IMBALANCE_RATIO = 3.0
SAMPLES_PER_CLASS = 6
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, default: str = "item") -> str:
    """A file-system-safe name (no separators, no dots first) for labels and registered names."""
    name = _SAFE_NAME.sub("_", (text or "").strip()).strip("._")
    return name[:64] or default


@dataclass
class Dataset:
    """The loaded dataset, as the page shows it and as the recipe names it.

    Attributes:
        source: the recipe's ``data.source`` (a folder in the work folder, or ``builtin:NAME``).
        label: what the visitor calls it (the zip's name, "12 dropped images", ``builtin:digits``).
        images: how many usable images.
        classes: class names.
        summary: Markdown: counts per class and warnings.
        samples: a few ``(path, class)`` pairs per class for the gallery.
    """

    source: str
    label: str
    images: int
    classes: list[str]
    summary: str
    samples: list[tuple[str, str]]


class Session:
    """One visitor's work folder (see the module docstring).

    Args:
        root: the folder.
        limits: upload limits.
    """

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root, self.limits = root, limits
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, base: Path, visitor: Visitor, limits: Limits) -> Session:
        """The work folder of ``visitor`` under ``base/sessions`` (made on first use)."""
        return cls((base / "sessions" / visitor.folder_name).resolve(), limits)

    # -- state -------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return read_json(self.root / SESSION_FILE)

    def _update(self, **fields: Any) -> None:
        write_json(self.root / SESSION_FILE, {**self._state(), **fields, "seen": time.time()})

    def touch(self) -> None:
        """Mark the folder as visited now (the session time-to-live counts from here)."""
        self._update()

    @property
    def dataset(self) -> Dataset | None:
        d = self._state().get("dataset")
        if not d:
            return None
        return Dataset(**{**d, "samples": [tuple(s) for s in d["samples"]]})

    @property
    def weights_file(self) -> tuple[str, str] | None:
        """The visitor's own weights file: (path, the backbone it was checked against), if any."""
        w = self._state().get("weights")
        return (w["path"], w["backbone"]) if w and Path(w["path"]).is_file() else None

    def set_weights_file(self, path: str | None, backbone: str | None = None) -> None:
        self._update(weights={"path": path, "backbone": backbone} if path else None)

    @property
    def settings(self) -> dict[str, Any]:
        """The Model tab's settings of the visitor's last training."""
        return dict(self._state().get("settings") or {})

    def save_settings(self, settings: dict[str, Any]) -> None:
        self._update(settings=settings)

    @property
    def current_run(self) -> RunFolder | None:
        """The run Evaluate, Deploy and Try refer to (the last one started, or the one opened from the list)."""
        name = self._state().get("current_run")
        return self.run(name) if name else None

    def open_run(self, name: str) -> RunFolder:
        run = self.run(name)
        self._update(current_run=run.name)
        return run

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def runs(self) -> list[RunFolder]:
        return list_runs(self.runs_dir)

    def run(self, name: str) -> RunFolder:
        """One of this visitor's runs, by folder name.

        Raises:
            UserError: no such run of theirs.
        """
        run = RunFolder(self.runs_dir / safe_name(name, "-"))
        if not (run.path / "page.json").is_file():
            raise UserError(f"no run {name!r} of yours; pick one from the list of your runs")
        return run

    def new_run(self, recipe: dict[str, Any], note: dict[str, Any]) -> RunFolder:
        """A run folder for ``recipe`` on this visitor's dataset (:meth:`open_run` makes it the current one)."""
        if self.dataset is None:
            raise UserError("no dataset loaded: load one on the Data tab first")
        recipe = {**recipe, "data": {**recipe.get("data", {}), "source": self.dataset.source}}
        return RunFolder.create(self.runs_dir, recipe, note)

    # -- data --------------------------------------------------------------------------------------------------
    def clear_dataset(self) -> None:
        self._update(dataset=None)

    def load_zip(self, zip_path: str | Path, shown_name: str | None = None) -> Dataset:
        """Extract an uploaded zip of class folders inside the work folder (safely) and use it."""
        zip_path = Path(zip_path)
        label = shown_name or zip_path.name
        self.clear_dataset()
        size = zip_path.stat().st_size
        if size > self.limits.upload_bytes:
            raise UserError(f"the zip is {size / 1e6:.0f} MB; the limit here is {self.limits.upload_mb} MB")
        names = {str(zip_path): label}
        try:
            extracted = safe_extract_zip(
                zip_path,
                self.root / "uploads",
                max_bytes=self.limits.expanded_bytes,
                max_members=self.limits.max_files,
            )
            folder = descend_wrappers(extracted)
            names |= {str(folder): label, str(extracted): label}
            return self._use(folder, str(folder), label)
        except UserError as exc:
            raise UserError(_in_words(exc, names, self.root)) from None

    def load_images(self, paths: list[str], labels: list[str]) -> Dataset:
        """Copy dropped images into ``uploads/images-<time>/<label>/`` and use them."""
        self.clear_dataset()
        if not paths:
            raise UserError("no images uploaded; drop some images or upload a zip of class folders")
        if len(paths) > self.limits.max_files:
            raise UserError(f"{len(paths)} files is over the {self.limits.max_files}-file limit; upload a zip instead")
        if len(labels) != len(paths):
            raise UserError(
                f"{len(paths)} images but {len(labels)} labels; give one label per image, comma-separated, in order"
            )
        if sum(Path(p).stat().st_size for p in paths) > self.limits.upload_bytes:
            raise UserError(f"the images add up to more than {self.limits.upload_mb} MB, the limit here")
        folder = self.root / "uploads" / f"images-{int(time.time() * 1000)}"
        for i, (p, label) in enumerate(zip(paths, labels)):
            dest = folder / safe_name(label, "unlabelled")
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest / f"{i:05d}_{safe_name(Path(p).name)}")
        label = f"{len(paths)} dropped images"
        try:
            return self._use(folder, str(folder), label)
        except UserError as exc:
            raise UserError(_in_words(exc, {str(folder): label}, self.root)) from None

    def use_builtin(self, name: str) -> Dataset:
        """A built-in dataset (materialised once in the shared dataset cache; the recipe names it ``builtin:``)."""
        from transfer.sources import BUILTINS, cache_root

        self.clear_dataset()
        key = name.removeprefix("builtin:")
        if key not in BUILTINS:
            raise UserError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTINS)}")
        folder = BUILTINS[key](cache_root())
        try:
            return self._use(folder, f"builtin:{key}", f"builtin:{key}")
        except UserError as exc:
            raise UserError(_in_words(exc, {str(folder): f"builtin:{key}"}, self.root)) from None

    def use_split(self, folder: Path, label: str) -> Dataset:
        """Use a folder laid out as ``train/<class>/`` and ``val/<class>/`` (the audit's cleaned copy): the next
        training keeps that split."""
        train = scan_folder(folder / "train")
        val = scan_folder(folder / "val", classes=train.classes)
        result = ScanResult(train.classes, train.samples + val.samples, train.skipped + val.skipped)
        summary, samples = summarize(result, label)
        dataset = Dataset(str(folder), label, len(result.samples), result.classes, summary, samples)
        self._update(dataset=asdict(dataset))
        return dataset

    def _use(self, folder: Path, source: str, label: str) -> Dataset:
        result = scan_folder(folder)
        summary, samples = summarize(result, label)
        dataset = Dataset(source, label, len(result.samples), result.classes, summary, samples)
        self._update(dataset=asdict(dataset))
        return dataset


def _in_words(exc: Exception, names: dict[str, str], root: Path) -> str:
    """An error about an upload in the visitor's words: their file's name for our folders, no server paths."""
    text = str(exc)
    for path in sorted(names, key=len, reverse=True):
        text = text.replace(path, names[path])
    return scrub(text, [root])


def summarize(result: ScanResult, label: str = "") -> tuple[str, list[tuple[str, str]]]:
    """Markdown with class counts and warnings, and up to :data:`SAMPLES_PER_CLASS` images per class."""
    counts = Counter(lab for _, lab in result.samples)
    name = f" — {label}" if label else ""
    lines = [
        f"**{len(result.samples)} images in {len(result.classes)} classes**{name}",
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
    samples, per_class = [], Counter()
    for path, lab in result.samples:
        if per_class[lab] < SAMPLES_PER_CLASS:
            per_class[lab] += 1
            samples.append((path, result.classes[lab]))
    return "\n".join(lines), samples
