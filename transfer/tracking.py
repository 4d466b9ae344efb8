"""MLflow tracking of a fit: the URI check, params, per-epoch metrics, reports and the model.

The default tracking URI is ``sqlite:///mlflow.db`` (a file in the working directory); any MLflow URI works
(``http://host:5000`` for a team server). A server that cannot be reached is one :class:`UserError` before any
training starts. Per epoch the run gets ``train_loss``, ``val_loss``, ``val_acc``, ``val_f1`` (plus ``val_acc_top5``
and ``lr``, and ``val_acc_stage{i}`` for a stage probe), at step = epoch. At the end it gets the resolved recipe
(``recipe.yaml``), a confusion-matrix plot (``confusion_matrix.png``), a per-class report
(``per_class_report.json`` and ``.csv``) and the model, logged by :func:`transfer.serving.log_classifier`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from transfer.errors import UserError

_log = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "val_f1", "val_acc_top5", "lr")


def resolve_uri(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute against the working directory; other URIs unchanged.

    MLflow caches its stores by URI string, so a relative sqlite URI used from two working directories in one
    process would silently reach the first directory's database.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return "sqlite:///" + str(Path(path).expanduser().resolve())
    return uri


def check_uri(uri: str) -> str:
    """Make sure MLflow can use ``uri`` before anything trains; returns it.

    Raises:
        UserError: a local store whose folder does not exist or cannot be written, or a server that does not answer.
    """
    if uri.startswith("sqlite:"):
        # sqlite:///relative.db and sqlite:////absolute/path.db; sqlite:// alone is in memory.
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            folder = Path(path).expanduser().resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise UserError(
                    f"tracking.uri {uri!r}: folder {folder} does not exist or is not writable; create it or set "
                    "tracking.uri"
                )
        return uri
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # the user's own tracking server
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise UserError(
                    f"MLflow server {uri} answers HTTP {exc.code}; check the server or set tracking.uri"
                ) from exc
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"MLflow server {uri} is unreachable ({reason}); start it (mlflow server) or set tracking.uri, e.g. "
                "sqlite:///mlflow.db"
            ) from exc
        return uri
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser().resolve()
        parent = folder if folder.exists() else folder.parent
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise UserError(f"tracking.uri {uri!r}: {parent} does not exist or is not writable; set tracking.uri")
    return uri


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's and alembic's info chatter (database migrations on first use)."""
    names = ("mlflow", "alembic", "alembic.runtime.migration")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def start_run(uri: str, experiment: str, run_id: str | None = None, run_name: str | None = None) -> Any:
    """Point MLflow at ``uri`` and start (or, with ``run_id``, reopen) a run in ``experiment``."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        with quiet_mlflow():
            if run_id is None:
                mlflow.set_experiment(experiment)
            return mlflow.start_run(run_id=run_id, run_name=run_name)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot use MLflow at {uri}: {msg}; check tracking.uri") from exc


def log_params(params: dict[str, Any]) -> None:
    """Log params to the active run, skipping keys it has already (a resumed run keeps its first values)."""
    import mlflow

    run = mlflow.active_run()
    assert run is not None
    have = mlflow.get_run(run.info.run_id).data.params
    fresh = {}
    for k, v in params.items():
        text = v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v)
        if len(text) > 6000:
            text = text[:5997] + "..."
        if k not in have:
            fresh[k] = text
        elif have[k] != text:
            _log.debug("param %s stays %r (now %r)", k, have[k], text)
    if fresh:
        mlflow.log_params(fresh)


class EpochMetrics(L.Callback):
    """Logs the epoch's metrics to an MLflow run at step = epoch (names exactly as in :data:`EPOCH_METRICS`)."""

    def __init__(self, run_id: str, extra_prefixes: Sequence[str] = ("val_acc_stage",)) -> None:
        self.run_id = run_id
        self.extra_prefixes = tuple(extra_prefixes)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run restarts from a checkpoint written at the end of an epoch whose end hooks may run again:
        # epochs MLflow has already are not logged twice.
        self._done: set[int] = set()
        if trainer.is_global_zero:
            from mlflow.tracking import MlflowClient

            with contextlib.suppress(Exception):
                self._done = {m.step for m in MlflowClient().get_metric_history(self.run_id, "train_loss")}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.current_epoch in getattr(self, "_done", set()):
            return
        self._done = {*getattr(self, "_done", set()), trainer.current_epoch}
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        ts = int(time.time() * 1000)
        metrics = []
        for k, v in trainer.callback_metrics.items():
            if k in EPOCH_METRICS or k.startswith(self.extra_prefixes):
                metrics.append(Metric(k, float(v), ts, trainer.current_epoch))
        if metrics:
            MlflowClient().log_batch(self.run_id, metrics=metrics)


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


def log_reports(
    logits: np.ndarray, labels: np.ndarray, classes: list[str], extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """Log the confusion matrix PNG and the per-class report (JSON and CSV) of the final model; returns metrics."""
    import mlflow
    import torch
    from sklearn.metrics import f1_score
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    pred = logits.argmax(1)
    cm = multiclass_confusion_matrix(torch.as_tensor(pred), torch.as_tensor(labels), num_classes=len(classes)).numpy()
    report = classification_report(labels, pred, classes)
    metrics = {"val_acc": float((pred == labels).mean()), "val_f1": float(f1_score(labels, pred, average="macro"))}
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
            mlflow.log_artifact(str(d / f))
    return metrics


def log_text(text: str, name: str) -> None:
    """Log a text artifact (e.g. the resolved ``recipe.yaml``)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        p = Path(tmp) / name
        p.write_text(text)
        mlflow.log_artifact(str(p))


def log_model(
    model: Any,
    *,
    backbone: str,
    class_names: list[str],
    data_config: dict[str, Any],
    tracking: Any,
    metrics: dict[str, float],
) -> Any:
    """Log (and register, when ``tracking.register_as`` is set) the classifier via :mod:`transfer.serving`."""
    from transfer.serving import log_classifier

    return log_classifier(
        model,
        backbone=backbone,
        class_names=class_names,
        data_config=data_config,
        registered_model_name=tracking.register_as,
        alias=tracking.alias,
        promote=tracking.promote,
        metrics=metrics,
    )
