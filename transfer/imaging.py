"""The one place that turns image bytes into pixels, and pixels into a model's input tensor.

Training (its eval transform, cached features and the augmentations' starting image), the served model,
``transfer predict`` and the web page all decode through :func:`decode` and preprocess through
:func:`preprocess_image`, so a model is served exactly the picture it was trained on.

Decoding, in order:

1. The limits (:class:`ImageLimits`) are checked before any pixel is allocated: the encoded size, then, from the
   header alone, the pixel count, the longest side and the aspect ratio. A 1 x 1,000,000 PNG of 2 KiB is refused
   here rather than scaled up to gigabytes later.
2. The first frame of an animation; JPEGs are decoded at the smallest power-of-two reduction that still covers
   ``draft`` pixels (libjpeg's DCT scaling: fast on phone photos, and identical wherever the same ``draft`` is
   asked for; :func:`draft_size` gives the one every caller uses for a model).
3. EXIF orientation applied (the picture as a phone shows it).
4. Modes made RGB with one rule each: transparency (RGBA, LA, PA, palette with a transparent colour) is
   composited on :data:`BACKGROUND` (white, as a page shows a transparent image); 16-bit and 32-bit integer
   greyscale is scaled by its full 16-bit range (``v / 257``), float greyscale by [0, 1] (else clipped to 0..255);
   CMYK, YCbCr, palette and the rest through Pillow's conversion.

Preprocessing (:func:`preprocess_image`) is timm's eval transform for the three ``crop_mode`` values of a data
config (``center``: shorter side to ``size / crop_pct`` then centre crop; ``squash``: both sides to
``size / crop_pct`` then centre crop; ``border``: longer side to ``size / crop_pct``, padded with the mean colour),
then scaling to [0, 1] and normalising; a test checks it equals ``timm.data.create_transform`` on real files.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_B64_PREFIX = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_MAX_B64_CHARS_PER_BYTE = 4 / 3


class ImageInputError(ValueError):
    """One input could not be turned into an image; the message is one line saying why."""


@dataclass(frozen=True)
class ImageLimits:
    """What an input may cost before it is decoded: every decoder call checks these from the header.

    Attributes:
        max_bytes: the encoded size (a file, bytes, or base64 once decoded).
        max_pixels: width x height.
        max_side: the longer side.
        max_aspect: longer side / shorter side (a 1 x 150,000 strip is not a photo: scaled to a model's input it
            would need gigabytes).
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_side: int = 16_384
    max_aspect: float = 20.0

    def check_size(self, width: int, height: int) -> None:
        """Raise :class:`ImageInputError` when a ``width`` x ``height`` image is over a limit (or empty)."""
        if width < 1 or height < 1:
            raise ImageInputError(f"image has no pixels ({width}x{height})")
        if width * height > self.max_pixels:
            raise ImageInputError(
                f"image too large: {width}x{height} ({width * height} pixels) is over the limit of {self.max_pixels} "
                "pixels"
            )
        if max(width, height) > self.max_side:
            raise ImageInputError(f"image too large: {width}x{height} has a side over {self.max_side} pixels")
        if max(width, height) / min(width, height) > self.max_aspect:
            raise ImageInputError(
                f"image too elongated: {width}x{height} is over the aspect ratio limit of {self.max_aspect:g}:1"
            )

    def check_bytes(self, n: int) -> None:
        """Raise :class:`ImageInputError` when ``n`` encoded bytes are over the limit (or zero)."""
        if n == 0:
            raise ImageInputError("empty image data")
        if n > self.max_bytes:
            raise ImageInputError(f"image data is over the limit of {self.max_bytes} bytes")


DEFAULT_LIMITS = ImageLimits()


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    limits.check_bytes(len(data))
    try:
        with warnings.catch_warnings():
            # Our own limits are checked below, from the header; Pillow's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow refuses it at open (over twice its own limit); say it in the words of the check below.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "the image"
        raise ImageInputError(f"image too large: {size} is over the limit of {limits.max_pixels} pixels") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageInputError("not an image (unknown or corrupt image format)") from exc
    limits.check_size(*img.size)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """One RGB picture from any mode (see the module docstring for the rules)."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    elif mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255.0 if a.size and a.max() <= 1.0 and a.min() >= 0.0 else a
        img = Image.fromarray(np.round(np.clip(a, 0, 255)).astype(np.uint8), mode="L")
    elif (mode == "P" and "transparency" in img.info) or mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        bg = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")


def decode(data: bytes, *, limits: ImageLimits = DEFAULT_LIMITS, draft: int | None = None) -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image (EXIF orientation applied).

    Args:
        data: the encoded file (PNG, JPEG, GIF, WebP, TIFF, BMP, PNM).
        limits: checked before decoding.
        draft: a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides still cover this many pixels.

    Raises:
        ImageInputError: one line saying why (not an image, truncated, over a limit, out of memory).
    """
    try:
        img = _open(bytes(data), limits)
        if draft and img.format == "JPEG":
            img.draft("RGB", (int(draft), int(draft)))
        try:
            img.load()
        except Exception as exc:  # truncated JPEG/PNG, bad chunk...: Pillow raises OSError, SyntaxError, ValueError
            raise ImageInputError(f"corrupt or truncated image ({type(exc).__name__})") from exc
        ImageOps.exif_transpose(img, in_place=True)  # in place: otherwise it copies every upright photo (0.8 ms)
        return to_rgb(img)
    except ImageInputError:
        raise
    except MemoryError as exc:
        raise ImageInputError("image too large to decode in memory") from exc
    except Exception as exc:  # whatever Pillow raises on hostile input becomes one line
        raise ImageInputError(f"cannot decode image ({type(exc).__name__})") from exc


