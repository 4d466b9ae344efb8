"""Short trials on a held-out fold of the training images: what ``auto`` measures before it commits.

The fold (:func:`split_fold`) is a stratified :data:`FOLD_FRACTION` of the training images; the candidates train on
the rest (capped at :data:`TRIAL_MAX_TRAIN` images) and are scored on it. Every candidate trains as the fit would
train it, for the epochs the fit would give it (``trainer.max_epochs``, else the strategy's default): probes on the
cached features (seconds), fine-tunes on images. Measured, a fairer-looking shortcut is not fair: a logistic
regression trained to convergence, against fine-tunes after one epoch, made ``auto`` pick a probe at 0.77-0.88 where
``full`` reached 0.89-0.91 in its 3 epochs (digits and MNIST, 50 images per class). Nothing here touches the fit's
own model or run.
"""

from __future__ import annotations

import copy
import logging
import random
import tempfile
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

FOLD_FRACTION = 0.2
FOLD_MAX, TRIAL_MAX_TRAIN = 500, 1500  # images: the trial's cost stays bounded on large datasets


def split_fold(samples: list[tuple[str, int]], seed: int) -> tuple[list[int], list[int]]:
    """Indices (trial-train, fold) of ``samples``: a stratified :data:`FOLD_FRACTION`, both capped."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    n_classes = max(1, len(by_class))
    train, fold = [], []
    for items in by_class.values():
        rng.shuffle(items)
        k = max(1, round(len(items) * FOLD_FRACTION)) if len(items) > 1 else 0
        fold += items[:k][: max(1, FOLD_MAX // n_classes)]
        train += items[k:][: max(1, TRIAL_MAX_TRAIN // n_classes)]
    return sorted(train), sorted(fold)


def _trainer(r: Any, folder: str, epochs: int) -> Any:
    """A quiet one-device Trainer for a trial: no validation, checkpoints or progress bar."""
    import lightning as L

    from transfer.trainer import trainer_kwargs

    kw = {**trainer_kwargs(r, folder), "max_epochs": epochs, "devices": 1, "strategy": "auto", "num_nodes": 1}
    kw.update(enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    kw.pop("plugins", None)
    return L.Trainer(**kw)


def probe_correct(job: Any, x: Any, y: Any, train: list[int], fold: list[int], epochs: int) -> np.ndarray:
    """Which fold images a probe on features ``x`` gets right, trained on ``train`` as the fit trains its probes
    (standardised features, the probe's learning rate and schedule, ``epochs`` epochs of ``data.batch_size``)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transfer.module import StageProbeModule, feature_stats
    from transfer.strategies.probes import PROBE_LR_SCALE

    r = job.recipe
    x, y = torch.as_tensor(x).float(), torch.as_tensor(y).long()
    xt, yt = x[train], y[train]
    module = StageProbeModule(
        [int(x.shape[1])],
        job.num_classes,
        optim=r.optim,
        batch_size=r.data.batch_size,
        stats=[feature_stats(xt)],
        lr_scale=PROBE_LR_SCALE,
    )
    g = torch.Generator().manual_seed(r.seed)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=r.data.batch_size, shuffle=True, generator=g)
    with tempfile.TemporaryDirectory(prefix="transfer-trial-") as tmp:
        _trainer(r, tmp, epochs).fit(module, train_dataloaders=loader)
    with torch.inference_mode():
        logits = module.eval()([x[fold]])[0]
    return (logits.argmax(1) == y[fold]).numpy()


def finetune_correct(job: Any, name: str, cfg: Any, train: list[int], fold: list[int], epochs: int) -> np.ndarray:
    """Which fold images strategy ``name`` gets right after ``epochs`` epochs on the trial-train images."""
    from transfer.data import ImageDataModule
    from transfer.module import ClassifierModule, init_head
    from transfer.sources import DatasetIndex
    from transfer.strategies import create

    r, samples = job.recipe, job.index.train
    model = copy.deepcopy(job.model)  # the pretrained backbone; the fit's own stays untouched
    strategy = create(name, cfg, "trial")
    init_head(model.get_classifier())
    strategy.setup(model)
    strategy.set_optim(r.optim)
    optim = r.optim.model_copy(update={"warmup_epochs": min(r.optim.warmup_epochs, 0.2), "ema": 0.0})
    module = ClassifierModule(model, strategy, job.num_classes, optim=optim, batch_size=r.data.batch_size)
    index = DatasetIndex(job.index.classes, [samples[i] for i in train], [samples[i] for i in fold], "trial")
    dm = ImageDataModule(
        index, job.data_config, augment=r.data.augment, batch_size=r.data.batch_size, num_workers=0, seed=r.seed
    )
    with tempfile.TemporaryDirectory(prefix="transfer-trial-") as tmp:
        _trainer(r, tmp, epochs).fit(module, train_dataloaders=dm.train_dataloader())
    logits, labels = module.predict_logits(dm.eval_loader("val"))
    return (logits.argmax(1) == labels).numpy()


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar test of two classifiers' correctness on the same images: the chance of a difference at least
    this large if they were equally good."""
    from scipy.stats import binomtest

    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
