"""Our Lightning training loop vs a plain PyTorch loop: same model, data, optimizer, schedule and validation.

Both fine-tune MobileNetV2 (``full`` strategy: layer-wise lr decay param groups, AdamW, warmup + cosine per step)
on the same in-memory batches and validate every epoch. The Lightning side is :class:`transfer.module.
ClassifierModule` under a Trainer configured as ``transfer fit`` configures it (checkpoints included, progress bar
off so the output stays readable). Runs alternate and the fastest of each is kept, the machine being shared; the
CPU time of the process (all threads) is reported beside the wall time, as it is less sensitive to other
processes on a shared machine. Goal: Lightning <= 5% slower.

    python bench/loop_overhead.py [--images 960] [--size 48] [--epochs 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

import zoo
from transfer.module import ClassifierModule, build_optimizer, effective_lr, warmup_cosine
from transfer.recipe import OptimConfig, StrategyConfig
from transfer.strategies import make_strategy

OPTIM = OptimConfig(lr=1e-3, warmup_epochs=1)


def _data(n: int, size: int) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    split = n * 4 // 5
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=64)
    return train, val


def plain(model: torch.nn.Module, train: DataLoader, val: DataLoader, epochs: int) -> tuple[float, float]:
    strategy = make_strategy("full", StrategyConfig())
    strategy.setup(model)
    lr = effective_lr(OPTIM.lr, 32, 1, True)
    opt = build_optimizer(strategy.param_groups(lr, OPTIM.weight_decay), "adamw", lr, OPTIM.weight_decay, 0.9)
    steps = len(train) * epochs
    sched = LambdaLR(opt, warmup_cosine(len(train), steps))
    t = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
    return time.perf_counter() - t[0], time.process_time() - t[1]


def lightning(
    model: torch.nn.Module, train: DataLoader, val: DataLoader, epochs: int, checkpoints: bool
) -> tuple[float, float]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    strategy = make_strategy("full", StrategyConfig())
    strategy.setup(model)
    module = ClassifierModule(model, strategy, 10, optim=OPTIM, batch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        cbs = []
        if checkpoints:
            cbs = [
                ModelCheckpoint(dirpath=tmp, filename="best", monitor="val_acc", mode="max"),
                ModelCheckpoint(dirpath=tmp, filename="last", monitor=None),
            ]
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=checkpoints,
            callbacks=cbs,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
            default_root_dir=str(Path(tmp)),
        )
        t = time.perf_counter(), time.process_time()
        trainer.fit(module, train, val)
        return time.perf_counter() - t[0], time.process_time() - t[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    base = zoo.create_model("mobilenetv2_100", num_classes=10)
    train, val = _data(args.images, args.size)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": [], "lightning+ckpt": []}
    plain(copy.deepcopy(base), train, val, 1)  # warm-up: oneDNN kernels, allocator, Lightning's imports
    lightning(copy.deepcopy(base), train, val, 1, checkpoints=False)
    for _ in range(args.repeats):
        times["plain"].append(plain(copy.deepcopy(base), train, val, args.epochs))
        times["lightning"].append(lightning(copy.deepcopy(base), train, val, args.epochs, checkpoints=False))
        times["lightning+ckpt"].append(lightning(copy.deepcopy(base), train, val, args.epochs, checkpoints=True))
    wall = {k: min(t[0] for t in v) for k, v in times.items()}
    cpu = {k: min(t[1] for t in v) for k, v in times.items()}
    steps = len(train) * args.epochs
    print(
        f"mobilenetv2_100 full fine-tune, {args.images} images at {args.size}px, {args.epochs} epochs "
        f"({steps} steps), best of {args.repeats}"
    )
    for k in times:
        runs = ", ".join(f"{w:.2f}" for w, _ in times[k])
        print(
            f"{k:15s}: wall {wall[k]:6.2f}s  cpu {cpu[k]:6.2f}s  ({steps / wall[k]:5.2f} steps/s)   wall runs: {runs}"
        )
    for k in ("lightning", "lightning+ckpt"):
        print(f"{k} / plain : wall {wall[k] / wall['plain']:.3f}, cpu {cpu[k] / cpu['plain']:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
