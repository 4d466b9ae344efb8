"""The audit at the start of ``transfer fit`` (``data.audit: warn | block | off``, default ``warn``).

``warn`` logs the findings to the fit's MLflow run (``audit/report.html`` with thumbnails, ``audit/audit.json``,
metrics ``audit_*``; the learning curve is left to ``transfer audit``), one warning line naming the kinds of problem
found (the verdicts at INFO), then trains; ``block`` does the same but stops a fit whose validation split leaks
training images with one line (exit code 2), before anything trains; ``off`` skips it. The audit shares the fit's
frozen features (the feature cache: the ones its probe computed, else the key a ``linear_probe`` computes). A recipe
whose ``model.backbone`` was ``auto`` also gets the recommendation's table logged here (:mod:`transfer.recommend`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)


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
    from transfer.audit.report import write

    with tempfile.TemporaryDirectory(prefix="transfer-audit-") as tmp:
        write(report, Path(tmp) / "report.html")
        write(report, Path(tmp) / "audit.json")
        for name in ("report.html", "audit.json"):
            store.client.log_artifact(run_id, str(Path(tmp) / name), "audit")
    for key, value in _metrics(report).items():
        store.client.log_metric(run_id, key, float(value))


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
    from transfer.audit import audit

    log_recommendation(store, run_id, job.recipe)
    mode = job.recipe.data.audit
    if mode == "off":
        return
    report = audit(job, curves=False)  # the forecast is `transfer audit`'s and the page's; a fit wants its start
    log_report(store, run_id, report)
    for line in report.verdicts:  # the details are in the run's report; a fit's log gets one warning line
        _log.info("audit: %s", line)
    if report.verdicts:
        kinds = ", ".join(line.split(":", 1)[0] for line in report.verdicts)
        _log.warning("audit found %s: see audit/report.html in run %s, or run transfer audit", kinds, run_id)
    if mode == "block" and report.leaks:
        first = report.leaks[0]
        raise job.recipe.error(
            "data.audit",
            f"{len(report.leaks)} validation images are copies of training images (e.g. {first[1]} = {first[0]}); "
            "remove them (`transfer audit` lists them all) or set data.audit: warn",
        )


__all__ = ["before_training", "log_recommendation", "log_report"]
