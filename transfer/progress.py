"""Machine-readable progress of a fit, for front ends that run ``transfer fit`` in another process.

When the environment variable ``TRANSFER_PROGRESS_FILE`` names a file, :class:`ProgressFile` appends one JSON
object per line to it: ``{"event": "start", ...}``, ``{"event": "step", ...}`` (at most every half second),
``{"event": "epoch", "epoch": 1, "train_loss": ..., "val_loss": ..., "val_acc": ..., "val_f1": ...}`` and
``{"event": "end", "status": "finished" | "interrupted" | "failed", ...}``. Readers tail the file
(:func:`read_events`); a partially written last line is ignored until it is complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

ENV_VAR = "TRANSFER_PROGRESS_FILE"
_STEP_INTERVAL_S = 0.5


def write_event(path: str | Path | None, event: str, **fields: Any) -> None:
    """Append one event line (a no-op without a path)."""
    if not path:
        return
    line = json.dumps({"event": event, "time": time.time(), **fields}, default=float)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete event lines written so far."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            events.append(json.loads(line))
    return events


class ProgressFile(L.Callback):
    """Writes start/step/epoch/end events to ``path`` (default: ``$TRANSFER_PROGRESS_FILE``) from rank zero."""

    def __init__(self, path: str | Path | None = None, **start_fields: Any) -> None:
        self.path = path or os.environ.get(ENV_VAR)
        self.start_fields = start_fields
        self._last_step = 0.0

    def _write(self, trainer: L.Trainer, event: str, **fields: Any) -> None:
        if trainer.is_global_zero:
            write_event(self.path, event, **fields)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(
            trainer,
            "start",
            max_epochs=trainer.max_epochs,
            steps_per_epoch=trainer.num_training_batches,
            epoch=trainer.current_epoch,
            **self.start_fields,
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_step < _STEP_INTERVAL_S:
            return
        self._last_step = now
        self._write(
            trainer,
            "step",
            epoch=trainer.current_epoch,
            step=trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            steps_per_epoch=trainer.num_training_batches,
            max_epochs=trainer.max_epochs,
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k in ("train_loss", "val_loss", "val_acc", "val_f1")
        }
        self._write(trainer, "epoch", epoch=trainer.current_epoch + 1, max_epochs=trainer.max_epochs, **metrics)
