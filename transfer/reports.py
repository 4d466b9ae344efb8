"""What a fit reports about its final model: metrics with intervals, a confusion matrix and per-class numbers.

Everything is computed from the final model's logits on the validation split and logged to the run by
:func:`log_reports`: ``confusion_matrix.png``, ``per_class_report.json`` and ``per_class_report.csv``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Per-class precision, recall, F1 and support."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    ]


def confusion_png(cm: np.ndarray, classes: list[str], path: Path, title: str = "confusion matrix (validation)") -> Path:
    """Plot a confusion matrix (rows: true class, columns: predicted) to a PNG with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    k = len(classes)
    side = min(16.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side, side * 0.9), dpi=100)
    ax = fig.subplots()
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), labels=classes, rotation=90 if k > 8 and max(map(len, classes)) > 3 else 0, fontsize=8)
        ax.set_yticks(range(k), labels=classes, fontsize=8)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% with the default ``z``): honest for small ``n``."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def log_reports(
    store: Any, run_id: str, logits: np.ndarray, labels: np.ndarray, classes: list[str], extra: dict | None = None
) -> dict[str, float]:
    """Log the confusion matrix PNG and the per-class report (JSON and CSV) of the final model to ``run_id`` of
    ``store`` (a :class:`~transfer.tracking.TrackingStore`); returns the metrics, ``val_acc`` with its 95% Wilson
    interval (``val_acc_low``, ``val_acc_high``)."""
    import torch
    from sklearn.metrics import f1_score
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    pred = logits.argmax(1)
    cm = multiclass_confusion_matrix(torch.as_tensor(pred), torch.as_tensor(labels), num_classes=len(classes)).numpy()
    report = classification_report(labels, pred, classes)
    correct = int((pred == labels).sum())
    low, high = wilson_interval(correct, len(labels))
    metrics = {
        "val_acc": correct / max(1, len(labels)),
        "val_acc_low": low,
        "val_acc_high": high,
        "val_f1": float(f1_score(labels, pred, average="macro")),
    }
    if len(classes) > 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        metrics["val_acc_top5"] = float((top5 == labels[:, None]).any(1).mean())
    with tempfile.TemporaryDirectory(prefix="transfer-report-") as tmp:
        d = Path(tmp)
        confusion_png(cm, classes, d / "confusion_matrix.png")
        (d / "per_class_report.json").write_text(
            json.dumps(
                {"classes": report, "metrics": metrics, "confusion_matrix": cm.tolist(), **(extra or {})}, indent=1
            )
        )
        lines = ["class,precision,recall,f1,support"]
        for row in report:
            name = str(row["class"]).replace('"', '""')
            lines.append(f'"{name}",{row["precision"]:.4f},{row["recall"]:.4f},{row["f1"]:.4f},{row["support"]}')
        (d / "per_class_report.csv").write_text("\n".join(lines) + "\n")
        for f in ("confusion_matrix.png", "per_class_report.json", "per_class_report.csv"):
            store.client.log_artifact(run_id, str(d / f))
    return metrics
