"""The logged model's format: its config, and the network it describes.

A logged model carries two artifacts: ``weights`` (``model.safetensors``, the classifier's state dict) and
``config`` (``config.json``). The config's keys (``format_version`` 2):

- ``backbone``: zoo name; the network is rebuilt with ``zoo.create_model(backbone, num_classes=..., in_chans=...,
  pretrained=False, **model_kwargs)`` and the safetensors loaded into it (strict).
- ``class_names``: index ``i`` is logit ``i``; ``num_classes`` = its length.
- ``data_config``: the eval preprocessing (:func:`transfer.imaging.normalize_data_config`); ``in_chans`` is
  ``input_size[0]``.
- ``num_stages`` / ``in_features``: None for a whole backbone; for a stage probe's truncated backbone, how many
  ``stages()`` it keeps (stem included) and the linear layer's width (:class:`StageClassifier`).
- ``model_kwargs``: extra ``zoo.create_model`` arguments; ``batch_size``: images per forward pass.
- ``limits``: the :class:`transfer.imaging.ImageLimits` inputs are checked against (version 1 configs had
  ``max_image_pixels`` and ``max_image_bytes``; both are still read).

Version 3 adds what the deployed model does after the network (absent keys mean: not done):

- ``temperature``: the logits are divided by it before the softmax (fitted on held-out images; 1.0: none).
- ``ood``: the unknown detector's settings (``method``, ``threshold``, ...; :mod:`transfer.deploy.ood`); its arrays
  travel in the ``ood`` artifact (safetensors).
- ``tta``: ``"hflip"`` averages the logits of the image and its mirror image; absent: one view.
- ``runtime`` / ``precision`` / ``runtime_reason``: which engine runs the network (``onnx``: the ``onnx`` artifact
  under ONNX Runtime; ``torch``) at which precision (``fp32``, ``int8``), and why (a fallback says what failed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transfer.errors import UserError
from transfer.imaging import ImageLimits, normalize_data_config

FORMAT_VERSION = 3
ONNX_ARTIFACTS = {"fp32": "onnx", "int8": "onnx_int8"}  # precision -> the model artifact holding that ONNX graph
DEFAULT_BATCH_SIZE = 64


class StageClassifier(nn.Module):
    """A truncated backbone (its first ``num_stages`` stages) with average pooling and a linear classifier.

    This is what a stage probe deploys when an early stage transfers best. ``backbone.stages()`` is called once
    and the list kept outside the module tree, so the state dict is the backbone's own keys under
    ``backbone.`` plus ``classifier.weight``/``classifier.bias``.

    Args:
        backbone: a zoo model.
        num_stages: how many modules of ``backbone.stages()`` are kept, the stem being the first.
        num_classes: classifier width.
        in_features: channels of the last kept stage; found with a dry run when None.
    """

    def __init__(self, backbone: nn.Module, num_stages: int, num_classes: int, in_features: int | None = None):
        super().__init__()
        stages = list(backbone.stages())
        if not 1 <= num_stages <= len(stages):
            raise ValueError(f"num_stages must be in 1..{len(stages)}, got {num_stages}")
        self.backbone = backbone
        self.num_stages = int(num_stages)
        self._kept: list[nn.Module] = stages[:num_stages]  # a plain list: not registered twice in the state dict
        if in_features is None:
            in_features = self._probe_width()
        self.in_features = int(in_features)
        self.classifier = nn.Linear(self.in_features, num_classes)

    def _probe_width(self) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            # The stem's first convolution tells the input channels; 224 suits every zoo architecture.
            first = next((p for p in self.backbone.parameters() if p.dim() == 4), None)
            chans = first.shape[1] if first is not None else 3
            device = first.device if first is not None else None
            x = torch.zeros(1, chans, 224, 224, device=device)
            for stage in self._kept:
                x = stage(x)
        self.backbone.train(was_training)
        return int(x.shape[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._kept:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooled features (``pre_logits``) or the logits of :meth:`forward_features`' output (the backbone
        contract's method, so deployment code treats both kinds of model alike)."""
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


TTA_MODES = ("hflip",)


