"""Training callbacks a recipe switches on: an exponential moving average of the weights, progressive resizing.

- :class:`EMA` (``optim.ema: DECAY``): Lightning's ``WeightAveraging`` with torch's EMA update after every
  optimizer step; validation and the final (logged) model use the averaged weights.
- :class:`ProgressiveResizing` (``data.progressive: true``): the training images start at half the recipe's size and
  grow linearly to it by the middle of the run (fastai's progressive resizing): the early epochs are cheap and the
  network sees more scales; validation always runs at the full size.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

_log = logging.getLogger(__name__)

PROGRESSIVE_START = 0.5  # the first epoch's image side, as a fraction of the recipe's
PROGRESSIVE_FULL_AT = 0.5  # the fraction of the run after which training uses the full size
SIZE_MULTIPLE = 8  # image sides stay multiples of this (strided convolutions)


class EMA(WeightAveraging):
    """An exponential moving average of the weights (and BatchNorm buffers), updated every step.

    Args:
        decay: the average's decay per step (e.g. 0.998).
    """

    def __init__(self, decay: float) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay


def progressive_size(epoch: int, max_epochs: int, full: int) -> int:
    """The training image side at ``epoch``: from half of ``full`` up to ``full`` by the middle of the run."""
    grow_epochs = max(1, round(max_epochs * PROGRESSIVE_FULL_AT))
    if epoch >= grow_epochs:
        return full
    start = PROGRESSIVE_START * full
    side = start + (full - start) * epoch / grow_epochs
    return max(SIZE_MULTIPLE, int(round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE))


class ProgressiveResizing(L.Callback):
    """Sets the training transform's output size at the start of each epoch (see :func:`progressive_size`).

    The trainer reloads its training dataloader every epoch (``reload_dataloaders_every_n_epochs=1``), so worker
    processes see the new size.

    Attributes:
        sizes: the side used at each epoch so far.
    """

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = trainer.datamodule
        full = int(dm.data_config["input_size"][-1])
        side = progressive_size(trainer.current_epoch, trainer.max_epochs or 1, full)
        dm.train_set.transform.set_size(side)
        self.sizes.append(side)
        _log.debug("epoch %d: training images at %d px", trainer.current_epoch, side)
