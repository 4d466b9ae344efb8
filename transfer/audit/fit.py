"""The audit at the start of ``transfer fit`` (``data.audit: warn | block | off``, default ``warn``).

``warn`` logs the findings to the fit's MLflow run (``audit/report.html`` with thumbnails, ``audit/audit.json``,
metrics ``audit_*``; the learning curve is left to ``transfer audit``), one warning line naming the kinds of problem
found (the verdicts at INFO), then trains; ``block`` does the same but stops a fit whose validation split leaks
training images with one line (exit code 2), before anything trains; ``off`` skips it. The audit shares the fit's
frozen features (the feature cache: the ones its probe computed, else the key a ``linear_probe`` computes). A recipe
whose ``model.backbone`` was ``auto`` also gets the recommendation's table logged here (:mod:`transfer.recommend`).
The findings are kept in the cache folder per dataset, backbone and preprocessing (:func:`cached_audit`): the next
fit of the same data logs them again without auditing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

AUDIT_CACHE_VERSION = 1  # bump when the audit's findings change for the same data
FILES = ("report.html", "audit.json", "summary.json")


def _metrics(report: Any) -> dict[str, float]:
    return {
        "audit_leaks": len(report.leaks),
        "audit_exact_duplicates": len(report.exact_duplicates),
        "audit_near_duplicates": len(report.near_duplicates),
        "audit_label_issues": len(report.label_issues),
        "audit_outliers": len(report.outliers),
        "audit_unreadable": len(report.unreadable),
        "audit_probe_acc": report.probe.get("accuracy", float("nan")),
    }


def log_report(store: Any, run_id: str, report: Any) -> None:
    """The report's HTML (thumbnails inlined), JSON and metrics, logged to ``run_id`` under ``audit/``."""
    with tempfile.TemporaryDirectory(prefix="transfer-audit-") as tmp:
        _log_folder(store, run_id, _write_folder(report, Path(tmp)))


def _write_folder(report: Any, folder: Path) -> dict[str, Any]:
    """The report's files in ``folder``, and its summary (metrics, verdicts, leaks) as written to summary.json."""
    from transfer.audit.report import write

    write(report, folder / "report.html")
    write(report, folder / "audit.json")
    summary = {"metrics": _metrics(report), "verdicts": list(report.verdicts), "leaks": [list(p) for p in report.leaks]}
    (folder / "summary.json").write_text(json.dumps(summary, default=float))
    return {**summary, "folder": str(folder)}


def _log_folder(store: Any, run_id: str, summary: dict[str, Any]) -> None:
    for name in ("report.html", "audit.json"):
        store.client.log_artifact(run_id, str(Path(summary["folder"]) / name), "audit")
    for key, value in summary["metrics"].items():
        store.client.log_metric(run_id, key, float(value))


def _cache_key(job: Any) -> str:
    """The audit's findings depend on the files and labels, the backbone and its weights, preprocessing and seed."""
    parts = [job.index.fingerprint(), job.spec.name, str(job.recipe.model.pretrained), job.data_config]
    parts += [job.recipe.seed, AUDIT_CACHE_VERSION]
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:24]


def cached_audit(job: Any) -> dict[str, Any]:
    """The fit-time audit's summary and files, computed once per dataset and backbone (``<cache>/audit/<key>/``):
    a second fit of the same data starts training without auditing it again."""
    from transfer.audit import audit

    folder = job.cache.root / "audit" / _cache_key(job)
    if all((folder / name).is_file() for name in FILES):
        return {**json.loads((folder / "summary.json").read_text()), "folder": str(folder)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    _write_folder(audit(job, curves=False), tmp)  # the forecast is `transfer audit`'s and the page's
    try:
        os.replace(tmp, folder)  # whole or not at all: a reader never sees half a report
    except OSError:  # another fit wrote it first: theirs is the same
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {**json.loads((folder / "summary.json").read_text()), "folder": str(folder)}


def log_recommendation(store: Any, run_id: str, recipe: Any) -> None:
    """The ``model.backbone: auto`` table and choice, when the recipe had one."""
    table = recipe.recommendation
    if table:
        store.client.log_dict(run_id, table, "recommend/recommend.json")
        store.client.set_tag(run_id, "transfer.backbone_auto", json.dumps(table.get("choice")))


def before_training(job: Any, store: Any, run_id: str) -> None:
    """Audit the fit's data as ``data.audit`` says, log it in the fit's run, and stop on leakage under ``block``.

    Raises:
        UserError: ``block`` and the validation split holds copies of training images.
    """
    log_recommendation(store, run_id, job.recipe)
    mode = job.recipe.data.audit
    if mode == "off":
        return
    summary = cached_audit(job)
    _log_folder(store, run_id, summary)
    verdicts, leaks = summary["verdicts"], summary["leaks"]
    for line in verdicts:  # the details are in the run's report; a fit's log gets one warning line
        _log.info("audit: %s", line)
    if verdicts:
        kinds = ", ".join(line.split(":", 1)[0] for line in verdicts)
        _log.warning("audit found %s: see audit/report.html in run %s, or run transfer audit", kinds, run_id)
    if mode == "block" and leaks:
        first = leaks[0]
        raise job.recipe.error(
            "data.audit",
            f"{len(leaks)} validation images are copies of training images (e.g. {first[1]} = {first[0]}); "
            "remove them (`transfer audit` lists them all) or set data.audit: warn",
        )


__all__ = ["before_training", "cached_audit", "log_recommendation", "log_report"]
