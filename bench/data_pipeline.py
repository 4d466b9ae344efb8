"""Data pipeline throughput (decode + augment) vs model training throughput, in images per second.

The images are photo-sized JPEGs (scikit-image's sample photos, 400-600 px, re-encoded with variations) so that
decoding is real work. The pipeline is :class:`transfer.data.ImageDataset` with a training augmentation preset at
the backbone's input size, in one process (one worker) and through a DataLoader with 2 workers. Training is one
full fine-tuning step (forward, backward, AdamW) of MobileNetV2 at the same size, using every CPU thread.
Goal: one pipeline worker >= 3x the training rate (so a couple of workers keep the model fed).

    python bench/data_pipeline.py [--size 224] [--images 96] [--preset medium]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import zoo
from transfer.data import ImageDataset, build_transforms


def _photos(folder: Path, n: int) -> list[tuple[str, int]]:
    import skimage.data as d

    sources = [d.chelsea(), d.coffee(), d.astronaut(), d.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)])
        w = int(rng.integers(400, 640))
        img = img.resize((w, int(w * img.height / img.width)))
        path = folder / f"{i:04d}.jpg"
        img.save(path, quality=int(rng.integers(80, 95)))
        out.append((str(path), i % 2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--preset", default="medium", choices=["none", "light", "medium", "heavy"])
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    spec = zoo.get_spec("mobilenetv2_100")
    cfg = {**spec.data_config, "input_size": (3, args.size, args.size)}
    train_tf, _ = build_transforms(cfg, args.preset)

    with tempfile.TemporaryDirectory() as tmp:
        samples = _photos(Path(tmp), args.images)
        ds = ImageDataset(samples, train_tf, draft_size=2 * args.size)
        ds[0]
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        one_worker = len(ds) / (time.perf_counter() - t)
        loader = DataLoader(ds, batch_size=args.batch, num_workers=2, persistent_workers=False)
        t = time.perf_counter()
        n = sum(len(x) for x, _ in loader)
        two_workers = n / (time.perf_counter() - t)

    torch.manual_seed(0)
    model = zoo.create_model("mobilenetv2_100", num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    steps = 3
    for _ in range(steps):
        step()
    train_rate = steps * args.batch / (time.perf_counter() - t)

    print(
        f"{args.images} photo JPEGs -> {args.size}px, augment={args.preset}; mobilenetv2_100 full fine-tune, "
        f"batch {args.batch}, {torch.get_num_threads()} threads"
    )
    print(f"pipeline, 1 process        : {one_worker:7.1f} img/s")
    print(f"pipeline, DataLoader x2    : {two_workers:7.1f} img/s")
    print(f"training (fwd+bwd+step)    : {train_rate:7.1f} img/s")
    print(f"pipeline (1 process) / training : {one_worker / train_rate:5.1f}x  (goal >= 3x)")


if __name__ == "__main__":
    main()
