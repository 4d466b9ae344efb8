"""The shape of transfer/ and app/: small functions and modules, one room per job, arrows pointing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transfer", "app")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path: Path) -> None:
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("module", ["data", "sources", "augment", "imaging"])
def test_training_data_imports_nothing_from_deployment(module: str) -> None:
    imported = _imports(ROOT / "transfer" / f"{module}.py")
    assert not [m for m in imported if m.startswith("transfer.deploy") or m == "transfer.serving"], imported


def _calls(attr: str) -> list[str]:
    return [
        str(p.relative_to(ROOT))
        for p in SOURCES
        for node in ast.walk(_tree(p))
        if isinstance(node, ast.Attribute) and node.attr == attr
    ]


def test_only_the_image_module_opens_image_bytes() -> None:
    openers = {
        str(p.relative_to(ROOT))
        for p in SOURCES
        for node in ast.walk(_tree(p))
        if isinstance(node, ast.Attribute) and node.attr == "open" and getattr(node.value, "id", "") == "Image"
    }
    assert openers == {"transfer/imaging.py"}


@pytest.mark.parametrize("attr", ["set_tracking_uri", "set_registry_uri", "set_experiment"])
def test_only_the_tracking_store_sets_mlflow_process_state(attr: str) -> None:
    assert set(_calls(attr)) <= {"transfer/tracking.py"}
