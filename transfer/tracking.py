"""MLflow tracking of a fit: the URI check, params, per-epoch metrics, reports and the model.

The default tracking URI is ``sqlite:///mlflow.db`` (a file in the working directory); any MLflow URI works
(``http://host:5000`` for a team server). A server that cannot be reached is one :class:`UserError` before any
training starts. Per epoch the run gets ``train_loss``, ``val_loss``, ``val_acc``, ``val_f1`` (plus ``val_acc_top5``
and ``lr``, and ``val_acc_stage{i}`` for a stage probe), at step = epoch. At the end it gets the resolved recipe
(``recipe.yaml``), a confusion-matrix plot (``confusion_matrix.png``), a per-class report
(``per_class_report.json`` and ``.csv``) and the model, logged by :func:`transfer.serving.log_classifier`.

A server that goes away in the middle of a run does not stop the training: the epoch metrics wait in
``pending_metrics.jsonl`` in the run directory, the checkpoints are written as usual, and ``transfer fit --resume``
sends what is pending, logs the model and registers it once the server answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
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
        # /health answers any Host, the API only the server's --allowed-hosts: ask the API too, before training.
        api = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(api, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                host = urllib.parse.urlsplit(uri).netloc
                raise UserError(
                    f"MLflow server {uri} refuses this client (HTTP 403): start it with --allowed-hosts including "
                    f"{host}, or reach it by an address it allows"
                ) from exc
            if exc.code not in (401,):  # 401: a server with auth; MLflow's client sends the credentials
                raise UserError(f"MLflow server {uri} answers HTTP {exc.code} to API calls; check the server") from exc
        except (OSError, ValueError) as exc:
            raise UserError(f"MLflow server {uri} does not answer API calls ({exc}); check the server") from exc
        return uri
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser().resolve()
        parent = folder if folder.exists() else folder.parent
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise UserError(f"tracking.uri {uri!r}: {parent} does not exist or is not writable; set tracking.uri")
    return uri


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (as opposed to a local store)."""
    return uri.startswith(("http://", "https://"))


def server_answers(uri: str, timeout: float = 5.0) -> bool:
    """True when ``uri`` is a local store, or a server whose ``/health`` answers within ``timeout`` seconds."""
    if not is_remote(uri):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status < 400
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def no_retries() -> Iterator[None]:
    """MLflow's HTTP client without its retries (about four minutes of backoff per call by default), for calls to
    a server already known to be away."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def end_run(uri: str, status: str) -> None:
    """End the active run; when the server is away, just forget it locally (a resume reopens it)."""
    import mlflow

    # MLflow pops the run before it calls the server, so a server that is away only costs the status update.
    away = contextlib.nullcontext() if server_answers(uri) else no_retries()
    with quiet_mlflow(), away, contextlib.suppress(Exception):
        mlflow.end_run(status=status)


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

    # The registry lives beside the runs. MLflow also exports both URIs as environment variables: the process's
    # own stay as the user set them, so a later fit of a recipe without tracking.uri does not inherit this one.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
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
    """Logs the epoch's metrics to an MLflow run at step = epoch (names exactly as in :data:`EPOCH_METRICS`).

    When the tracking server does not answer, the metrics are appended to ``pending`` (JSON lines) instead and
    training goes on; they are sent, in order, as soon as the server answers again (a later epoch, or a resume).
    """

    def __init__(
        self,
        run_id: str,
        extra_prefixes: Sequence[str] = ("val_acc_stage",),
        *,
        tracking_uri: str = "",
        pending: str | Path | None = None,
    ) -> None:
        self.run_id = run_id
        self.extra_prefixes = tuple(extra_prefixes)
        self.tracking_uri = tracking_uri
        self.pending = Path(pending) if pending else None
        self._warned = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run restarts from a checkpoint written at the end of an epoch whose end hooks may run again:
        # epochs MLflow has already are not logged twice.
        self._done: set[int] = set()
        if trainer.is_global_zero:
            from mlflow.tracking import MlflowClient

            self.flush()
            with contextlib.suppress(Exception):
                self._done = {m.step for m in MlflowClient().get_metric_history(self.run_id, "train_loss")}
            self._done |= self._pending_steps()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.current_epoch in getattr(self, "_done", set()):
            return
        self._done = {*getattr(self, "_done", set()), trainer.current_epoch}
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = []
        for k, v in trainer.callback_metrics.items():
            if k in EPOCH_METRICS or k.startswith(self.extra_prefixes):
                metrics.append(Metric(k, float(v), ts, trainer.current_epoch))
        if metrics:
            self._send(metrics, trainer.current_epoch)

    def _send(self, metrics: list[Any], epoch: int) -> None:
        from mlflow.tracking import MlflowClient

        reason = "no answer"
        if server_answers(self.tracking_uri):
            try:
                self._send_pending()
                MlflowClient().log_batch(self.run_id, metrics=metrics)
                return
            except Exception as exc:  # the server went away: keep the metrics, keep training
                if self.pending is None:
                    raise
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.pending.parent.mkdir(parents=True, exist_ok=True)
        with self.pending.open("a") as f:
            for m in metrics:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        if not self._warned:
            _log.warning(
                "MLflow server %s does not answer (%s) at epoch %d: training goes on, metrics wait in %s and are "
                "sent when it is back (or by `transfer fit --resume`)",
                self.tracking_uri,
                reason,
                epoch,
                self.pending,
            )
            self._warned = True

    def _pending_steps(self) -> set[int]:
        if self.pending is None or not self.pending.is_file():
            return set()
        return {int(json.loads(line)["step"]) for line in self.pending.read_text().splitlines() if line.strip()}

    def flush(self) -> bool:
        """Send the pending metrics, if any (True when nothing is left pending)."""
        if self.pending is None or not self.pending.is_file():
            return True
        if not server_answers(self.tracking_uri):
            return False
        self._send_pending()
        return True

    def _send_pending(self) -> None:
        if self.pending is None or not self.pending.is_file():
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        rows = [json.loads(line) for line in self.pending.read_text().splitlines() if line.strip()]
        metrics = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
        for i in range(0, len(metrics), 500):  # MLflow takes at most 1000 metrics per batch
            MlflowClient().log_batch(self.run_id, metrics=metrics[i : i + 500])
        self.pending.unlink()
        _log.info("sent %d pending metric values to %s", len(metrics), self.tracking_uri)


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
