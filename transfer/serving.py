"""Deploy and consume: a registry model that takes raw images, ``transfer predict``, serving and export.

The logged model is an MLflow pyfunc built with MLflow's *models from code* (``transfer/pyfunc_model.py`` is the
model's code; nothing is pickled). It carries two artifacts:

``weights``
    ``model.safetensors``: the state dict of the classifier (``safetensors.torch.save_model``).
``config``
    ``config.json``, the keys (shared with ``transfer/tracking.py``; ``format_version`` 1):

    - ``backbone``: zoo name; the model is rebuilt with ``zoo.create_model(backbone, num_classes=...,
      in_chans=..., pretrained=False, **model_kwargs)`` and the safetensors loaded into it (strict).
    - ``class_names``: list of class names; index ``i`` is logit ``i``. ``num_classes`` = its length.
    - ``data_config``: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct`` (the eval
      preprocessing, see :func:`preprocess`). ``in_chans`` is ``input_size[0]`` (1: images are read as grey).
    - ``num_stages``: None for a whole backbone; an int for a truncated one (the stage probe), which is a
      :class:`StageClassifier`: the first ``num_stages`` modules of ``backbone.stages()`` (stem included), global
      average pooling and a linear layer of ``in_features`` inputs. Its state dict is ``backbone.*`` (the whole
      backbone, its head unused) plus ``classifier.*``.
    - ``in_features``: width of the stage classifier (only with ``num_stages``).
    - ``model_kwargs``: extra keyword arguments of ``zoo.create_model`` (default ``{}``).
    - ``batch_size``: images per forward pass inside ``predict`` (default 64).
    - ``max_image_pixels`` / ``max_image_bytes``: larger inputs are refused per row (decompression bombs).

Input: a DataFrame with a column ``image`` whose cells are file paths, raw bytes, base64 strings (a
``data:image/...;base64,`` prefix is accepted) or, in process, numpy HWC uint8 arrays and PIL images. The
in-memory :class:`ImageClassifier` (and the pyfunc's python model) also accept a list of those, one numpy
array (HWC, or NHWC for several images) or a Series.

Output: one row per input row with ``label`` (str, None on error), ``score`` (probability of ``label``),
``error`` (None, or one line saying why this row got no answer) and one column ``prob_<class name>`` per class,
in class order. ``score`` and the probabilities are pandas ``Float64`` (missing on error rows, so served JSON
has ``null`` there). A bad row never fails the request: the other rows are still answered. An empty request is
an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (HTTP 400 when served).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn

from transfer.errors import UserError

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGE_COLUMN = "image"
PROB_PREFIX = "prob_"
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000; PIL's own guard is 89M pixels (warning) and 179M (error)
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROMOTE_METRIC = "val_acc"
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
_PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
_MAX_PATH_LEN = 4096
_B64_PREFIX = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# --------------------------------------------------------------------------------------------------------------
# Decoding and preprocessing
# --------------------------------------------------------------------------------------------------------------


class ImageInputError(ValueError):
    """One input could not be turned into an image; the message is the row's ``error``."""


