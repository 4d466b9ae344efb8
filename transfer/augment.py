"""Image transforms: the eval transform (the served model's preprocessing) and the training augmentation presets.

Every transform takes a decoded RGB PIL image (from :mod:`transfer.imaging`) and returns a normalised CHW tensor.
The presets (:data:`PRESETS`, the recipe's ``data.augment``):

- ``none``: the eval transform (what the served model sees);
- ``light``: random resized crop (scale 0.7-1) and horizontal flip;
- ``medium``: + rotation and colour jitter, crops down to 0.4;
- ``heavy``: + shear, blur, grey, cutout, crops down to 0.2;
- ``trivial``: torchvision's TrivialAugmentWide (Mueller & Hutter 2021), then ``light``;
- ``randaugment``: torchvision's RandAugment (2 ops, magnitude 9; Cubuk et al. 2020), then ``light``.

Crops and flips are albumentations pipelines that downscale with area interpolation (no aliasing, like the eval
resize); the policy-based presets run torchvision's implementation on the PIL image first, so there is one decoder
and one picture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from transfer import imaging

Transform = Callable[[Image.Image], torch.Tensor]


def _cv2_interp(name: str) -> int:
    import cv2

    return {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}.get(
        name, cv2.INTER_LINEAR
    )


class Albumentations:
    """An albumentations pipeline (crop, flip, ..., normalise) called on a PIL image, after an optional PIL policy.

    Args:
        ops: builds the albumentations transforms before normalisation, for a data config.
        data_config: ``input_size``, ``mean``, ``std``, ``interpolation``.
        policy: a torchvision PIL transform applied first (TrivialAugmentWide, RandAugment), or None.
    """

    def __init__(
        self, ops: Callable[[dict[str, Any]], list[Any]], data_config: dict[str, Any], policy: Callable | None = None
    ) -> None:
        self.ops, self.data_config, self.policy = ops, dict(data_config), policy
        self.grey = int(data_config["input_size"][0]) == 1
        self.pipeline = self._compose(self.data_config)

    def _compose(self, data_config: dict[str, Any]) -> Any:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        c = int(data_config["input_size"][0])
        mean, std = tuple(data_config["mean"])[:c], tuple(data_config["std"])[:c]
        return A.Compose([*self.ops(data_config), A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])

    def set_size(self, side: int) -> None:
        """Crop to ``side`` x ``side`` from now on (progressive resizing)."""
        c = self.data_config["input_size"][0]
        self.pipeline = self._compose({**self.data_config, "input_size": (c, side, side)})

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.policy is not None:
            img = self.policy(img)
        arr = np.asarray(img.convert("L" if self.grey else "RGB"))
        return self.pipeline(image=arr[:, :, None] if arr.ndim == 2 else arr)["image"]

    def __repr__(self) -> str:
        return f"Albumentations({self.policy!r}, {self.pipeline!r})"


def _crop(data_config: dict[str, Any], scale: tuple[float, float]) -> Any:
    import albumentations as A

    _, h, w = (int(v) for v in data_config["input_size"])
    interp = _cv2_interp(str(data_config.get("interpolation") or "bilinear"))
    return A.RandomResizedCrop((h, w), scale=scale, interpolation=interp, area_for_downscale="image")


def _light(cfg: dict[str, Any]) -> list[Any]:
    import albumentations as A

    return [_crop(cfg, (0.7, 1.0)), A.HorizontalFlip(p=0.5)]


def _medium(cfg: dict[str, Any]) -> list[Any]:
    import albumentations as A

    return [
        _crop(cfg, (0.4, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-15, 15), p=0.5),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
    ]


def _heavy(cfg: dict[str, Any]) -> list[Any]:
    import albumentations as A

    return [
        _crop(cfg, (0.2, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-30, 30), shear=(-10, 10), scale=(0.9, 1.1), p=0.7),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        A.ToGray(p=0.1),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=0.5),
    ]


def _trivial() -> Callable:
    from torchvision.transforms import TrivialAugmentWide

    return TrivialAugmentWide()


def _randaugment() -> Callable:
    from torchvision.transforms import RandAugment

    return RandAugment(num_ops=2, magnitude=9)


# name -> (albumentations ops for a data config, a PIL policy applied first or None)
PRESETS: dict[str, tuple[Callable[[dict[str, Any]], list[Any]], Callable[[], Callable] | None] | None] = {
    "none": None,
    "light": (_light, None),
    "medium": (_medium, None),
    "heavy": (_heavy, None),
    "trivial": (_light, _trivial),
    "randaugment": (_light, _randaugment),
}


def build_transforms(data_config: dict[str, Any], augment: str = "light") -> tuple[Transform, Transform]:
    """The ``(train, eval)`` transforms for a data config and an augmentation preset (:data:`PRESETS`).

    Raises:
        ValueError: an unknown preset.
    """
    if augment not in PRESETS:
        raise ValueError(f"unknown augment preset {augment!r}; choose one of {', '.join(PRESETS)}")
    eval_tf = imaging.eval_transform(data_config)
    preset = PRESETS[augment]
    if preset is None:  # a transform of its own: progressive resizing changes the training one only
        return imaging.eval_transform(data_config), eval_tf
    ops, policy = preset
    return Albumentations(ops, data_config, policy() if policy else None), eval_tf
