"""Where runs and models go: a :class:`TrackingStore` per MLflow URI, and the per-epoch metrics callback.

The store resolves its URI once (the argument, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
working directory; a relative sqlite path is made absolute, since MLflow caches stores by URI string), checks it
before anything trains, and holds an ``MlflowClient`` for both tracking and registry. It is the only code that
touches MLflow's process-wide state: :meth:`TrackingStore.activated` points MLflow's fluent API at the store for
a block and then restores exactly what it found (:func:`transfer.process_state.restored`: the tracking, registry
and experiment globals and the environment, where MLflow exports them). Nothing else in the project calls
``mlflow.set_tracking_uri``.

A server that goes away in the middle of a run does not stop the training: :class:`EpochMetrics` appends the epoch
metrics to ``pending_metrics.jsonl`` in the run directory and ``transfer fit --resume`` sends them once the server
answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L

from transfer.errors import UserError
from transfer.process_state import restored

_log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "val_f1", "val_acc_top5", "lr")
# An unreachable server should fail in seconds, not after MLflow's retries with backoff (minutes per call).
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# MLflow's "Downloading artifacts" bars (it re-reads a model to check its input example) are noise on a terminal.
_QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_NO_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# MLflow's fluent state is process-wide: one activation at a time (a thread of the web page waits for another's).
_ACTIVE = threading.RLock()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (MLflow's can be pages long)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_URI`; a relative sqlite path made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).expanduser().resolve())
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


class TrackingStore:
    """An MLflow tracking store and its model registry (the same URI).

    Args:
        uri: any MLflow tracking URI; None: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
    """

    def __init__(self, uri: str | None = None) -> None:
        self.uri = resolve_uri(uri)

    def __repr__(self) -> str:
        return f"TrackingStore({self.uri!r})"

    @classmethod
    def for_recipe(cls, recipe: Any) -> TrackingStore:
        """The store of a recipe: ``tracking.uri`` when the recipe sets it, else as :class:`TrackingStore`."""
        explicit = "uri" in recipe.tracking.model_fields_set
        return cls(recipe.tracking.uri if explicit else None)

    @property
    def is_remote(self) -> bool:
        """Whether the store is a tracking server (as opposed to a local database or folder)."""
        return self.uri.startswith(("http://", "https://"))

    @cached_property
    def client(self) -> Any:
        """An ``MlflowClient`` bound to this store's tracking and registry URIs (no process state involved)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def answers(self, timeout: float = 5.0) -> bool:
        """True for a local store, or a server whose ``/health`` answers within ``timeout`` seconds."""
        if not self.is_remote:
            return True
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=timeout) as resp:
                return resp.status < 400
        except (OSError, ValueError):
            return False

    def check(self, *, must_exist: bool = False) -> TrackingStore:
        """Make sure MLflow can use the store before anything trains (or, ``must_exist``, that it holds runs).

        Raises:
            UserError: a local store whose folder is missing or read-only (or, with ``must_exist``, absent), or a
                server that does not answer or refuses this client.
        """
        if self.is_remote:
            self._check_server()
        elif self.uri.startswith("sqlite:"):
            path = self.uri[len("sqlite:///") :] if self.uri.startswith("sqlite:///") else ""
            if path and path != ":memory:":
                db = Path(path)
                if must_exist and not db.is_file():
                    raise UserError(
                        f"no MLflow tracking database at {db}: pass --tracking-uri (or set MLFLOW_TRACKING_URI) to "
                        "the one your runs were logged to"
                    )
                if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
                    raise UserError(
                        f"tracking.uri {self.uri!r}: folder {db.parent} does not exist or is not writable; create it "
                        "or set tracking.uri"
                    )
        elif self.uri.startswith("file:") or "://" not in self.uri:
            folder = Path(self.uri.removeprefix("file://").removeprefix("file:")).expanduser().resolve()
            parent = folder if folder.exists() else folder.parent
            if not parent.exists() or not os.access(parent, os.W_OK):
                raise UserError(f"tracking.uri {self.uri!r}: {parent} does not exist or is not writable")
        return self

    def _check_server(self) -> None:
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise UserError(f"MLflow server {self.uri} answers HTTP {exc.code}; check the server") from exc
        except (OSError, ValueError) as exc:
            raise UserError(
                f"MLflow server {self.uri} is unreachable ({getattr(exc, 'reason', exc)}); start it (mlflow server) "
                "or set tracking.uri, e.g. sqlite:///mlflow.db"
            ) from exc
        # /health answers any Host, the API only the server's --allowed-hosts: ask the API too, before training.
        try:
            with urllib.request.urlopen(
                self.uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10
            ):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                host = urllib.parse.urlsplit(self.uri).netloc
                raise UserError(
                    f"MLflow server {self.uri} refuses this client (HTTP 403): start it with --allowed-hosts "
                    f"including {host}, or reach it by an address it allows"
                ) from exc
            if exc.code != 401:  # 401: a server with auth; MLflow's client sends the credentials
                raise UserError(f"MLflow server {self.uri} answers HTTP {exc.code} to API calls") from exc
        except (OSError, ValueError) as exc:
            raise UserError(f"MLflow server {self.uri} does not answer API calls ({exc}); check the server") from exc

    @contextlib.contextmanager
    def activated(self, *, retries: bool = True) -> Iterator[TrackingStore]:
        """Point MLflow's fluent API (runs, model logging, registry, ``models:/`` URIs) at this store for the
        block, then restore exactly the process state found (URIs, active experiment, ``MLFLOW_*`` variables).

        Args:
            retries: False for calls to a server known to be away (no retries, a 5 s timeout); True keeps a fast
                failure (one retry, 15 s) unless the environment already says otherwise.
        """
        import mlflow

        with _ACTIVE, restored(), quiet_mlflow():
            for k, v in {**_QUIET_ENV, **_FAST_FAIL_ENV}.items() if retries else _NO_RETRY_ENV.items():
                if retries:
                    os.environ.setdefault(k, v)
                else:
                    os.environ[k] = v
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            yield self

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing.

        Raises:
            UserError: the store cannot be used.
        """
        try:
            with quiet_mlflow():
                found = self.client.get_experiment_by_name(name)
                return found.experiment_id if found else self.client.create_experiment(name)
        except Exception as exc:
            raise UserError(f"cannot use MLflow at {self.uri}: {one_line(exc)}; check tracking.uri") from exc

    def start_run(self, experiment: str, run_id: str | None = None, run_name: str | None = None) -> Any:
        """Start (or, with ``run_id``, reopen) the active run; call inside :meth:`activated`."""
        import mlflow

        try:
            exp = None if run_id else self.experiment_id(experiment)
            return mlflow.start_run(run_id=run_id, experiment_id=exp, run_name=run_name)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot use MLflow at {self.uri}: {one_line(exc)}; check tracking.uri") from exc

    def end_run(self, status: str) -> None:
        """End the active run; when the server is away only forget it locally (a resume reopens it)."""
        import mlflow

        # MLflow pops the run before it calls the server, so a server that is away only costs the status update.
        quick = contextlib.nullcontext() if self.answers() else self.activated(retries=False)
        with quick, contextlib.suppress(Exception):
            mlflow.end_run(status=status)

    def mark_run(self, run_id: str, status: str) -> bool:
        """Set a run's final status (a run whose process died); True when the store took it."""
        try:
            run = self.client.get_run(run_id)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run_id, status)
            return True
        except Exception as exc:  # the store is away: the caller keeps the state and says so
            _log.debug("cannot mark run %s %s: %s", run_id, status, one_line(exc))
            return False

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params, skipping keys the run has already (a resumed run keeps its first values)."""
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        fresh = []
        for k, v in params.items():
            text = v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v)
            text = text if len(text) <= 6000 else text[:5997] + "..."
            if k not in have:
                fresh.append(Param(k, text))
        for i in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=fresh[i : i + 100])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        """Log a text artifact (e.g. the resolved ``recipe.yaml``)."""
        self.client.log_text(run_id, text, name)


class EpochMetrics(L.Callback):
    """Logs the epoch's metrics to an MLflow run at step = epoch (names exactly as in :data:`EPOCH_METRICS`).

    When the tracking server does not answer, the metrics are appended to ``pending`` (JSON lines) instead and
    training goes on; they are sent, in order, as soon as the server answers again (a later epoch, or a resume).
    """

    def __init__(
        self,
        store: TrackingStore,
        run_id: str,
        *,
        pending: str | Path | None = None,
        extra_prefixes: Sequence[str] = ("val_acc_stage",),
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.extra_prefixes = tuple(extra_prefixes)
        self.pending = Path(pending) if pending else None
        self._warned = False
        self._done: set[int] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run restarts from a checkpoint written at the end of an epoch whose end hooks may run again:
        # epochs MLflow has already are not logged twice.
        if trainer.is_global_zero:
            self.flush()
            with contextlib.suppress(Exception):
                self._done = {m.step for m in self.store.client.get_metric_history(self.run_id, "train_loss")}
            self._done |= self._pending_steps()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.current_epoch in self._done:
            return
        self._done.add(trainer.current_epoch)
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), ts, trainer.current_epoch)
            for k, v in trainer.callback_metrics.items()
            if k in EPOCH_METRICS or k.startswith(self.extra_prefixes)
        ]
        if metrics:
            self._send(metrics, trainer.current_epoch)

    def _send(self, metrics: list[Any], epoch: int) -> None:
        reason = "no answer"
        if self.store.answers():
            try:
                self._send_pending()
                self.store.client.log_batch(self.run_id, metrics=metrics)
                return
            except Exception as exc:  # the server went away: keep the metrics, keep training
                if self.pending is None:
                    raise
                reason = one_line(exc)
        assert self.pending is not None
        self.pending.parent.mkdir(parents=True, exist_ok=True)
        with self.pending.open("a") as f:
            for m in metrics:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        if not self._warned:
            _log.warning(
                "MLflow server %s does not answer (%s) at epoch %d: training goes on, metrics wait in %s and are "
                "sent when it is back (or by `transfer fit --resume`)",
                self.store.uri,
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
        if not self.store.answers():
            return False
        self._send_pending()
        return True

    def _send_pending(self) -> None:
        if self.pending is None or not self.pending.is_file():
            return
        from mlflow.entities import Metric

        rows = [json.loads(line) for line in self.pending.read_text().splitlines() if line.strip()]
        metrics = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
        for i in range(0, len(metrics), 500):  # MLflow takes at most 1000 metrics per batch
            self.store.client.log_batch(self.run_id, metrics=metrics[i : i + 500])
        self.pending.unlink()
        _log.info("sent %d pending metric values to %s", len(metrics), self.store.uri)
