"""What a front end does with an audit: findings with thumbnails, and a cleaned copy of the data.

The original data is never modified: :func:`write_cleaned_copy` copies every file it keeps into a new folder in
the layout a recipe reads (``train/<class>/`` and ``val/<class>/``), atomically (nothing is left half-written).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transfer.audit.findings import AuditReport
from transfer.audit.report import save_thumbnails, sections
from transfer.errors import UserError

# What "drop these" removes unless told otherwise: the second and later copies, the leaked validation copies,
# unreadable files and outliers. Label suspects are for a person to look at, not to drop unseen.
DEFAULT_DROP = ("leaks", "exact_duplicates", "near_duplicates", "unreadable", "outliers")


def suggested_drops(report: AuditReport, kinds: Iterable[str] = DEFAULT_DROP) -> list[str]:
    """Paths a cleaned copy leaves out for each kind of finding (``label_issues`` drops every suspect)."""
    kinds = set(kinds)
    drop: list[str] = []
    if "leaks" in kinds:
        drop += [val for _, val in report.leaks]
    for kind in ("exact_duplicates", "near_duplicates"):
        if kind in kinds:
            for g in getattr(report, kind):
                keep = next((p for p, s in zip(g["paths"], g["splits"]) if s == "train"), g["paths"][0])
                drop += [p for p in g["paths"] if p != keep]
    if "unreadable" in kinds:
        drop += report.unreadable
    if "outliers" in kinds:
        drop += report.outliers
    if "label_issues" in kinds:
        drop += [i["path"] for i in report.label_issues]
    return sorted(set(drop))


def write_cleaned_copy(job: Any, dest: str | Path, drop: Iterable[str]) -> Path:
    """Copy the job's data without ``drop`` into ``dest/{train,val}/<class>/`` (a new folder; the original stays).

    Args:
        job: the :class:`transfer.job.FitJob` the audit ran on (its classes and split).
        dest: a folder that does not exist yet.
        drop: paths to leave out (e.g. :func:`suggested_drops`).

    Raises:
        UserError: ``dest`` exists already.
    """
    dest = Path(dest)
    if dest.exists():
        raise UserError(f"{dest} exists already; give a new folder for the cleaned copy")
    dropped = set(drop)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for split in ("train", "val"):
            for k, (path, label) in enumerate(getattr(job.index, split)):
                if path in dropped:
                    continue
                folder = tmp / split / job.index.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / Path(path).name
                if target.exists():  # two files of one class with the same name in different source folders
                    target = folder / f"{k:06d}_{Path(path).name}"
                shutil.copy2(path, target)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def page_findings(report: AuditReport, folder: str | Path) -> list[dict[str, Any]]:
    """The findings as a page shows them: one row per finding with its thumbnails written under ``folder``.

    Each row: ``{"section", "paths", "caption", "thumbnails"}`` (``thumbnails``: PNG file paths, one per path that
    decodes), sections in the order a person should act on them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, counter = [], itertools.count(1)
    for title, items in sections(report):
        for paths, caption in items:
            thumbs = [str(t) for t in save_thumbnails(paths, folder, counter, 5)]
            rows.append({"section": title, "paths": list(paths), "caption": caption, "thumbnails": thumbs})
    return rows
