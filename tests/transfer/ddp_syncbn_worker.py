"""One SGD step of a tiny conv-BN net under Lightning DDP: two CPU processes, gloo.

Run as ``python ddp_syncbn_worker.py OUTDIR [--plain]`` (``--plain``: without :class:`BatchNormSync`, the control).
Lightning's ddp launcher re-executes this script for rank 1. Rank ``r`` trains on samples ``[r * B, (r + 1) * B)`` of
:func:`make_data` (no DistributedSampler: ``use_distributed_sampler=False``); every rank writes ``OUTDIR/rank{r}.pt``
(the sample indices it saw, the BatchNorm class during the step) and rank 0 also ``OUTDIR/state.pt`` (the net's
state dict after the step, and its BatchNorm class after ``fit``, i.e. after the plugin's revert).
The test imports :func:`make_net`, :func:`make_data`, ``B`` and ``LR`` to compute the same step in one process.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

B = 4  # samples per rank; the global batch is 2 * B
LR = 0.5


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """2 * B fixed images and labels; the second half is shifted and scaled, so per-rank statistics differ."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * B, 3, 6, 6, generator=g)
    x[B:] = 2 * x[B:] + 1
    return x, torch.randint(0, 3, (2 * B,), generator=g)


def make_net() -> nn.Sequential:
    """Conv, BatchNorm, ReLU, pool, linear, with a fixed init."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.seen: list[int] = []
        self.bn_class = ""

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        self.seen += idx.tolist()
        self.bn_class = type(self.net[1]).__name__
        # Mean over this rank's B samples; DDP averages gradients over the 2 ranks: the mean over the 2 * B.
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self) -> DataLoader:
        x, y = make_data()
        own = slice(self.global_rank * B, (self.global_rank + 1) * B)
        return DataLoader(TensorDataset(x[own], y[own], torch.arange(2 * B)[own]), batch_size=B)


def main(outdir: Path, sync: bool) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from transfer.distributed import BatchNormSync

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    model = TinyModule()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        plugins=[BatchNormSync()] if sync else None,
        max_steps=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=outdir,
    )
    trainer.fit(model)
    rank = trainer.global_rank
    torch.save({"seen": model.seen, "bn_class": model.bn_class}, outdir / f"rank{rank}.pt")
    if rank == 0:
        state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
        torch.save({"state": state, "bn_class_after": type(model.net[1]).__name__}, outdir / "state.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sync="--plain" not in sys.argv[2:])