def read_file(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of an image file, its size checked before it is read.

    Raises:
        ImageInputError: not a readable regular file, or over ``limits.max_bytes``.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImageInputError(f"{p.name}: not a regular file")
        limits.check_bytes(size)
        return p.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"{p.name}: cannot read ({type(exc).__name__})") from exc


def load_file(path: str | Path, *, limits: ImageLimits = DEFAULT_LIMITS, draft: int | None = None) -> Image.Image:
    """Read and :func:`decode` an image file."""
    return decode(read_file(path, limits), limits=limits, draft=draft)


def probe_file(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> str | None:
    """Why ``path`` is not a usable image, or None when it is (a data scan: header, limits, integrity).

    Cheaper than a decode: PNG and friends are verified chunk by chunk, JPEGs decoded at 1/8 scale (which finds
    truncated files).
    """
    try:
        img = _open(read_file(path, limits), limits)
        if img.format == "JPEG":
            img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
        else:
            img.verify()
    except ImageInputError as exc:
        return str(exc)
    except MemoryError:
        return "image too large to decode in memory"
    except Exception as exc:  # Pillow raises many types for "not an image"
        return f"not a readable image ({type(exc).__name__})"
    return None


def read_header(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int, str, str]:
    """``(width, height, mode, format)`` from an image's header alone (no pixel is decoded; the limits apply).

    Raises:
        ImageInputError: not an image, or over a limit.
    """
    img = _open(data, limits)
    return img.size[0], img.size[1], img.mode, (img.format or "").lower()


def format_of(data: bytes) -> str | None:
    """The image format a header names (``png``, ``jpeg``, ...), or None when the bytes are not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            fmt = Image.open(io.BytesIO(data)).format
    except Exception:  # not an image (or a bomb): the caller names it by extension
        return None
    return fmt.lower() if fmt else None


def decode_base64(text: str, *, limits: ImageLimits = DEFAULT_LIMITS, draft: int | None = None) -> Image.Image:
    """Decode a base64 string (optionally a ``data:image/...;base64,`` URL) into an RGB image.

    Raises:
        ImageInputError: not base64, or the decoded bytes are not an acceptable image.
    """
    payload = "".join(_B64_PREFIX.sub("", text.strip(), count=1).split())  # base64.encodebytes wraps lines
    if not payload:
        raise ImageInputError("empty string: expected base64 image data")
    if len(payload) > limits.max_bytes * _MAX_B64_CHARS_PER_BYTE + 4:
        raise ImageInputError(f"image data is over the limit of {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError("not base64 image data") from exc
    return decode(data, limits=limits, draft=draft)


def from_array(a: np.ndarray, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """An in-memory HW / HWC array (uint8, or float in [0, 1]) as an RGB image, under the same limits."""
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageInputError(f"array of shape {a.shape} is not an HWC image (H, W), (H, W, 3) or (H, W, 4)")
    limits.check_size(a.shape[1], a.shape[0])
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0  # float images in [0, 1] (scikit-image's convention)
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(np.ascontiguousarray(a)))


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def draft_size(data_config: dict[str, Any]) -> int:
    """The JPEG draft size every caller uses for a model: twice its longer input side (room for augmentation)."""
    return 2 * max(int(v) for v in data_config["input_size"][1:])


def _scale_size(data_config: dict[str, Any]) -> tuple[int, int]:
    _, h, w = (int(v) for v in data_config["input_size"])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return math.floor(h / crop_pct), math.floor(w / crop_pct)


def _resize(img: Image.Image, data_config: dict[str, Any], resample: Image.Resampling) -> Image.Image:
    """timm's eval resize for the config's ``crop_mode`` (before the centre crop)."""
    sh, sw = _scale_size(data_config)
    iw, ih = img.size
    mode = str(data_config.get("crop_mode") or "center")
    if mode == "squash":
        size = (sw, sh)
    elif mode == "border":  # timm's ResizeKeepRatio(longest=1): the image fits inside the target
        ratio = max(ih / sh, iw / sw)
        size = (round(iw / ratio), round(ih / ratio))
    elif sh == sw:  # torchvision's Resize(int): the shorter side becomes the size
        size = (sh, int(sh * ih / iw)) if iw <= ih else (int(sh * iw / ih), sh)
    else:  # timm's ResizeKeepRatio(longest=0): the image just covers the target
        ratio = min(ih / sh, iw / sw)
        size = (round(iw / ratio), round(ih / ratio))
    size = (max(size[0], 1), max(size[1], 1))
    return img if size == (iw, ih) else img.resize(size, resample)


def _center_crop(img: Image.Image, h: int, w: int, fill: tuple[int, ...]) -> Image.Image:
    """torchvision's center_crop: pad (with ``fill``) when smaller than the crop, then crop around the centre."""
    iw, ih = img.size
    if iw < w or ih < h:
        canvas = Image.new(img.mode, (max(iw, w), max(ih, h)), fill if img.mode != "L" else fill[0])
        canvas.paste(img, ((max(iw, w) - iw) // 2, (max(ih, h) - ih) // 2))
        img, (iw, ih) = canvas, canvas.size
    top, left = round((ih - h) / 2.0), round((iw - w) / 2.0)
    return img.crop((left, top, left + w, top + h))


def preprocess_image(img: Image.Image, data_config: dict[str, Any]) -> torch.Tensor:
    """A decoded image as the model's input: timm's eval resize and crop, scaled to [0, 1], normalised.

    Args:
        img: a PIL image (converted to RGB, or to L when ``input_size[0] == 1``).
        data_config: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct`` and
            ``crop_mode`` (``center`` when absent).

    Returns:
        A float32 tensor of shape (C, H, W).
    """
    c, h, w = (int(v) for v in data_config["input_size"])
    mode = "L" if c == 1 else "RGB"
    img = img if img.mode == mode else img.convert(mode)  # convert() to the same mode is a copy of the full picture
    resample = INTERPOLATIONS.get(str(data_config.get("interpolation") or "bilinear"), Image.Resampling.BILINEAR)
    img = _resize(img, data_config, resample)
    mean = [float(v) for v in data_config["mean"]][:c]
    # timm pads 'border' with the mean colour; the plain centre crop pads with black (torchvision's default).
    fill = tuple(round(255 * v) for v in mean) if data_config.get("crop_mode") == "border" else (0,) * max(3, c)
    img = _center_crop(img, h, w, fill)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    std = [float(v) for v in data_config["std"]][:c]
    # numpy, not torch: each torch op on one image wakes torch's intra-op thread pool, which cost a served model
    # half its time on 2 busy cores (12 ms an op); the same float32 operations in the same order, the same bits,
    # in place on the channels-first copy (transposed while still uint8: a quarter of the bytes to move).
    x = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return torch.from_numpy(x)


def preprocess(images: Sequence[Image.Image] | Image.Image, data_config: dict[str, Any]) -> torch.Tensor:
    """:func:`preprocess_image` over decoded images, stacked to (N, C, H, W)."""
    if isinstance(images, Image.Image):
        images = [images]
    tensors = [preprocess_image(im, data_config) for im in images]
    if not tensors:
        c, h, w = (int(v) for v in data_config["input_size"])
        return torch.empty((0, c, h, w))
    return torch.stack(tensors)


class EvalTransform:
    """The served model's preprocessing as a per-image transform (PIL image -> CHW tensor); picklable."""

    def __init__(self, data_config: dict[str, Any]) -> None:
        self.data_config = dict(data_config)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return preprocess_image(img, self.data_config)

    def set_size(self, side: int) -> None:
        """Produce ``side`` x ``side`` tensors from now on (progressive resizing of an unaugmented training set)."""
        self.data_config["input_size"] = (self.data_config["input_size"][0], side, side)

    def __repr__(self) -> str:
        return f"EvalTransform({self.data_config})"


def eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """A per-image transform (PIL image -> CHW tensor) equal to the served model's preprocessing."""
    return EvalTransform(data_config)


def normalize_data_config(data_config: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able copy of a data config with the keys preprocessing reads, validated.

    Raises:
        ValueError: a key is missing or has an impossible value.
    """
    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(f"data_config lacks {', '.join(missing)}: pass zoo.get_spec(backbone).data_config")
    size = [int(v) for v in data_config["input_size"]]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"data_config input_size must be (C, H, W), got {data_config['input_size']!r}")
    interp = str(data_config.get("interpolation") or "bilinear")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interp!r}: use one of {', '.join(INTERPOLATIONS)}")
    crop_mode = str(data_config.get("crop_mode") or "center")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop_mode {crop_mode!r}: use one of {', '.join(CROP_MODES)}")
    return {
        "input_size": size,
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "interpolation": interp,
        "crop_pct": float(data_config.get("crop_pct") or 1.0),
        "crop_mode": crop_mode,
    }
