"""How an :class:`~transfer.audit.findings.AuditReport` is shown: a terminal table, JSON, Markdown, HTML.

The HTML report is one self-contained file (thumbnails and the learning-curve plot inlined as data URIs), so it
opens from an MLflow run's artifacts as it is; the Markdown report links thumbnails written beside it. Thumbnails
are decoded by :mod:`transfer.imaging` like every other image.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from transfer import imaging
from transfer.audit.findings import AuditReport

THUMB = 96  # thumbnail side in pixels
MAX_SHOWN = 60  # findings shown per section in a report (the JSON has them all)


def thumbnail_png(path: str, side: int = THUMB) -> bytes | None:
    """A PNG thumbnail of an image file, or None when it cannot be decoded."""
    try:
        picture = imaging.load_file(path, draft=2 * side)
    except imaging.ImageInputError:
        return None
    picture.thumbnail((side, side))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def sections(r: AuditReport) -> list[tuple[str, list[tuple[list[str], str]]]]:
    """``(title, [(paths, caption)])`` per finding type, in the order a person should act on them."""
    groups = [
        (
            "Leaks (train / validation)",
            [(pair, "the same picture in training and validation") for pair in r.leaks],
        ),
        (
            "Exact duplicates",
            [
                (g["paths"], ", ".join(g["labels"]) + (" (labels conflict)" * g["conflicting_labels"]))
                for g in r.exact_duplicates
            ],
        ),
        (
            "Near-duplicates",
            [(g["paths"], f"similarity {g['similarity']:.3f}; " + ", ".join(g["labels"])) for g in r.near_duplicates],
        ),
        (
            "Likely label errors",
            [
                ([i["path"]], f"labelled {i['given']}, looks like {i['suggested']} ({i['score']:.2f})")
                for i in r.label_issues
            ],
        ),
        ("Outliers", [([p], f"{r.outlier_distance.get(p, 0):.1f} x the median distance") for p in r.outliers]),
        ("Unreadable files", [([p], r.unreadable_reasons.get(p, "unreadable")) for p in r.unreadable]),
        ("Tiny or elongated pictures", [([o["path"]], o["why"]) for o in r.odd_images]),
    ]
    return [(title, rows) for title, rows in groups if rows]


def _summary_rows(r: AuditReport) -> list[tuple[str, int]]:
    return [
        ("leaks (train/val)", len(r.leaks)),
        ("exact duplicate groups", len(r.exact_duplicates)),
        ("near-duplicate groups", len(r.near_duplicates)),
        ("likely label errors", len(r.label_issues)),
        ("outliers", len(r.outliers)),
        ("unreadable files", len(r.unreadable)),
        ("tiny/elongated pictures", len(r.odd_images)),
        ("under-represented classes", len(r.small_classes)),
    ]


def _probe_line(r: AuditReport) -> str:
    p = r.probe
    if not p:
        return ""
    return f"linear probe (cross-validated): {p['accuracy']:.1%} (95% interval {p['low']:.1%} to {p['high']:.1%})"


def table(r: AuditReport) -> str:
    """The terminal view: what was audited, a count per problem, the classes, the verdicts."""
    n = sum(r.classes.values())
    lines = [f"audit of {r.source} with {r.backbone}: {n} images, {len(r.classes)} classes", ""]
    lines += [f"  {name:<28}{count:>6}" for name, count in _summary_rows(r)]
    lines += ["", f"  {'class':<20}{'train':>7}{'val':>7}"]
    train, val = r.split_counts.get("train", {}), r.split_counts.get("val", {})
    lines += [f"  {c[:19]:<20}{train.get(c, 0):>7}{val.get(c, 0):>7}" for c in r.classes]
    lines += ["", _probe_line(r)] if r.probe else []
    lines += ["", "verdict:" if r.verdicts else "verdict: no problem found"]
    lines += [f"  - {v}" for v in r.verdicts]
    return "\n".join(lines)


def _data_uri(png: bytes | None) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""


def _html(r: AuditReport, path: Path) -> None:
    e = html.escape
    out = [
        "<!doctype html><meta charset='utf-8'><title>Data audit</title>",
        "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:4px 8px}"
        "img{border:1px solid #ccc;margin-right:4px}.v li{margin:.3em 0}</style>",
        f"<h1>Data audit</h1><p>{e(r.source)} with {e(r.backbone)}</p>",
        "<h2>Verdict</h2><ul class='v'>" + "".join(f"<li>{e(v)}</li>" for v in r.verdicts) + "</ul>",
        f"<p>{e(_probe_line(r))}</p>",
        "<table>" + "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in _summary_rows(r)) + "</table>",
    ]
    if r.learning_curve.get("sizes"):
        out.append(f"<h2>How many more images would help?</h2><img src='{_curve_uri(r)}' alt='learning curve'>")
    for title, rows in sections(r):
        out.append(f"<h2>{e(title)} ({len(rows)})</h2><table>")
        for paths, caption in rows[:MAX_SHOWN]:
            thumbs = "".join(f"<img src='{_data_uri(thumbnail_png(p))}' title='{e(p)}' alt=''>" for p in paths[:4])
            names = "<br>".join(e(p) for p in paths)
            out.append(f"<tr><td>{thumbs}</td><td>{names}<br><i>{e(caption)}</i></td></tr>")
        more = len(rows) - MAX_SHOWN
        out.append("</table>" + (f"<p>... and {more} more (audit.json)</p>" if more > 0 else ""))
    path.write_text("\n".join(out), encoding="utf-8")


def curve_png(r: AuditReport) -> bytes | None:
    """The learning curve with its forecast as a PNG, or None when the audit measured none."""
    from transfer.audit.curves import LearningCurve, plot

    c = r.learning_curve
    if not c.get("sizes"):
        return None
    buf = io.BytesIO()
    point = {k: c.get(k) for k in ("forecast_size", "forecast_accuracy")}
    plot(LearningCurve(c["sizes"], c["accuracy"], c["per_class"], point), buf)
    return buf.getvalue()


def save_thumbnails(paths: list[str], folder: Path, counter: Iterator[int], width: int) -> list[Path]:
    """Thumbnails of the first four of ``paths`` that still decode, as numbered PNGs in ``folder``."""
    saved = []
    for p in paths[:4]:
        png = thumbnail_png(p)
        if png:
            saved.append(folder / f"{next(counter):0{width}d}.png")
            saved[-1].write_bytes(png)
    return saved


def _curve_uri(r: AuditReport) -> str:
    return _data_uri(curve_png(r))


def _markdown(r: AuditReport, path: Path) -> None:
    thumbs = path.parent / f"{path.stem}_thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    out = [f"# Data audit\n\n{r.source} with {r.backbone}\n\n## Verdict\n"]
    out += [f"- {v}" for v in r.verdicts] + ["", _probe_line(r), "", "| problem | count |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _summary_rows(r)]
    counter = itertools.count(1)
    for title, rows in sections(r):
        out += ["", f"## {title} ({len(rows)})", ""]
        for paths, caption in rows[:MAX_SHOWN]:
            cells = [f"![]({thumbs.name}/{t.name})" for t in save_thumbnails(paths, thumbs, counter, 4)]
            out.append(f"- {' '.join(cells)} {' , '.join(f'`{p}`' for p in paths)}: {caption}")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def _json(r: AuditReport, path: Path) -> None:
    path.write_text(json.dumps(r.to_dict(), indent=1), encoding="utf-8")


WRITERS: dict[str, Callable[[AuditReport, Path], None]] = {".html": _html, ".md": _markdown, ".json": _json}


def write(r: AuditReport, path: str | Path) -> Path:
    """Write the report as its suffix says (``.html``, ``.md`` or ``.json``).

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"{path}: write the audit as {', '.join(WRITERS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(r, path)
    return path
