"""What the page draws from a data audit and a backbone recommendation: the verdicts, each finding with its
thumbnails and caption, the learning curve with its forecast, and the ranked table of backbones.

Thumbnails and the curve are inline PNG data URLs (the page hands out no server path), and every path in a verdict
or a caption is shown relative to the dataset (:func:`app.runs.scrub`).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

from app.evaluate import open_image
from app.runs import scrub
from app.views import thumbnail_url
from transfer.audit.findings import AuditReport
from transfer.audit.report import MAX_SHOWN, curve_png

THUMB_PX = 96


def _shown(path: str, hide: list[Path]) -> str:
    return scrub(path, hide)


def _figure(row: dict[str, Any], drops: set[str], hide: list[Path]) -> str:
    """One finding: its thumbnails side by side, the audit's caption, the files, and which of them "Drop these"
    leaves out."""
    e = html.escape
    thumbs = [img for t in row["thumbnails"] if (img := open_image(t)) is not None]
    pictures = "".join(f'<img src="{thumbnail_url(img, THUMB_PX)}" alt="{e(row["caption"])}">' for img in thumbs)
    names = ", ".join(e(_shown(p, hide)) for p in row["paths"])
    dropped = [_shown(p, hide) for p in row["paths"] if p in drops]
    fate = f" — <b>dropped</b>: {e(', '.join(dropped))}" if dropped else " — kept (check it yourself)"
    return (
        f"<figure><div>{pictures or '<span class=tw-empty>no picture</span>'}</div>"
        f"<figcaption><i>{e(_shown(row['caption'], hide))}</i><br>{names}{fate}</figcaption></figure>"
    )


def _forecast(report: AuditReport) -> str:
    c = report.learning_curve
    if not c.get("sizes"):
        return ""
    png = curve_png(report)
    img = f'<img class="tw-curve" src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="learning curve">'
    starved = c.get("data_starved") or []
    words = (
        f"No forecast: {c['no_forecast']}."
        if c.get("forecast_accuracy") is None
        else f"Expected accuracy at 2x the data ({c['forecast_size']} training images): about "
        f"{c['forecast_accuracy']:.1%} (now about {c['fitted_accuracy']:.1%}, a linear probe's power-law fit). "
        + (f"Data-starved classes: {', '.join(starved)}." if starved else "No class is data-starved.")
    )
    words = f'<div class="tw-forecast">{html.escape(words)}</div>'
    return f"<h3>How many more images would help?</h3>{words}{img if png else ''}"


def findings_html(report: AuditReport, rows: list[dict[str, Any]], drops: Iterable[str], hide: list[Path]) -> str:
    """The audit on the page: what was audited, the verdicts, the learning curve, then each finding section.

    Args:
        report: the audit.
        rows: :func:`transfer.audit.clean.page_findings` of it (thumbnail files still on disk).
        drops: the paths "Drop these" leaves out.
        hide: folders whose prefix is cut from every path shown.
    """
    e, drops = html.escape, set(drops)
    n, probe = sum(report.classes.values()), report.probe
    head = f"Audited {n} images in {len(report.classes)} classes with {_shown(report.backbone, hide)}."
    if probe:
        head += (
            f" A linear probe on its features (cross-validated): {probe['accuracy']:.1%} "
            f"(95% interval {probe['low']:.1%} to {probe['high']:.1%})."
        )
    verdicts = "".join(f"<li>{e(_shown(v, hide))}</li>" for v in report.verdicts) or "<li>No problem found.</li>"
    out = [f'<div class="tw-audit"><p>{e(head)}</p><h3>Verdict</h3><ul class="tw-verdicts">{verdicts}</ul>']
    out.append(_forecast(report))
    for title, group in groupby(rows, key=lambda r: r["section"]):
        items = list(group)
        figures = "".join(_figure(r, drops, hide) for r in items[:MAX_SHOWN])
        more = f"<p>… and {len(items) - MAX_SHOWN} more.</p>" if len(items) > MAX_SHOWN else ""
        out.append(f'<h3>{e(title)} ({len(items)})</h3><div class="tw-findings">{figures}</div>{more}')
    return "".join(out) + "</div>"


def message_html(text: str) -> str:
    """A line in the findings' place (a refusal, or what "Drop these" did)."""
    return f'<div class="tw-audit"><p>{html.escape(text)}</p></div>'


def recommendation_md(rec: Any) -> str:
    """The ranking (:class:`transfer.recommend.Recommendation`) as a Markdown table, the choice first."""
    lines = [
        "| # | backbone (weights) | val acc (95% interval) | CV acc | kNN acc | params | MACs | CPU ms | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(rec.scores, 1):
        if s.status != "measured":
            lines.append(f"| {i} | {s.candidate.label} | {s.status} | | | | | | |")
            continue
        noise = "within noise of #1" if s.within_noise else ""
        lines.append(
            f"| {i} | {s.candidate.label} | {s.probe_acc:.1%} ({s.low:.1%} to {s.high:.1%}) | {s.cv_acc:.1%} | "
            f"{s.knn_acc:.1%} | {s.params / 1e6:.1f}M | {s.macs / 1e6:.0f}M | {s.latency_ms:.1f} | {noise} |"
        )
    best = rec.best
    choice = (
        f"**Selected: {best.candidate.backbone}** (a linear probe on its frozen features scored best on your "
        "validation images; a candidate marked within noise may do as well)."
        if best
        else "No candidate could be measured; the backbone is unchanged."
    )
    return "\n".join([choice, "", *lines])
