"""Duplicates: the same file twice (content hash) and the same picture twice (near-duplicates), and leakage.

A near-duplicate pair passes three checks, each with a threshold calibrated on the user's own data: the frozen
features' cosine similarity, the perceptual hash's bit distance, and the correlation of the 16 x 16 grey pictures.
Calibration (:func:`calibrate`) makes a copy of some of the dataset's own images the way near-duplicates arise
(resized and re-encoded as JPEG), passes the copies through the same backbone, and takes the thresholds from how
similar each copy stays to its original. Any one check alone is fooled: on small grey digits, distinct images of a
class share hashes and features; the three together flagged no clean image in the planted-problem test.

Groups are sorted into the same class, conflicting labels (the same picture under two labels) and leaks (a picture
in both the training and the validation split: the validation accuracy is inflated by it).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transfer import imaging
from transfer.audit.scan import FileFacts, hamming, picture_facts

COPIES = 48  # images copied to calibrate the near-duplicate thresholds
COPY_SCALES = (0.6, 1.5)  # resized by a factor in this range, then saved as JPEG
COPY_QUALITY = (70, 92)
QUANTILE = 0.02  # the thresholds start from the copy that strayed furthest but for 2%
# A copy is made from the file itself, but two near-duplicates in the wild are usually both derived from a common
# original: each strays from it as far as a copy does, so from each other up to twice as far.
MARGIN = 2.0
FLOORS = {"cosine": 0.5, "pixels": 0.9, "hash_bits": 2}  # never looser than these (hash: never stricter)
CHUNK = 1024


@dataclass(frozen=True)
class Thresholds:
    """What a near-duplicate pair must reach on each check."""

    cosine: float
    hash_bits: int
    pixels: float
    copies: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"cosine": round(self.cosine, 4), "hash_bits": self.hash_bits, "pixels": round(self.pixels, 4)}


@torch.inference_mode()
def _copy_features(model: Any, pictures: list[Any], data_config: dict[str, Any], device: str) -> torch.Tensor:
    x = torch.stack([imaging.preprocess_image(p, data_config) for p in pictures]).to(device)
    was = model.training
    model.eval()
    try:
        return model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()
    finally:
        model.train(was)


def _reencoded(path: str, rng: random.Random, draft: int) -> Any:
    """The image at ``path`` resized and saved as a JPEG, decoded again as a user's copy would be."""
    from PIL import Image

    picture = imaging.load_file(path)
    scale = rng.uniform(*COPY_SCALES)
    size = (max(8, round(picture.width * scale)), max(8, round(picture.height * scale)))
    buf = io.BytesIO()
    picture.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=rng.randint(*COPY_QUALITY))
    return imaging.decode(buf.getvalue(), draft=draft)


def calibrate(
    facts: Sequence[FileFacts], features: torch.Tensor, model: Any, data_config: dict[str, Any], *, seed: int = 0
) -> Thresholds:
    """Thresholds from re-encoded copies of up to :data:`COPIES` of the dataset's images (``features``: the
    normalised features of ``facts``, row for row)."""
    rng = random.Random(seed)
    readable = [i for i, f in enumerate(facts) if not f.error]
    picked = rng.sample(readable, min(COPIES, len(readable)))
    if not picked:
        return Thresholds(FLOORS["cosine"], FLOORS["hash_bits"], FLOORS["pixels"])
    draft = imaging.draft_size(data_config)
    copies = [_reencoded(facts[i].path, rng, draft) for i in picked]
    device = next(model.parameters()).device.type
    feats = torch.nn.functional.normalize(_copy_features(model, copies, data_config, device), dim=1)
    cos = (feats * features[picked]).sum(1).numpy()
    hashes, pixels = zip(*(picture_facts(c) for c in copies))
    bits = hamming(np.array(hashes, dtype=np.uint64), np.array([facts[i].phash for i in picked], dtype=np.uint64))
    corr = np.array([float(p @ facts[i].pixels) for p, i in zip(pixels, picked)])
    return Thresholds(
        cosine=max(1.0 - MARGIN * (1.0 - float(np.quantile(cos, QUANTILE))), FLOORS["cosine"]),
        hash_bits=max(round(MARGIN * float(np.quantile(bits, 1 - QUANTILE))), FLOORS["hash_bits"]),
        pixels=max(1.0 - MARGIN * (1.0 - float(np.quantile(corr, QUANTILE))), FLOORS["pixels"]),
        copies=len(picked),
    )


def exact_groups(facts: Sequence[FileFacts]) -> list[list[int]]:
    """Indices of files with the same bytes, in groups of two or more."""
    by_hash: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        if not f.error:
            by_hash.setdefault(f.sha256, []).append(i)
    return [g for g in by_hash.values() if len(g) > 1]


def near_pairs(
    facts: Sequence[FileFacts], features: torch.Tensor, thr: Thresholds, exact: Sequence[Sequence[int]]
) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` of pairs (i < j) that pass all three checks and are not the same file twice."""
    same_file = {frozenset((a, b)) for g in exact for a in g for b in g if a != b}
    ok = np.array([not f.error for f in facts])
    hashes = np.array([f.phash for f in facts], dtype=np.uint64)
    pixels = np.stack([f.pixels if f.pixels is not None else np.zeros(1, np.float32) for f in facts if not f.error])
    row_of = np.cumsum(ok) - 1  # position of a readable file among the readable ones
    out = []
    n = len(facts)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK))
        close = (hamming(hashes[rows, None], hashes[None, :]) <= thr.hash_bits) & ok[rows, None] & ok[None, :]
        close &= rows[:, None] < np.arange(n)[None, :]
        for i, j in zip(*np.nonzero(close)):
            a, b = int(rows[i]), int(j)
            if frozenset((a, b)) in same_file:
                continue
            cos = float(features[a] @ features[b])
            if cos >= thr.cosine and float(pixels[row_of[a]] @ pixels[row_of[b]]) >= thr.pixels:
                out.append((a, b, cos))
    return out


def connected(pairs: Sequence[tuple[int, int, float]]) -> list[tuple[list[int], float]]:
    """Pairs joined into groups (union-find), each with its highest similarity."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, float] = {}
    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    members: dict[int, list[int]] = {}
    for a, _, sim in pairs:
        r = root(a)
        best[r] = max(best.get(r, 0.0), sim)
    for i in list(parent):
        members.setdefault(root(i), []).append(i)
    return [(sorted(m), best[r]) for r, m in members.items()]


def describe_group(facts: Sequence[FileFacts], group: Sequence[int], similarity: float, classes: list[str]) -> dict:
    """A group as the report shows it: paths, labels, splits, similarity, and whether the labels conflict."""
    return {
        "paths": [facts[i].path for i in group],
        "labels": [classes[facts[i].label] for i in group],
        "splits": [facts[i].split for i in group],
        "similarity": round(similarity, 4),
        "conflicting_labels": len({facts[i].label for i in group}) > 1,
    }


def leaks(facts: Sequence[FileFacts], groups: Sequence[Sequence[int]]) -> list[list[str]]:
    """``[train_path, val_path]`` for every training and validation file of the same group."""
    out = []
    for g in groups:
        train = [facts[i].path for i in g if facts[i].split == "train"]
        val = [facts[i].path for i in g if facts[i].split == "val"]
        out += [[t, v] for v in val for t in train[:1]]
    return out
