"""Training data: augmentation pipelines, the image dataset and the ``LightningDataModule``.

Every image is decoded by :mod:`transfer.imaging` (the decoder the served model uses, at the same JPEG draft size);
the eval transform *is* the served model's preprocessing (:class:`EvalTransform`), and the training augmentations
start from the same decoded picture. This module imports nothing from deployment.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from transfer import imaging
from transfer.augment import build_transforms
from transfer.errors import UserError
from transfer.sources import DatasetIndex, Sample

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Datasets and the DataModule


class ImageDataset(Dataset):
    """Image files with labels, decoded by :mod:`transfer.imaging` and transformed on access.

    A file that fails to decode at this point (corrupted after the scan, truncated past what the scan reads) is
    logged by path once and replaced by the next sample, so one bad file does not end a long run.

    Args:
        samples: (path, label) pairs.
        transform: PIL image -> tensor (:mod:`transfer.augment`).
        draft_size: the JPEG draft size (:func:`transfer.imaging.draft_size`; the served model uses the same).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, draft_size: int | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.draft_size = draft_size
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for k in range(min(len(self.samples), 16)):
            j = (i + k) % len(self.samples)
            path, label = self.samples[j]
            if j in self._bad:
                continue
            try:
                img = imaging.load_file(path, draft=self.draft_size)
            except imaging.ImageInputError as exc:
                self._bad.add(j)
                _log.warning("skipping %s: %s", path, exc)
                continue
            return self.transform(img), label
        raise UserError(f"cannot decode {self.samples[i][0]} nor the images after it; check the data")


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_c)`` (1.0 for balanced data)."""
    c = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return c.sum() / (len(c) * c)


def resolve_balance(balance: str, counts: Sequence[int]) -> str:
    """``auto`` -> ``weights`` when the largest class is at least twice the smallest, else ``none``."""
    if balance != "auto":
        return balance
    return "weights" if max(counts) >= 2 * max(1, min(counts)) else "none"


def make_sampler(labels: Sequence[int], num_classes: int, seed: int) -> WeightedRandomSampler:
    """A sampler that draws every class equally often (with replacement)."""
    counts = Counter(labels)
    w = torch.tensor([1.0 / counts[lab] for lab in labels], dtype=torch.double)
    return WeightedRandomSampler(
        w, num_samples=len(labels), replacement=True, generator=torch.Generator().manual_seed(seed)
    )


def _drop_last(n: int, batch_size: int) -> bool:
    # A last batch of one sample breaks BatchNorm in train mode ("expected more than 1 value per channel").
    return n > batch_size and n % batch_size == 1


class ImageDataModule(L.LightningDataModule):
    """Train / val dataloaders over a :class:`DatasetIndex` with a backbone's preprocessing.

    Args:
        index: the resolved dataset.
        data_config: the backbone's preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``), with ``input_size`` at the training image size.
        augment: augmentation preset for training.
        batch_size: per-device batch size.
        num_workers: dataloader worker processes.
        balance: ``none``, ``sampler`` or ``weights`` (resolved, not ``auto``): the sampler is used here.
        seed: sampler seed.
    """

    def __init__(
        self,
        index: DatasetIndex,
        data_config: dict[str, Any],
        *,
        augment: str = "none",
        batch_size: int = 32,
        num_workers: int = 2,
        balance: str = "none",
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.index = index
        self.data_config = dict(data_config)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.balance = balance
        self.seed = seed
        self.train_tf, self.eval_tf = build_transforms(self.data_config, augment)
        self.draft = imaging.draft_size(self.data_config)
        self.train_set = ImageDataset(index.train, self.train_tf, self.draft)
        self.val_set = ImageDataset(index.val, self.eval_tf, self.draft)

    def _loader(self, ds: Dataset, *, train: bool, sampler: Any = None, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=train and _drop_last(len(ds), self.batch_size),
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.balance == "sampler":
            sampler = make_sampler([lab for _, lab in self.index.train], self.index.num_classes, self.seed)
        return self._loader(self.train_set, train=True, sampler=sampler, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def eval_loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """A deterministic loader (eval transform, no shuffle) over ``train`` or ``val``: for features and reports."""
        return self.loader_of(getattr(self.index, split), batch_size)

    def loader_of(self, samples: Sequence[Sample], batch_size: int | None = None) -> DataLoader:
        """A deterministic loader (eval transform, no shuffle) over any samples."""
        ds = ImageDataset(samples, self.eval_tf, self.draft)
        return DataLoader(
            ds, batch_size=batch_size or self.batch_size, shuffle=False, num_workers=self.num_workers, drop_last=False
        )
