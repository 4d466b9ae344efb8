"""What the page draws from a run's files: the progress bar and its words, the loss and accuracy curves, and grids
of thumbnails with their captions.

Progress comes from the fit's ``events.jsonl`` (:mod:`transfer.progress`): every phase has its words there, and the
page adds the seconds it has been in it, so a visitor always sees something move. The curves are drawn by
matplotlib as inline SVG: a line with a marker at every epoch (a single epoch is a visible point), fixed readable
axes (accuracy 0-1 with two decimals, whole epochs), and one ``<g id="curve-<metric>">`` group per series.
Thumbnails are embedded as small PNG data URLs, so the page hands out no server paths.
"""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from PIL import Image

from transfer.progress import PHASES

START_TEXT = "Starting the training process (loading PyTorch, Lightning and MLflow)"
CANCEL_TEXT = "Cancelling… waiting for the training to stop"
ENDED_TEXT = {
    "finished": "Training finished.",
    "interrupted": "Cancelled. The run was stopped and nothing was registered; its checkpoints are kept.",
    "trained": "Trained, but the model could not be saved to MLflow; the checkpoints are kept.",
}
LOSS_SERIES = {"train_loss": "train loss", "val_loss": "val loss"}
ACC_SERIES = {"val_acc": "val accuracy", "val_f1": "val F1"}
THUMB_PX = 112
_SVG_LOCK = threading.Lock()  # matplotlib's rc settings are process-wide: one drawing at a time


# ---------------------------------------------------------------------------------------------------- progress
def _training_text(last: dict[str, Any]) -> tuple[str, float | None]:
    epochs = last.get("max_epochs") or 0
    if last["event"] == "step":
        steps = last.get("steps_per_epoch") or 0
        done = (last["epoch"] + last["step"] / steps) / epochs if steps and epochs else None
        return f"Training: epoch {last['epoch'] + 1}/{epochs or '?'}, batch {last['step']}/{steps or '?'}", done
    if last["event"] == "epoch":
        acc = f" — val accuracy {last['val_acc']:.3f}" if last.get("val_acc") is not None else ""
        return f"Training: epoch {last['epoch']}/{epochs or '?'} done{acc}", last["epoch"] / epochs if epochs else None
    return f"Training: epoch {last.get('epoch', 0) + 1}/{epochs or '?'} starting", 0.0


def progress_words(events: Sequence[dict[str, Any]]) -> tuple[str, float | None, float]:
    """The current phase in words, how far through it (0-1, or None when not known), and when it began."""
    shown = [e for e in events if e["event"] in ("phase", "start", "step", "epoch")]
    if not shown:
        return START_TEXT, None, 0.0
    last = shown[-1]
    began = next((e["time"] for e in reversed(shown) if e["event"] == "phase"), last["time"])
    if last["event"] == "phase" and last.get("phase") != "train":
        total = last.get("total")
        done = last["done"] / total if total else None
        return last.get("text") or PHASES.get(last["phase"], last["phase"]), done, began
    return (*_training_text(last), began)


def progress_html(status: str, events: Sequence[dict[str, Any]], started: float, error: str = "") -> str:
    """The progress block: the phase in words, a bar, and the seconds spent in the phase."""
    if status in ENDED_TEXT or status == "failed":
        text = f"❌ Training failed: {error}" if status == "failed" else ENDED_TEXT[status]
        return _block(status, text, 1.0 if status == "finished" else None, "", animate=False)
    if status == "cancelling":
        return _block(status, CANCEL_TEXT, None, "", animate=True)
    text, done, began = progress_words(events)
    since = time.time() - (began or started)
    return _block(status, text, done, f"{since:.0f} s", animate=True)


def message_html(text: str) -> str:
    """A line in the progress block's place (a refusal before anything started)."""
    return f'<div class="tw-progress" data-status="refused"><span class="tw-phase">{html.escape(text)}</span></div>'


