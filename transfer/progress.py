"""Machine-readable progress of a fit: ``events.jsonl`` in its run directory, one JSON object per line.

Front ends (the web page) read a fit's progress and its result from here and from ``run.json``, never from its
output. The events, each with ``event`` and ``time``:

- ``{"event": "phase", "phase": "data" | "weights" | "auto" | "features" | "train" | "evaluate" | "log_model" |
  "register", "text": "Computing features: 120/600 images", "done": 120, "total": 600}``: what the fit is doing,
  in words a person reads (:data:`PHASES`); the feature pass reports its count at least every second;
- ``{"event": "start", "max_epochs", "steps_per_epoch", "epoch", "strategy"}``: training starts;
- ``{"event": "step", "epoch", "step", "steps_per_epoch", "max_epochs"}``: at most every half second;
- ``{"event": "epoch", "epoch": 1, "max_epochs", "train_loss", "val_loss", "val_acc", "val_f1"}``: after each epoch,
  with that epoch's metrics (the values MLflow gets at step ``epoch - 1``);
- ``{"event": "end", "status": "finished" | "interrupted" | "failed" | "trained", "error": ...}``.

Readers tail the file (:func:`read_events`); a partially written last line is ignored until it is complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

PHASES: dict[str, str] = {
    "data": "Reading the data",
    "weights": "Loading the backbone and its weights",
    "auto": "Measuring your data to choose a strategy",
    "features": "Computing features",
    "train": "Training",
    "evaluate": "Evaluating the final model",
    "log_model": "Saving the model to MLflow",
    "register": "Registering the model",
}
_STEP_INTERVAL_S = 0.5
EPOCH_KEYS = ("train_loss", "val_loss", "val_acc", "val_f1")


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete event lines written so far."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


class Events:
    """Appends events to a file; silent without one (the other ranks of a DDP fit).

    Args:
        path: the events file, or None.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None

    def write(self, event: str, **fields: Any) -> None:
        """Append one event line."""
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=float)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def phase(self, name: str, text: str | None = None, **fields: Any) -> None:
        """Say which phase the fit is in (:data:`PHASES`), in words."""
        self.write("phase", phase=name, text=text or PHASES[name], **fields)

    def counter(self, name: str, noun: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that reports a phase's count: "Computing features: 120/600 images"."""

        def report(done: int, total: int) -> None:
            self.phase(name, f"{PHASES[name]}: {done}/{total} {noun}", done=done, total=total)

        return report


class ProgressEvents(L.Callback):
    """Writes start/step/epoch events from rank zero.

    Args:
        events: where to write.
        start_fields: extra fields of the start event (the strategy).
    """

    def __init__(self, events: Events, **start_fields: Any) -> None:
        self.events = events
        self.start_fields = start_fields
        self._last_step = 0.0
        self.first_step: float | None = None  # time.monotonic() of the first training step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.events.phase("train")
            self.events.write(
                "start",
                max_epochs=trainer.max_epochs,
                steps_per_epoch=trainer.num_training_batches,
                epoch=trainer.current_epoch,
                **self.start_fields,
            )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.first_step is None:
            self.first_step = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last_step < _STEP_INTERVAL_S:
            return
        self._last_step = now
        self.events.write(
            "step",
            epoch=trainer.current_epoch,
            step=trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            steps_per_epoch=trainer.num_training_batches,
            max_epochs=trainer.max_epochs,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, after validation and the module's own end-of-validation hook: this epoch's metrics, as MLflow's.
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in EPOCH_KEYS}
        self.events.write("epoch", epoch=trainer.current_epoch + 1, max_epochs=trainer.max_epochs, **metrics)
