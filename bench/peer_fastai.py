"""The fastai contenders of ``bench/peers.py`` (run in the peers' venv, one process per run).

fastai's standard transfer-learning recipe, defaults untouched::

    dls = ImageDataLoaders.from_folder(root, train="train", valid="val", item_tfms=Resize(size),
                                       batch_tfms=aug_transforms())          # bs 64, flips/rotate/zoom/warp/light
    learn = vision_learner(dls, mobilenet_v2, metrics=accuracy)              # body frozen, fastai's head
    learn.fine_tune(epochs)        # mode fine_tune: 1 frozen epoch, then `epochs` unfrozen (discriminative lrs)
    learn.fit_one_cycle(epochs)    # mode frozen: the body stays frozen, lr 1e-3

The architecture is torchvision's ``mobilenet_v2`` loaded from the ImageNet checkpoint file (fastai would download
it); fastai has no meta for it, so the body is ``features`` (cut -1), split body/head, ImageNet statistics, as for
the architectures fastai knows. Prints one JSON line ``{"acc": [val accuracy per epoch, frozen epoch included],
"t_first_epoch": s}`` (seconds from ``$BENCH_T0``, the launcher's clock when it started this process).

    bench/.scratch/venv-peers/bin/python bench/peer_fastai.py fine_tune ROOT WEIGHTS --size 64 --epochs 3 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch
import torchvision
from fastai.callback.core import Callback
from fastai.vision.all import (
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    default_split,
    imagenet_stats,
    model_meta,
    set_seed,
    vision_learner,
)


class EpochAccuracy(Callback):
    """Collects the validation accuracy after every epoch (across the fits of fine_tune) and the first epoch's start."""

    order = 100  # after the Recorder has written the epoch's values

    def __init__(self) -> None:
        self.accs: list[float] = []
        self.t_first: float | None = None

    def before_epoch(self) -> None:
        if self.t_first is None:
            self.t_first = time.time() - float(os.environ.get("BENCH_T0", time.time()))

    def after_epoch(self) -> None:
        self.accs.append(float(self.recorder.values[-1][-1]))


def make_arch(weights: str):
    def mobilenet_v2(pretrained: bool = True, **kwargs) -> torch.nn.Module:
        m = torchvision.models.mobilenet_v2()
        if pretrained:
            m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return m

    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    return mobilenet_v2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("fine_tune", "frozen"))
    ap.add_argument("root", type=Path, help="a folder with train/ and val/ in ImageFolder layout")
    ap.add_argument("weights")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    set_seed(args.seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(
        args.root, train="train", valid="val", item_tfms=Resize(args.size), batch_tfms=aug_transforms(), seed=args.seed
    )
    cb = EpochAccuracy()
    learn = vision_learner(dls, make_arch(args.weights), metrics=accuracy, cbs=[cb])
    with learn.no_bar(), learn.no_logging():
        if args.mode == "fine_tune":
            learn.fine_tune(args.epochs)
        else:
            learn.fit_one_cycle(args.epochs)
    print(json.dumps({"acc": cb.accs, "t_first_epoch": cb.t_first}))


if __name__ == "__main__":
    main()