def _open_bytes(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    if len(data) == 0:
        raise ImageInputError("empty image data")
    if len(data) > max_bytes:
        raise ImageInputError(f"image data of {len(data)} bytes is larger than the limit of {max_bytes} bytes")
    return _decode(io.BytesIO(data), max_pixels)


def _decode(fp: Any, max_pixels: int) -> Image.Image:
    try:
        # Image.open reads only the header, so the size check below runs before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        # PIL refuses it at open (over twice its own MAX_IMAGE_PIXELS); say it in the same words as the check below.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "the image"
        raise ImageInputError(f"image too large: {size} is more than the limit of {max_pixels} pixels") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageInputError("not an image (unknown or corrupt image format)") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise ImageInputError(f"image too large: {w}x{h} pixels is more than the limit of {max_pixels} pixels")
    if w == 0 or h == 0:
        raise ImageInputError(f"image has no pixels ({w}x{h})")
    try:
        img.load()
    except Exception as exc:  # truncated JPEG/PNG, bad chunk, ... (PIL raises OSError, SyntaxError, ValueError)
        raise ImageInputError(f"corrupt or truncated image: {exc}") from exc
    # Photos from phones store their rotation in EXIF; the user expects the picture as it is shown.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return img


def _from_string(s: str, max_pixels: int, max_bytes: int, allow_paths: bool) -> Image.Image:
    text = s.strip()
    if not text:
        raise ImageInputError("empty string: expected a file path or base64 image data")
    if allow_paths and len(text) <= _MAX_PATH_LEN:
        path = Path(text).expanduser()
        with contextlib.suppress(OSError):  # a long base64 string can be an invalid file name
            if path.is_file():
                size = path.stat().st_size
                if size > max_bytes:
                    raise ImageInputError(f"file {text} of {size} bytes is larger than the limit of {max_bytes}")
                with path.open("rb") as fh:
                    return _decode(io.BytesIO(fh.read()), max_pixels)
            if path.is_dir():
                raise ImageInputError(f"{text} is a directory, not an image file")
    payload = _B64_PREFIX.sub("", text, count=1)
    payload = "".join(payload.split())  # base64.encodebytes wraps lines
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        if allow_paths and (os.sep in text or "." in text[-6:]):
            raise ImageInputError(f"file not found: {text[:200]}")
        raise ImageInputError("neither an existing file path nor base64 image data")
    return _open_bytes(data, max_pixels, max_bytes)


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageInputError(f"array of shape {a.shape} is not an HWC image (H, W), (H, W, 3) or (H, W, 4)")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageInputError(f"image too large: {a.shape[1]}x{a.shape[0]} pixels")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0  # float images in [0, 1] (skimage's convention)
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def load_image(
    source: Any,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    allow_paths: bool = True,
) -> Image.Image:
    """Decode one input into a PIL image, refusing anything that is not a reasonable image.

    Args:
        source: a file path (``str`` or ``Path``), raw bytes, a base64 string (optionally a ``data:`` URL), a
            numpy array (HW or HWC, uint8 or float in [0, 1]) or a PIL image.
        max_pixels: larger images are refused before their pixels are decoded (decompression bombs).
        max_bytes: larger encoded inputs are refused.
        allow_paths: whether strings may name local files.

    Raises:
        ImageInputError: with a one-line reason (not an image, truncated, too large, file not found, ...).
    """
    try:
        if isinstance(source, Image.Image):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _open_bytes(bytes(source), max_pixels, max_bytes)
        if isinstance(source, Path):
            return _from_string(str(source), max_pixels, max_bytes, allow_paths=True)
        if isinstance(source, str):
            return _from_string(source, max_pixels, max_bytes, allow_paths)
        if isinstance(source, np.ndarray):
            return _from_array(source, max_pixels)
        if source is None or (isinstance(source, float) and math.isnan(source)) or source is pd.NA:
            raise ImageInputError("missing image")
        raise ImageInputError(f"unsupported input type {type(source).__name__}: send a path, bytes or base64")
    except ImageInputError:
        raise
    except MemoryError as exc:
        raise ImageInputError("image too large to decode in memory") from exc
    except Exception as exc:  # whatever PIL or numpy raise on hostile input becomes this row's error
        raise ImageInputError(f"cannot read image: {type(exc).__name__}: {exc}") from exc


def _resize_size(data_config: dict[str, Any]) -> tuple[int, int] | int:
    """timm's eval rule: the resize target is ``input_size / crop_pct`` (an int means the shorter side)."""
    _, h, w = data_config["input_size"]
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if h == w:
        return math.floor(h / crop_pct)
    return (math.floor(h / crop_pct), math.floor(w / crop_pct))


def preprocess_image(img: Image.Image, data_config: dict[str, Any]) -> torch.Tensor:
    """Eval preprocessing of one image, as timm's eval transform: resize, centre crop, normalise.

    The shorter side is resized to ``floor(size / crop_pct)`` with the configured interpolation (for a
    non-square ``input_size``, the image keeps its aspect ratio and is scaled to just cover
    ``floor(H / crop_pct) x floor(W / crop_pct)``), the centre ``H x W`` is cropped, and the pixels are scaled to
    [0, 1] and normalised with ``mean`` and ``std``. This equals ``timm.data.create_transform(**data_config,
    is_training=False)`` (a test checks it).

    Args:
        img: a PIL image (any mode; converted to RGB, or to L when ``input_size[0] == 1``).
        data_config: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``.

    Returns:
        A float32 tensor of shape (C, H, W).
    """
    c, h, w = (int(v) for v in data_config["input_size"])
    img = img.convert("L" if c == 1 else "RGB")
    resample = _INTERPOLATION.get(str(data_config.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    size = _resize_size(data_config)
    iw, ih = img.size
    if isinstance(size, int):
        # torchvision.transforms.Resize(int): the shorter side becomes `size`, the longer one keeps the ratio.
        if iw <= ih:
            new_w, new_h = size, int(size * ih / iw)
        else:
            new_w, new_h = int(size * iw / ih), size
    else:
        # timm's ResizeKeepRatio: keep the aspect ratio, scale so that the image just covers the target.
        ratio = min(ih / size[0], iw / size[1])
        new_h, new_w = round(ih / ratio), round(iw / ratio)
    if (new_w, new_h) != (iw, ih):
        img = img.resize((max(new_w, 1), max(new_h, 1)), resample)
    # torchvision's center_crop: pad when the image is smaller than the crop, then crop around the centre.
    iw, ih = img.size
    if iw < w or ih < h:
        canvas = Image.new(img.mode, (max(iw, w), max(ih, h)))
        canvas.paste(img, ((max(iw, w) - iw) // 2, (max(ih, h) - ih) // 2))
        img, (iw, ih) = canvas, canvas.size
    top = round((ih - h) / 2.0)
    left = round((iw - w) / 2.0)
    img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)[:c].view(-1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32)[:c].view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def preprocess(images: Sequence[Any] | Any, data_config: dict[str, Any]) -> torch.Tensor:
    """Eval preprocessing of a batch (the same as the logged model applies before its forward pass).

    Args:
        images: PIL images, or anything :func:`load_image` reads (paths, bytes, base64, HWC arrays); a single
            image is a batch of one.
        data_config: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``.

    Returns:
        A float32 tensor of shape (N, C, H, W).

    Raises:
        ImageInputError: when an input is not an image.
    """
    if isinstance(images, (str, bytes, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    tensors = [preprocess_image(load_image(im), data_config) for im in images]
    if not tensors:
        c, h, w = data_config["input_size"]
        return torch.empty((0, c, h, w))
    return torch.stack(tensors)


def eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """A per-image transform (PIL image -> CHW tensor) equal to the logged model's preprocessing."""

    def transform(img: Image.Image) -> torch.Tensor:
        return preprocess_image(img, data_config)

    return transform


def normalize_data_config(data_config: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able copy of a data config with the five keys the model needs, validated."""
    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise UserError(f"data_config lacks {', '.join(missing)}: pass zoo.get_spec(backbone).data_config")
    size = [int(v) for v in data_config["input_size"]]
    if len(size) != 3 or min(size) < 1:
        raise UserError(f"data_config input_size must be (C, H, W), got {data_config['input_size']!r}")
    interp = str(data_config.get("interpolation") or "bilinear")
    if interp not in _INTERPOLATION:
        raise UserError(f"unknown interpolation {interp!r}: use one of {', '.join(_INTERPOLATION)}")
    return {
        "input_size": size,
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "interpolation": interp,
        "crop_pct": float(data_config.get("crop_pct") or 1.0),
    }


# --------------------------------------------------------------------------------------------------------------
# The classifier inside the logged model
# --------------------------------------------------------------------------------------------------------------


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


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


def _default_device() -> torch.device:
    wanted = os.environ.get("TRANSFER_SERVING_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _empty_request_error() -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(
        f"empty request: send at least one image in column {IMAGE_COLUMN!r} (a file path, bytes or a base64 string)",
        error_code=INVALID_PARAMETER_VALUE,
    )


def _as_items(model_input: Any) -> list[Any]:
    """The list of image inputs in any of the accepted request shapes."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            col = model_input[IMAGE_COLUMN]
        elif len(model_input.columns) == 1:
            col = model_input.iloc[:, 0]
        else:
            raise MlflowException(
                f"no column {IMAGE_COLUMN!r} in the request (columns: {list(model_input.columns)[:10]})",
                error_code=INVALID_PARAMETER_VALUE,
            )
        items = col.tolist()
        # MLflow turns a dict request {"image": [a, b]} into one row holding the list: unpack it.
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            return list(items[0])
        return items
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise MlflowException(f"no key {IMAGE_COLUMN!r} in the request", error_code=INVALID_PARAMETER_VALUE)
        value = model_input[IMAGE_COLUMN]
        return _as_items(value) if not isinstance(value, (str, bytes)) else [value]
    if isinstance(model_input, np.ndarray):
        if model_input.dtype == object:
            return list(model_input.ravel())
        if model_input.ndim == 4:
            return list(model_input)
        return [model_input]
    if isinstance(model_input, (str, bytes, bytearray, Path, Image.Image)):
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise MlflowException(
        f"unsupported request type {type(model_input).__name__}: send a DataFrame with a column {IMAGE_COLUMN!r}",
        error_code=INVALID_PARAMETER_VALUE,
    )


class ImageClassifier:
    """A classifier with its preprocessing and class names: what the logged pyfunc runs.

    Args:
        model: the network (a zoo backbone or a :class:`StageClassifier`); put in eval mode here.
        config: the model config (see the module docstring).
        device: where the forward pass runs (default: ``$TRANSFER_SERVING_DEVICE``, else CUDA when available).
        channels_last: run in channels-last memory (default: on CPU, when a check batch agrees; set
            ``TRANSFER_SERVING_CHANNELS_LAST=0`` to turn it off). The model is moved and converted in place.
    """

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any],
        device: torch.device | str | None = None,
        channels_last: bool | None = None,
    ):
        self.config = config
        self.class_names: list[str] = [str(c) for c in config["class_names"]]
        self.data_config: dict[str, Any] = config["data_config"]
        self.batch_size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.max_pixels = int(config.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)
        self.max_bytes = int(config.get("max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES)
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.prob_columns = [f"{PROB_PREFIX}{c}" for c in self.class_names]
        self.channels_last = False
        if channels_last is None:
            channels_last = self.device.type == "cpu" and os.environ.get("TRANSFER_SERVING_CHANNELS_LAST", "1") != "0"
        if channels_last:
            self.channels_last = self._try_channels_last()

    def _try_channels_last(self) -> bool:
        """Switch the model to channels-last memory if it runs and agrees with the default layout.

        oneDNN's CPU convolutions are markedly faster in NHWC (about 1.5-2x for MobileNetV2), but an architecture
        may ``view`` activations in a way that needs contiguous NCHW, so one batch checks it at load time.
        """
        c, h, w = (int(v) for v in self.data_config["input_size"])
        x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        try:
            with torch.inference_mode():
                want = self.model(x)
                self.model.to(memory_format=torch.channels_last)
                got = self.model(x.contiguous(memory_format=torch.channels_last))
            if torch.allclose(got, want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=1e-4):
                return True
            _log.debug("channels-last output differs: keeping NCHW")
        except Exception:  # an op that needs contiguous NCHW: keep the default layout
            _log.debug("channels-last forward failed: keeping NCHW", exc_info=True)
        self.model.to(memory_format=torch.contiguous_format)
        return False

    @classmethod
    def from_files(
        cls, config_path: str | Path, weights_path: str | Path, device: torch.device | str | None = None
    ) -> ImageClassifier:
        """Rebuild the classifier from the two artifacts of a logged model."""
        from safetensors.torch import load_model

        config = json.loads(Path(config_path).read_text())
        version = int(config.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"model config format {version} is newer than this transfer ({FORMAT_VERSION}): upgrade")
        model = build_model(config)
        load_model(model, str(weights_path), strict=True, device="cpu")
        return cls(model, config, device=device)

    def _load(self, item: Any) -> torch.Tensor:
        img = load_image(item, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        return preprocess_image(img, self.data_config)

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes) of a preprocessed batch."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def predict(self, model_input: Any, batch_size: int | None = None) -> pd.DataFrame:
        """Classify images; one output row per input row, bad rows with an ``error`` and no label.

        Args:
            model_input: a DataFrame with a column ``image`` (paths, bytes, base64 strings), a list of those,
                a Series, an HWC (or NHWC) uint8 array, or a PIL image.
            batch_size: images per forward pass (default: the model's ``batch_size``, 64).

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` when the request holds no image at all.
        """
        items = _as_items(model_input)
        if not items:
            raise _empty_request_error()
        bs = max(1, int(batch_size or self.batch_size))
        n, k = len(items), len(self.class_names)
        probs = np.full((n, k), np.nan, dtype=np.float64)
        errors: list[str | None] = [None] * n
        for start in range(0, n, bs):
            tensors, rows = [], []
            for i in range(start, min(start + bs, n)):
                try:
                    tensors.append(self._load(items[i]))
                    rows.append(i)
                except ImageInputError as exc:
                    errors[i] = str(exc).splitlines()[0][:300] if str(exc) else "cannot read image"
            if tensors:
                probs[rows] = self.predict_proba(torch.stack(tensors)).numpy()
        return self._frame(probs, errors)

    def _frame(self, probs: np.ndarray, errors: list[str | None]) -> pd.DataFrame:
        ok = np.array([e is None for e in errors])
        best = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
        labels = [self.class_names[b] if good else None for b, good in zip(best, ok)]
        score = np.where(ok, probs[np.arange(len(errors)), best], np.nan)
        # Float64 (nullable) so an error row serves as JSON null, not NaN; object columns keep None as None.
        data: dict[str, Any] = {
            "label": pd.Series(labels, dtype=object),
            "score": pd.array(np.where(ok, score, np.nan), dtype="Float64"),
            "error": pd.Series(errors, dtype=object),
        }
        for j, col in enumerate(self.prob_columns):
            data[col] = pd.array(probs[:, j], dtype="Float64")
        frame = pd.DataFrame(data)
        for col in ("score", *self.prob_columns):
            frame.loc[~ok, col] = pd.NA
        return frame


# --------------------------------------------------------------------------------------------------------------
# Logging and registering
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ModelLogResult:
    """What :func:`log_classifier` logged.

    Attributes:
        model_uri: ``runs:/<run_id>/<artifact_path>``.
        registered_uri: ``models:/<name>/<version>`` when registered, else None.
        version: the registered version, else None.
        promoted: whether the alias now points at this version.
    """

    model_uri: str
    registered_uri: str | None = None
    version: int | None = None
    promoted: bool = False


def _signature(class_names: Sequence[str], batch_size: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", IMAGE_COLUMN)])
    outputs = Schema(
        [
            ColSpec("string", "label", required=False),
            ColSpec("double", "score", required=False),
            ColSpec("string", "error", required=False),
            *(ColSpec("double", f"{PROB_PREFIX}{c}", required=False) for c in class_names),
        ]
    )
    params = ParamSchema([ParamSpec("batch_size", "long", batch_size)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _example_image_b64(data_config: dict[str, Any]) -> str:
    """A small PNG (a grey gradient) as base64: the logged input example."""
    _, h, w = data_config["input_size"]
    h, w = max(8, min(int(h), 64)), max(8, min(int(w), 64))
    ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, axis=0)
    buf = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp.T[:h, :w] if h == w else ramp, ramp], axis=-1)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _requirements() -> list[str]:
    from importlib import metadata

    def pin(dist: str) -> str:
        try:
            version = metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            return dist
        return f"{dist}=={version}"

    # Explicit pins: inferring requirements would import the model in a subprocess (slow). The model's code
    # needs the transfer-workbench package (zoo + transfer.serving) installed where it is loaded.
    return [pin(d) for d in ("mlflow", "torch", "safetensors", "pillow", "numpy", "pandas", "transfer-workbench")]


def _model_config(
    model: nn.Module, backbone: str, class_names: list[str], data_config: dict[str, Any], model_kwargs: dict | None
) -> dict[str, Any]:
    import zoo

    if len(set(class_names)) != len(class_names):
        raise UserError(f"class names must be unique, got {class_names}")
    if not class_names:
        raise UserError("class_names is empty: a classifier needs at least one class")
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backbone": zoo.get_spec(backbone).name,
        "class_names": [str(c) for c in class_names],
        "num_classes": len(class_names),
        "data_config": normalize_data_config(data_config),
        "num_stages": None,
        "in_features": None,
        "model_kwargs": dict(model_kwargs or {}),
        "batch_size": DEFAULT_BATCH_SIZE,
        "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS,
        "max_image_bytes": DEFAULT_MAX_IMAGE_BYTES,
        "torch_version": torch.__version__,
    }
    if isinstance(model, StageClassifier):
        config["num_stages"] = model.num_stages
        config["in_features"] = model.in_features
    return config


def _metric_of_version(client: Any, version: Any, key: str) -> float | None:
    value = (version.tags or {}).get(key)
    if value is not None:
        with contextlib.suppress(ValueError):
            return float(value)
    if version.run_id:
        with contextlib.suppress(Exception):
            metric = client.get_run(version.run_id).data.metrics.get(key)
            if metric is not None:
                return float(metric)
    return None


def log_classifier(
    model: nn.Module,
    *,
    backbone: str,
    class_names: list[str],
    data_config: dict,
    artifact_path: str = "model",
    registered_model_name: str | None = None,
    alias: str | None = "champion",
    promote: str = "always",
    metrics: dict[str, float] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ModelLogResult:
    """Log a trained classifier as a raw-image MLflow pyfunc in the active run, and optionally register it.

    Args:
        model: a zoo backbone with its classifier for ``len(class_names)`` classes, or a :class:`StageClassifier`.
        backbone: the zoo name the model was built from.
        class_names: class names in logit order.
        data_config: eval preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``).
        artifact_path: name of the logged model in the run.
        registered_model_name: register a new version of this registered model when given.
        alias: alias to point at the new version (``None``: none).
        promote: ``"always"`` moves the alias to the new version; ``"if_better"`` only when its ``val_acc`` beats
            the version the alias points at now (or no version has the alias yet).
        metrics: metrics to tag the version with (default: the active run's latest metrics).
        model_kwargs: extra keyword arguments the backbone was created with (``zoo.create_model``).

    Returns:
        The logged model's URI, and the registered version and whether the alias moved to it.

    Raises:
        UserError: no active run, or bad arguments.
    """
    import mlflow
    from safetensors.torch import save_model

    if promote not in ("always", "if_better"):
        raise UserError(f"promote must be 'always' or 'if_better', got {promote!r}")
    run = mlflow.active_run()
    if run is None:
        raise UserError("log_classifier needs an active MLflow run: call it inside `with mlflow.start_run():`")
    config = _model_config(model, backbone, class_names, data_config, model_kwargs)
    out_features = _out_features(model)
    if out_features is not None and out_features != len(class_names):
        raise UserError(f"the model has {out_features} outputs but {len(class_names)} class names were given")
    run_id = run.info.run_id
    if metrics is None:
        metrics = dict(mlflow.get_run(run_id).data.metrics)

    with tempfile.TemporaryDirectory(prefix="transfer-model-") as tmp:
        weights = Path(tmp, "model.safetensors")
        cfg = Path(tmp, "config.json")
        was_training = model.training
        model.eval()
        # Copy to CPU so the logged weights do not depend on where training ran.
        save_model(_cpu_copy(model), str(weights))
        model.train(was_training)
        cfg.write_text(json.dumps(config, indent=1))
        info = mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=str(_PYFUNC_MODEL_FILE),
            artifacts={"weights": str(weights), "config": str(cfg)},
            signature=_signature(config["class_names"], config["batch_size"]),
            input_example=pd.DataFrame({IMAGE_COLUMN: [_example_image_b64(config["data_config"])]}),
            pip_requirements=_requirements(),
            metadata={"backbone": config["backbone"], "num_classes": len(class_names)},
        )
    model_uri = f"runs:/{run_id}/{artifact_path}"
    _log.info("logged model %s (%s)", model_uri, info.model_uri)
    result = ModelLogResult(model_uri=model_uri)
    if not registered_model_name:
        return result

    # The logged model's own URI (models:/m-...): MLflow 3 keeps logged models outside the run's artifacts.
    version, promoted = _register(
        info.model_uri,
        registered_model_name,
        alias=alias,
        promote=promote,
        metrics=metrics or {},
        tags={"backbone": config["backbone"], "num_classes": str(len(class_names))},
    )
    result.version, result.promoted = version, promoted
    result.registered_uri = f"models:/{registered_model_name}/{version}"
    return result


def _register(
    model_uri: str, name: str, *, alias: str | None, promote: str, metrics: dict[str, float], tags: dict[str, str]
) -> tuple[int, bool]:
    """Register ``model_uri`` as a new version of ``name`` tagged with its metrics; move ``alias`` per ``promote``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name, tags={**{k: str(v) for k, v in metrics.items()}, **tags})
    promoted = False
    if alias:
        promoted = _should_promote(client, name, alias, promote, metrics)
        if promoted:
            client.set_registered_model_alias(name, alias, mv.version)
            _log.info("alias %s@%s -> version %s", name, alias, mv.version)
    return int(mv.version), promoted


def register_version(
    model_uri: str,
    name: str,
    *,
    alias: str | None = "champion",
    promote: str = "always",
    tracking_uri: str | None = None,
) -> int:
    """Register an already logged model (``runs:/RUN/model`` or ``models:/m-...``) as a new version of ``name``.

    The version is tagged with the run's metrics and backbone, like :func:`log_classifier` does. Returns the version.

    Raises:
        UserError: the model URI or the registry cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    with _tracking(tracking_uri):
        try:
            run_id = model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
            run = mlflow.get_run(run_id) if run_id else None
            metrics = dict(run.data.metrics) if run else {}
            tags = {"backbone": run.data.params["backbone"]} if run and "backbone" in run.data.params else {}
            version, _ = _register(model_uri, name, alias=alias, promote=promote, metrics=metrics, tags=tags)
        except MlflowException as exc:
            raise UserError(f"could not register {model_uri} as {name!r}: {_one_line(exc)}") from exc
    return version


def _cpu_copy(model: nn.Module) -> nn.Module:
    first = next(model.parameters(), None)
    if first is None or first.device.type == "cpu":
        return model
    import copy

    return copy.deepcopy(model).cpu()


def _out_features(model: nn.Module) -> int | None:
    head = getattr(model, "classifier", None) if isinstance(model, StageClassifier) else None
    if head is None and hasattr(model, "get_classifier"):
        with contextlib.suppress(Exception):
            head = model.get_classifier()
    return int(head.out_features) if isinstance(head, nn.Linear) else None


def _should_promote(client: Any, name: str, alias: str, promote: str, metrics: dict[str, float]) -> bool:
    if promote == "always":
        return True
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        _log.info("no version of %s has alias %s yet: promoting", name, alias)
        return True
    new = metrics.get(PROMOTE_METRIC)
    old = _metric_of_version(client, current, PROMOTE_METRIC)
    if new is None:
        _log.warning(
            "not promoting: the new version has no %s to compare with version %s", PROMOTE_METRIC, current.version
        )
        return False
    if old is None:
        _log.info("version %s (%s@%s) has no %s: promoting", current.version, name, alias, PROMOTE_METRIC)
        return True
    better = float(new) > old
    _log.info(
        "%s %.4f vs %.4f of version %s: %s",
        PROMOTE_METRIC,
        float(new),
        old,
        current.version,
        "promoting" if better else "keeping the current " + alias,
    )
    return better


# --------------------------------------------------------------------------------------------------------------
# Consuming: predict_paths and export_model
# --------------------------------------------------------------------------------------------------------------


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextlib.contextmanager
def _tracking(tracking_uri: str | None) -> Iterator[str]:
    """Point MLflow at the tracking/registry URI for the block; fail fast when it cannot be reached."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise UserError(
                f"no MLflow tracking database at {db.resolve()}: pass --tracking-uri (or set MLFLOW_TRACKING_URI) "
                "to the one your runs were logged to"
            )
    old_tracking, old_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    # An unreachable server should fail in seconds, not after MLflow's default 7 retries with backoff.
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(old_tracking)
        mlflow.set_registry_uri(old_registry)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:300]


_URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a local model directory"


def _is_local(model_uri: str) -> bool:
    return "://" not in model_uri and not model_uri.startswith(("models:/", "runs:/"))


def _load_pyfunc(model_uri: str, tracking_uri: str | None) -> Any:
    """Load a logged model, turning every failure into a one-line UserError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if _is_local(model_uri):
        path = Path(model_uri).expanduser()
        if not path.exists():
            raise UserError(f"model {model_uri!r} not found: expected {_URI_FORMS}")
        if not (path / "MLmodel").is_file():
            raise UserError(f"{model_uri} is not an MLflow model directory (no MLmodel file in it)")
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        if not re.match(r"^(models:/[^/@]+(@[^/]+|/[^/]+)?|runs:/[^/]+/.+|[a-z][\w+.-]*://.+)$", model_uri):
            raise UserError(f"cannot parse model URI {model_uri!r}: expected {_URI_FORMS}")
        ctx = _tracking(tracking_uri)
    with ctx:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return mlflow.pyfunc.load_model(model_uri)
        except UserError:
            raise
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise UserError(
                    f"model {model_uri} not found in {resolve_tracking_uri(tracking_uri)}: {_one_line(exc)}"
                ) from exc
            raise UserError(f"cannot load model {model_uri}: {_one_line(exc)}") from exc
        except Exception as exc:
            where = "" if _is_local(model_uri) else f" from {resolve_tracking_uri(tracking_uri)}"
            raise UserError(f"cannot load model {model_uri}{where}: {type(exc).__name__}: {_one_line(exc)}") from exc


def _classifier_of(pyfunc_model: Any) -> ImageClassifier:
    try:
        python_model = pyfunc_model.unwrap_python_model()
    except Exception as exc:
        raise UserError(f"not a transfer image classifier (no python model): {_one_line(exc)}") from exc
    classifier = getattr(python_model, "classifier", None)
    if not isinstance(classifier, ImageClassifier):
        raise UserError("not a transfer image classifier: log it with transfer.serving.log_classifier")
    return classifier


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given and the image files under each folder (recursive, sorted).

    Raises:
        UserError: a path that does not exist, or a folder with no image file.
    """
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"image not found: {p} (pass image files or folders of images)")
    if not out:
        raise UserError("no images given: pass image files or folders")
    return out


def predict_paths(model_uri: str, paths: Sequence[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """Classify image files (folders are expanded, recursively and sorted) with a logged or registered model.

    Args:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model`` or a local MLflow
            model directory.
        paths: image files or folders.
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).

    Returns:
        One row per image: ``path``, ``label``, ``score``, ``error`` and ``prob_<class>`` per class.

    Raises:
        UserError: unknown model URI, unreachable registry, missing images.
    """
    files = expand_image_paths(paths)
    model = _load_pyfunc(model_uri, tracking_uri)
    frame = model.predict(pd.DataFrame({IMAGE_COLUMN: [str(f) for f in files]}))
    frame.insert(0, "path", [str(f) for f in files])
    return frame


def _default_output(model_uri: str, fmt: str) -> Path:
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    local = _is_local(model_uri)
    stem = Path(model_uri).expanduser().resolve().name if local else re.sub(r"^[a-z]+:/+", "", model_uri)
    stem = re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "model"
    return Path.cwd() / f"{stem}{suffix}"


def _export_onnx(model: nn.Module, example: torch.Tensor, dest: Path, metadata: dict[str, str]) -> str:
    """Write ``model`` as ONNX with a dynamic batch axis; returns which exporter did it."""
    try:
        import onnx
    except ImportError as exc:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from exc
    errors = []
    exported = False
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,
            )
        program.save(str(dest))
        exported = True
    except Exception as exc:  # unsupported op in the new exporter: try the TorchScript-based one
        errors.append(f"torch.export-based exporter: {_one_line(exc)}")
        _log.debug("dynamo ONNX export failed, trying the TorchScript-based exporter", exc_info=True)
    if not exported:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(dest),
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=17,
                )
        except Exception as exc:
            errors.append(f"TorchScript-based exporter: {_one_line(exc)}")
            raise UserError(f"ONNX export failed ({'; '.join(errors)}); try --format torchscript") from exc
    proto = onnx.load(str(dest))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dest))
    return "torch.export-based" if exported else "TorchScript-based"


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export_model(model_uri: str, fmt: str, output: str | None, tracking_uri: str | None = None) -> Path:
    """Export the network of a logged classifier to ONNX or TorchScript (logits out, preprocessed input in).

    The exported model takes a float32 batch (N, C, H, W), already preprocessed as :func:`preprocess` does, with
    a dynamic batch axis, and returns logits in class order. The class names and the data config are stored in
    the file (ONNX ``metadata_props``; TorchScript extra file ``config.json``). The export is checked against
    the PyTorch model on a batch of 3 before it is written in place.

    Args:
        model_uri: as :func:`predict_paths`.
        fmt: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (default: named after the model URI in the working directory).
        tracking_uri: as :func:`predict_paths`.

    Returns:
        The written file.

    Raises:
        UserError: unknown format or model, a failing export, or an export whose logits differ.
    """
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"unknown export format {fmt!r}: use onnx or torchscript")
    classifier = _classifier_of(_load_pyfunc(model_uri, tracking_uri))
    # Exported graphs take plain NCHW tensors; the serving-time channels-last layout is undone.
    model = classifier.model.cpu().eval().to(memory_format=torch.contiguous_format)
    dest = Path(output).expanduser() if output else _default_output(model_uri, fmt)
    if dest.is_dir():
        example_name = dest / ("model.onnx" if fmt == "onnx" else "model.pt")
        raise UserError(f"output {dest} is a folder: pass a file name, e.g. {example_name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = classifier.data_config["input_size"]
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, h, w, generator=gen)
    check = torch.randn(3, c, h, w, generator=gen)
    metadata = {
        "class_names": json.dumps(classifier.class_names),
        "data_config": json.dumps(classifier.data_config),
        "backbone": str(classifier.config.get("backbone")),
        "source_model_uri": model_uri,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = model(check).numpy()
            if fmt == "onnx":
                how = _export_onnx(model, example, tmp, metadata) + " ONNX exporter"
                got = _onnx_logits(tmp, check)
            else:
                how = "torch.jit.trace"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(model, example, check_trace=False)
                    torch.jit.save(traced, str(tmp), _extra_files={"config.json": json.dumps(metadata)})
                    got = torch.jit.load(str(tmp)).eval()(check).numpy()
        diff = float(np.abs(got - expected).max())
        tol = 1e-3 * max(1.0, float(np.abs(expected).max()))
        if not diff <= tol:
            raise UserError(f"the {fmt} export differs from the PyTorch model by {diff:.2e} (tolerance {tol:.1e})")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _log.info("exported %s to %s with the %s (max |logit diff| %.1e)", model_uri, dest, how, diff)
    return dest.resolve()


__all__ = [
    "DEFAULT_TRACKING_URI",
    "IMAGE_COLUMN",
    "PROB_PREFIX",
    "ImageClassifier",
    "ImageInputError",
    "ModelLogResult",
    "StageClassifier",
    "build_model",
    "eval_transform",
    "expand_image_paths",
    "export_model",
    "load_image",
    "log_classifier",
    "predict_paths",
    "preprocess",
    "preprocess_image",
    "resolve_tracking_uri",
]
