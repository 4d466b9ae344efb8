"""zoo: the classic CNN architectures as native PyTorch code that loads timm's or torchvision's weights.

>>> import zoo
>>> model = zoo.create_model("resnet50", num_classes=10, pretrained=False)
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from zoo._backbone import Backbone, FeatureInfo
from zoo._registry import ArchSpec, get_spec, list_models, register_model, resolve_name
from zoo._weights import convert_state_dict, load_pretrained
from zoo.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError, ZooError

__all__ = [
    "ArchSpec",
    "Backbone",
    "CheckpointMismatchError",
    "FeatureInfo",
    "UnknownModelError",
    "WeightsUnavailableError",
    "ZooError",
    "convert_state_dict",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
    "resolve_name",
]


def create_model(
    name: str, *, num_classes: int = 1000, in_chans: int = 3, pretrained: bool | str = False, **kwargs: Any
) -> Backbone:
    """Build a registered architecture, optionally with pretrained weights.

    Args:
        name: a registered name or alias (``zoo.list_models()``).
        num_classes: classifier width; a pretrained classifier of another width is dropped and re-made.
        in_chans: input channels; pretrained stem weights are adapted when it is not 3.
        pretrained: ``False``; ``True`` (timm where it has weights, else torchvision); ``"timm"``,
            ``"timm:<tag>"``, ``"torchvision"``, ``"torchvision:<WEIGHTS_ENUM>"``; or a local
            ``.safetensors``/``.pth``/``.bin`` file.
        **kwargs: family options (``drop_rate``, ``drop_path_rate``, ``norm_layer``, ...).

    Raises:
        UnknownModelError: the name is not registered.
        WeightsUnavailableError: the weights cannot be had (offline, unknown tag, missing file).
        CheckpointMismatchError: the checkpoint belongs to another architecture.
    """
    spec = get_spec(name)
    model = spec.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained:
        load_pretrained(model, spec.name, pretrained)
    return model


# Each family module registers its architectures on import.
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in ("layers", "errors"):
        importlib.import_module(f"{__name__}.{_mod.name}")
