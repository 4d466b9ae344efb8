"""The plain PyTorch contenders of ``bench/peers.py`` (run in the peers' venv, one process per run).

Both use torchvision's ``mobilenet_v2`` with the ImageNet checkpoint, images as they are on disk (already at the
benchmark's size: no resize, no crop), ImageNet mean/std, batch 64, no augmentation, constant learning rates:

- ``probe``: pre-logits features (1280-d, global average pool) computed once, then a linear layer trained with
  AdamW (lr 1e-3, PyTorch's default weight decay) for ``--epochs`` epochs.
- ``full``: everything trains, AdamW with the new classifier at 1e-3 and the backbone at 1e-4.

Prints one JSON line: ``{"acc": [val accuracy after each epoch], "t_first_epoch": s}``; ``t_first_epoch`` counts
from ``$BENCH_T0`` (the launcher's clock when it started this process).

    bench/.scratch/venv-peers/bin/python bench/peer_plain.py probe TRAIN_DIR VAL_DIR WEIGHTS --epochs 10 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_log = logging.getLogger("peer_plain")


def load_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """An ImageFolder tree as normalised float images (N, 3, H, W) and labels (classes sorted by name)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD, torch.tensor(ys)


def mobilenet(weights: str, num_classes: int) -> nn.Module:
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    m.classifier[1] = nn.Linear(m.last_channel, num_classes)
    return m


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def train(model: nn.Module, opt: torch.optim.Optimizer, data: tuple, epochs: int, seed: int) -> dict:
    xt, yt, xv, yv = data
    g = torch.Generator().manual_seed(seed)
    accs, t_first = [], None
    for epoch in range(epochs):
        if t_first is None:
            t_first = time.time() - float(os.environ.get("BENCH_T0", time.time()))
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        accs.append(accuracy(model, xv, yv))
        _log.info("epoch %d: val_acc %.4f", epoch + 1, accs[-1])
    return {"acc": accs, "t_first_epoch": t_first}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(x[i : i + 256]).mean((2, 3)) for i in range(0, len(x), 256)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("probe", "full"))
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("val_dir", type=Path)
    ap.add_argument("weights")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.manual_seed(args.seed)
    xt, yt = load_folder(args.train_dir)
    xv, yv = load_folder(args.val_dir)
    model = mobilenet(args.weights, int(yt.max()) + 1)
    if args.mode == "probe":
        head = model.classifier[1]
        data = (features(model, xt), yt, features(model, xv), yv)
        out = train(head, torch.optim.AdamW(head.parameters(), lr=1e-3), data, args.epochs, args.seed)
    else:
        groups = [
            {"params": model.classifier.parameters(), "lr": 1e-3},
            {"params": model.features.parameters(), "lr": 1e-4},
        ]
        out = train(model, torch.optim.AdamW(groups), (xt, yt, xv, yv), args.epochs, args.seed)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
