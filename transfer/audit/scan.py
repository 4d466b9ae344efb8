"""One pass over the files of a dataset: content hash, header facts and a perceptual hash per image.

Every file is read once; its header gives the size, colour mode and format (nothing decoded), and a small decode
(:func:`transfer.imaging.decode` at a JPEG draft of :data:`HASH_DRAFT` pixels) gives the 64-bit perceptual hash
(``imagehash.phash``: the DCT of a 32 x 32 grey picture) and a 16 x 16 grey thumbnail that near-duplicate checks
compare. Files that the data
scan already refused (:attr:`transfer.sources.DatasetIndex.skipped`) are reported as unreadable with its reason.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transfer import imaging

HASH_DRAFT = 64  # JPEGs are decoded at the smallest scale that keeps 64 px: the hash looks at 32 x 32 anyway
TINY_SIDE = 32  # an image whose shorter side is under this many pixels carries little for a 224 px model
THUMB_SIDE = 16  # near-duplicates are confirmed on the correlation of 16 x 16 grey pictures
EXTREME_ASPECT = 4.0  # longer side / shorter side above this: a strip or a banner, not a photo of one object


@dataclass
class FileFacts:
    """What one pass over a file found (``error`` set when it could not be read)."""

    path: str
    label: int
    split: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: int = 0
    pixels: np.ndarray | None = field(default=None, repr=False)  # the grey THUMB_SIDE^2 picture, zero mean, unit norm
    error: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the picture itself is a problem (tiny, elongated), or None."""
        if self.error:
            return None
        short, long = sorted((self.width, self.height))
        if short < TINY_SIDE:
            return f"tiny: {self.width}x{self.height} (a side under {TINY_SIDE} px)"
        if long / short > EXTREME_ASPECT:
            return f"extreme aspect ratio: {self.width}x{self.height} (over {EXTREME_ASPECT:g}:1)"
        return None


def picture_facts(picture: Any) -> tuple[int, np.ndarray]:
    """The perceptual hash (64 bits as an int) and the normalised grey thumbnail of a decoded picture."""
    import imagehash
    from PIL import Image

    small = picture.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32).ravel()
    pixels = pixels - pixels.mean()
    return int(str(imagehash.phash(picture)), 16), pixels / max(float(np.linalg.norm(pixels)), 1e-6)


def _facts(item: tuple[str, int, str]) -> FileFacts:
    path, label, split = item
    facts = FileFacts(path, label, split)
    try:
        data = imaging.read_file(path)
        facts.sha256 = hashlib.sha256(data).hexdigest()
        facts.width, facts.height, facts.mode, facts.format = imaging.read_header(data)
        facts.phash, facts.pixels = picture_facts(imaging.decode(data, draft=HASH_DRAFT))
    except imaging.ImageInputError as exc:
        facts.error = str(exc)
    return facts


def scan_files(samples: Sequence[tuple[str, int, str]]) -> list[FileFacts]:
    """:class:`FileFacts` of every ``(path, label, split)``, in order (threads: decoding releases the GIL)."""
    if len(samples) < 32:
        return [_facts(s) for s in samples]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as ex:
        return list(ex.map(_facts, samples, chunksize=16))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between 64-bit hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def image_stats(facts: Sequence[FileFacts]) -> dict[str, Any]:
    """Image sizes (min, median, max of width and height), colour modes and formats of the readable files."""
    ok = [f for f in facts if not f.error]
    if not ok:
        return {"images": 0}
    w = np.array([f.width for f in ok])
    h = np.array([f.height for f in ok])

    def spread(a: np.ndarray) -> dict[str, int]:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}

    return {
        "images": len(ok),
        "width": spread(w),
        "height": spread(h),
        "modes": dict(Counter(f.mode for f in ok).most_common()),
        "formats": dict(Counter(f.format for f in ok).most_common()),
    }
