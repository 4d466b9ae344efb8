"""Fixtures for the web-page tests: small real datasets as zips, and one `transfer app` per test process, started as
a service manager would (under ``nohup``, SIGINT ignored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.support import App, serve_app, zip_tree
from tests.helpers import digits_folder


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real handwritten digits: 3 classes x 16 images, 32 px."""
    root = digits_folder(tmp_path_factory.mktemp("digits") / "digits")
    return zip_tree(root, root.parent / "digits.zip")


@pytest.fixture(scope="session")
def one_class_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = digits_folder(tmp_path_factory.mktemp("one") / "digits", classes=(5,), per_class=6)
    return zip_tree(root, root.parent / "one.zip")


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """`transfer app` on a free port of 127.0.0.1 under nohup with SIGINT ignored, stopped after the tests."""
    with serve_app(tmp_path_factory.mktemp("app")) as app:
        yield app


@pytest.fixture(scope="session")
def flawed_digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits zip with two planted problems: a digit_0 picture copied into digit_1 (an exact duplicate with a
    conflicting label) and an unreadable file."""
    root = digits_folder(tmp_path_factory.mktemp("flawed") / "digits")
    first = sorted((root / "digit_0").glob("*.png"))[0]
    (root / "digit_1" / f"copy_of_{first.name}").write_bytes(first.read_bytes())
    (root / "digit_7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return zip_tree(root, root.parent / "flawed.zip")