class ServingNet(nn.Module):
    """What the deployed model's runtime computes from a preprocessed batch: ``(logits, features)``.

    ``features`` are the penultimate features the unknown detector reads (``forward_head(..., pre_logits=True)``;
    for a stage classifier the pooled output of its last kept stage), of the image as given; with ``tta="hflip"``
    the logits are the mean of the image's and its mirror image's. Exported to ONNX as it is, so both runtimes
    compute the same thing.
    """

    def __init__(self, model: nn.Module, tta: str | None = None):
        super().__init__()
        if tta is not None and tta not in TTA_MODES:
            raise ValueError(f"unknown tta {tta!r}: use one of {', '.join(TTA_MODES)} or none")
        self.model = model
        self.tta = tta

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unpooled = self.model.forward_features(x)
        features = self.model.forward_head(unpooled, pre_logits=True)
        logits = self.model.forward_head(unpooled)
        if self.tta == "hflip":
            logits = (logits + self.model(torch.flip(x, dims=[3]))) / 2
        return logits, features


def build_model(config: dict[str, Any]) -> nn.Module:
    """The classifier described by a model config (random weights; load the safetensors into it)."""
    import zoo

    num_classes = len(config["class_names"])
    in_chans = int(config["data_config"]["input_size"][0])
    kwargs = dict(config.get("model_kwargs") or {})
    num_stages = config.get("num_stages")
    if num_stages:
        backbone = zoo.create_model(
            config["backbone"], num_classes=num_classes, in_chans=in_chans, pretrained=False, **kwargs
        )
        return StageClassifier(backbone, int(num_stages), num_classes, in_features=config.get("in_features"))
    return zoo.create_model(config["backbone"], num_classes=num_classes, in_chans=in_chans, pretrained=False, **kwargs)


def feature_key(model: nn.Module) -> str:
    """Where the feature cache keeps the deployed model's penultimate features: ``pre_logits`` for a whole
    backbone, ``stage{i}`` (the pooled output of its last kept stage) for a stage classifier."""
    return f"stage{model.num_stages - 1}" if isinstance(model, StageClassifier) else "pre_logits"


def limits_of(config: dict[str, Any]) -> ImageLimits:
    """The input limits a model config states (defaults for what it does not)."""
    given = dict(config.get("limits") or {})
    legacy = {"max_pixels": config.get("max_image_pixels"), "max_bytes": config.get("max_image_bytes")}
    given.update({k: int(v) for k, v in legacy.items() if v and k not in given})
    return ImageLimits(**{k: v for k, v in given.items() if k in ImageLimits.__dataclass_fields__})


def model_config(
    model: nn.Module,
    backbone: str,
    class_names: list[str],
    data_config: dict[str, Any],
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of a classifier to log (see the module docstring).

    Raises:
        UserError: duplicate or no class names, a bad data config, or a classifier of another width.
    """
    import zoo

    if not class_names:
        raise UserError("class_names is empty: a classifier needs at least one class")
    if len(set(class_names)) != len(class_names):
        raise UserError(f"class names must be unique, got {class_names}")
    try:
        data = normalize_data_config(data_config)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    out = out_features(model)
    if out is not None and out != len(class_names):
        raise UserError(f"the model has {out} outputs but {len(class_names)} class names were given")
    limits = ImageLimits()
    return {
        "format_version": FORMAT_VERSION,
        "backbone": zoo.get_spec(backbone).name,
        "class_names": [str(c) for c in class_names],
        "num_classes": len(class_names),
        "data_config": data,
        "num_stages": model.num_stages if isinstance(model, StageClassifier) else None,
        "in_features": model.in_features if isinstance(model, StageClassifier) else None,
        "model_kwargs": dict(model_kwargs or {}),
        "batch_size": DEFAULT_BATCH_SIZE,
        "limits": {k: getattr(limits, k) for k in ImageLimits.__dataclass_fields__},
        "torch_version": torch.__version__,
    }


def out_features(model: nn.Module) -> int | None:
    """The classifier's width, when it is a linear layer."""
    head = model.classifier if isinstance(model, StageClassifier) else None
    if head is None and hasattr(model, "get_classifier"):
        head = model.get_classifier()
    return int(head.out_features) if isinstance(head, nn.Linear) else None
