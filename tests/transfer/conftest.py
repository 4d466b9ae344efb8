"""Fixtures for fits: a scratch working directory (mlflow.db and runs/ land there) and a shared data cache."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest


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
    return tmp_path


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
