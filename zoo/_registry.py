"""The model registry: one :class:`ArchSpec` per architecture, looked up by name or alias.

Each family file registers its builders with :func:`register_model`; the spec carries the metadata a user
(and the tests) rely on: the paper, its year, the parameter count at 1000 classes, the weight sources and the
preprocessing the weights were trained with.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

StateDict = dict[str, Any]
Converter = Callable[[StateDict], StateDict]


@dataclass(frozen=True)
class ArchSpec:
    """Metadata of one registered architecture.

    Attributes:
        name: canonical name (timm's name where timm has the architecture).
        family: the family file the architecture lives in (``resnet``, ``densenet``, ...).
        paper: paper title.
        arxiv: arXiv id of the paper, or None.
        year: publication year.
        num_params: parameter count at 1000 classes and 3 input channels (checked by a test).
        timm: timm model name (``arch`` or ``arch.tag``) whose weights load into this model, or None.
        torchvision: torchvision builder name whose weights load into this model, or None.
        input_size: (C, H, W) the weights were trained at.
        mean: normalisation mean.
        std: normalisation std.
        interpolation: resize interpolation (``bilinear`` or ``bicubic``).
        crop_pct: centre-crop fraction used at evaluation.
        first_conv: state-dict prefix of the stem convolution (adapted when ``in_chans != 3``).
        classifier: state-dict prefix of the final linear layer (dropped when ``num_classes`` differs).
        paper_params: parameter count the paper reports for this configuration, or None.
        paper_macs: multiply-adds the paper reports at ``paper_input_size``, or None.
        paper_input_size: (C, H, W) at which the paper counts multiply-adds (default ``input_size``).
        timm_kwargs: keyword arguments that make timm's model the same architecture (e.g. ``output_stride``).
        new_keys: fnmatch patterns of native state-dict keys no pretrained source has (initialised fresh, e.g.
            deformable-conv offsets initialised to zero so the model starts as the pretrained one).
        min_size: smallest input side the architecture accepts (tests run at this size).
        aliases: other names that resolve to this one.
    """

    name: str
    family: str
    paper: str
    arxiv: str | None
    year: int
    num_params: int
    timm: str | None = None
    torchvision: str | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    first_conv: str = "conv1"
    classifier: str = "fc"
    paper_params: int | None = None
    paper_macs: int | None = None
    paper_input_size: tuple[int, int, int] | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict, compare=False)
    new_keys: tuple[str, ...] = ()
    min_size: int = 64
    aliases: tuple[str, ...] = ()
    builder: Callable[..., Any] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    convert_timm: Converter | None = field(default=None, repr=False, compare=False)
    convert_torchvision: Converter | None = field(default=None, repr=False, compare=False)

    @property
    def weight_sources(self) -> list[str]:
        """The pretrained sources this architecture can load (``timm``, ``torchvision``), in preference order."""
        return [src for src, ok in (("timm", self.timm), ("torchvision", self.torchvision)) if ok]

    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing in timm's ``resolve_data_config`` format."""
        return {
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


_REGISTRY: dict[str, ArchSpec] = {}
_ALIASES: dict[str, str] = {}


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


def register_model(
    *,
    convert_timm: Converter | None = None,
    convert_torchvision: Converter | None = None,
    **spec_fields: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a builder ``fn(**kwargs) -> Backbone`` under the builder's name.

    Args:
        convert_timm: maps a timm state dict to native keys (identity when None: native names mirror timm's).
        convert_torchvision: maps a torchvision state dict to native keys.
        **spec_fields: the :class:`ArchSpec` fields except ``name`` and ``builder``.

    Raises:
        ValueError: when the name or one of its aliases is registered already.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        spec = ArchSpec(
            name=name, builder=fn, convert_timm=convert_timm, convert_torchvision=convert_torchvision, **spec_fields
        )
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        for alias in spec.aliases:
            if alias in _REGISTRY or alias in _ALIASES:
                raise ValueError(f"alias {alias!r} of {name!r} is registered already")
        _REGISTRY[name] = spec
        for alias in spec.aliases:
            _ALIASES[alias] = name
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def resolve_name(name: str) -> str:
    """The canonical name for ``name`` or one of its aliases (case, ``-`` and ``_`` are ignored).

    Raises:
        UnknownModelError: with the closest registered names as suggestions.
    """
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    wanted = _norm(name)
    for candidate in (*_REGISTRY, *_ALIASES):
        if _norm(candidate) == wanted:
            return _ALIASES.get(candidate, candidate)
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(_ALIASES.get(c, c)) for c in close)}? " if close else ""
    raise UnknownModelError(f"unknown model {name!r}: {hint}`transfer zoo list` shows the {len(_REGISTRY)} models")


def get_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of a registered model or alias."""
    return _REGISTRY[resolve_name(name)]