def _block(status: str, text: str, done: float | None, elapsed: str, animate: bool) -> str:
    bar = f'<progress max="1" value="{done:.3f}"></progress>' if done is not None else "<progress></progress>"
    if not animate and done is None:
        bar = ""
    return (
        f'<div class="tw-progress" data-status="{html.escape(status)}">'
        f'<span class="tw-phase">{html.escape(text)}</span> <span class="tw-elapsed">{html.escape(elapsed)}</span>'
        f"{bar}</div>"
    )


# ---------------------------------------------------------------------------------------------------- curves
def curve_rows(events: Sequence[dict[str, Any]]) -> tuple[tuple[int, tuple[tuple[str, float], ...]], ...]:
    """Per-epoch metrics from the events: ``((epoch, ((metric, value), ...)), ...)``, hashable for the cache."""
    rows = {}
    for e in events:
        if e["event"] == "epoch":
            keys = (*LOSS_SERIES, *ACC_SERIES)
            rows[int(e["epoch"])] = tuple((k, float(e[k])) for k in keys if e.get(k) is not None)
    return tuple(sorted(rows.items()))


def max_epochs(events: Sequence[dict[str, Any]]) -> int:
    return max((int(e.get("max_epochs") or 0) for e in events if e["event"] in ("start", "epoch")), default=0)


def curves_html(events: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The loss chart and the accuracy chart (inline SVG), or a line saying they come after the first epoch."""
    rows, epochs = curve_rows(events), max_epochs(events)
    if not rows:
        empty = '<div class="tw-chart tw-empty">The curves appear after the first epoch.</div>'
        return empty, empty
    return _chart(rows, epochs, "Loss", tuple(LOSS_SERIES.items())), _chart(
        rows, epochs, "Validation accuracy / F1", tuple(ACC_SERIES.items())
    )


@lru_cache(maxsize=64)
def _chart(rows: tuple, epochs: int, title: str, series: tuple[tuple[str, str], ...]) -> str:
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    fig = Figure(figsize=(5.2, 2.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    values = []
    for key, label in series:
        points = [(ep, dict(m)[key]) for ep, m in rows if key in dict(m)]
        if points:
            xs, ys = zip(*points)
            (line,) = ax.plot(xs, ys, marker="o", markersize=5, linewidth=2, label=label)
            line.set_gid(f"curve-{key}")
            values += ys
    last = max(epochs, rows[-1][0])
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    if title.startswith("Validation"):
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    else:
        ax.set_ylim(0, max(values) * 1.15 if values else 1)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    buf = io.StringIO()
    # Text stays text (readable, selectable); the salt keeps the two charts' marker and clip ids apart in one page.
    with _SVG_LOCK, rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = svg.replace("<svg ", '<svg preserveAspectRatio="xMidYMid meet" ', 1)
    return f'<div class="tw-chart" data-title="{html.escape(title)}">{_responsive(svg)}</div>'


def _responsive(svg: str) -> str:
    """Let the SVG scale with its column (matplotlib writes a fixed size in points)."""
    head, rest = svg.split(">", 1)
    for attr in ("width", "height"):
        start = head.find(f' {attr}="')
        if start >= 0:
            end = head.index('"', start + len(attr) + 3)
            head = head[:start] + head[end + 1 :]
    return head + ' width="100%">' + rest


# ---------------------------------------------------------------------------------------------------- thumbnails
def thumbnail_url(img: Image.Image, px: int = THUMB_PX) -> str:
    """A PNG data URL of ``img`` fitted in ``px`` x ``px`` (aspect kept)."""
    img = img.copy()
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumb_grid(items: Sequence[tuple[Image.Image, str]], empty: str, elem_class: str = "tw-grid") -> str:
    """Thumbnails of one size, each with its caption always visible."""
    if not items:
        return f'<div class="{elem_class} tw-empty">{html.escape(empty)}</div>'
    cells = "".join(
        f'<figure><img src="{thumbnail_url(img)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for img, caption in items
    )
    return f'<div class="{elem_class}">{cells}</div>'
