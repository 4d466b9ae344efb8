"""Frozen features: computed once per (weights, preprocessing, files) and cached on disk.

A linear probe, the per-stage probes and ``auto``'s measurements train on the features of a frozen backbone, so
they are computed in one pass over the images and stored as one safetensors file per key (:class:`FeatureCache`).
The key holds everything that changes them: the backbone's weights (hashed), the data config and the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from transfer.layout import as_layout, channels_last_pass

_log = logging.getLogger(__name__)

CACHE_VERSION = "features-v2"
# (images done, images in all): called as features are computed, at most every PROGRESS_EVERY_S seconds.
Progress = Callable[[int, int], None]
PROGRESS_EVERY_S = 1.0


def weights_digest(model: nn.Module, exclude: nn.Module | None = None) -> str:
    """Hash of a model's tensors (parameters and buffers), leaving out ``exclude`` (the classifier)."""
    skip = {id(t) for t in exclude.state_dict(keep_vars=True).values()} if exclude is not None else set()
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in skip:
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def extract_features(
    model: nn.Module,
    loader: DataLoader,
    *,
    per_stage: bool,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Features of every image in ``loader`` with the model in eval mode.

    Args:
        model: a zoo backbone.
        loader: a deterministic loader of ``(images, labels)``.
        per_stage: also pool every stage's output.
        device: where the forward passes run.
        progress: called with (images done, images in all) as the pass goes.

    Returns:
        ``{"labels": [N], "pre_logits": [N, D]}``, plus ``"stage{i}": [N, C_i]`` (globally average-pooled stage
        outputs) when ``per_stage``.
    """
    was_training = model.training
    # Moved before inference mode, not in it: parameters moved to a GPU inside it become inference tensors, which a
    # fine-tune after the feature pass (the audit's) cannot train (found on an H200; on the CPU .to() moves nothing).
    model.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {}
    total, done, reported = len(loader.dataset), 0, 0.0  # type: ignore[arg-type]
    try:
        with channels_last_pass(model, loader, device) as (batches, used), torch.inference_mode():
            for x, y in batches:
                x = as_layout(x.to(device, non_blocking=True), used)
                if per_stage:
                    feats = model.forward_stages(x)
                    for i, f in enumerate(feats):
                        out.setdefault(f"stage{i}", []).append(f.float().mean((2, 3)).cpu())
                    last = feats[-1]
                else:
                    last = model.forward_features(x)
                out.setdefault("pre_logits", []).append(model.forward_head(last, pre_logits=True).float().cpu())
                out.setdefault("labels", []).append(torch.as_tensor(y))
                done += len(y)
                if progress is not None and (time.monotonic() - reported >= PROGRESS_EVERY_S or done == total):
                    progress(done, total)
                    reported = time.monotonic()
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class FeatureCache:
    """Cached features of a train and a val split, stored as one safetensors file per key."""

    root: Path
    hits: int = 0
    misses: int = 0
    last_key: str | None = field(default=None)

    def key(self, *, weights: str, data_config: dict[str, Any], files: str, per_stage: bool, backbone: str) -> str:
        """The cache key: every input that changes the features changes it."""
        blob = json.dumps(
            {
                "v": CACHE_VERSION,
                "weights": weights,
                "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
                "files": files,
                "per_stage": per_stage,
                "backbone": backbone,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The cached ``{"train": {...}, "val": {...}}`` or None."""
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            flat = load_file(str(p))
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            _log.warning("feature cache %s unreadable (%s); recomputing", p, exc)
            return None
        out: dict[str, dict[str, torch.Tensor]] = {"train": {}, "val": {}}
        for k, v in flat.items():
            split, _, name = k.partition("/")
            out.setdefault(split, {})[name] = v
        return out

    def save(self, key: str, feats: dict[str, dict[str, torch.Tensor]]) -> Path:
        """Write atomically (a temp file renamed into place)."""
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{split}/{k}": v.contiguous() for split, d in feats.items() for k, v in d.items()}
        fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            save_file(flat, tmp)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def get_or_compute(
        self,
        model: nn.Module,
        loaders: dict[str, DataLoader],
        *,
        backbone: str,
        data_config: dict[str, Any],
        files: str,
        per_stage: bool,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Features of each split (``loaders``: split name -> deterministic loader), from the cache when there.

        ``progress`` is called with (images done, images in all splits) while features are computed.
        """
        weights = weights_digest(model, exclude=model.get_classifier())
        key = self.key(weights=weights, data_config=data_config, files=files, per_stage=per_stage, backbone=backbone)
        self.last_key = key
        cached = self.load(key)
        if cached is None and not per_stage:  # per-stage features hold the pre-logits too (auto computed them)
            wider = self.key(weights=weights, data_config=data_config, files=files, per_stage=True, backbone=backbone)
            cached = self.load(wider)
        if cached is None or not all(s in cached and cached[s] for s in loaders):
            from filelock import FileLock

            # One process computes, the others (DDP ranks, parallel runs) wait for the lock and then read the file.
            self.path(key).parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path(key)) + ".lock"):
                cached = self.load(key)
                if cached is None or not all(s in cached and cached[s] for s in loaders):
                    self.misses += 1
                    _log.info("computing frozen features of %s (cache miss: %s)", ", ".join(loaders), self.path(key))
                    feats = _extract_splits(model, loaders, per_stage, device, progress)
                    self.save(key, feats)
                    return feats
        self.hits += 1
        _log.info("feature cache hit: %s", self.path(key))
        return cached


def _extract_splits(
    model: nn.Module, loaders: dict[str, DataLoader], per_stage: bool, device: Any, progress: Progress | None
) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`extract_features` of each split, with one progress count over all of them."""
    total = sum(len(dl.dataset) for dl in loaders.values())  # type: ignore[arg-type]
    feats, before = {}, 0
    for split, dl in loaders.items():

        def report(done: int, _: int, offset: int = before) -> None:
            if progress is not None:
                progress(offset + done, total)

        feats[split] = extract_features(model, dl, per_stage=per_stage, device=device, progress=report)
        before += len(dl.dataset)  # type: ignore[arg-type]
    return feats
