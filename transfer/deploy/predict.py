"""Consuming a logged or registered model locally: loading it, ``transfer predict`` over files and folders.

Files are read here, by the local caller that opts in to paths (a served model never reads one), and decoded with
:mod:`transfer.imaging`, as training did.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from transfer.deploy.classifier import ImageClassifier
from transfer.errors import UserError
from transfer.imaging import IMAGE_EXTENSIONS
from transfer.tracking import TrackingStore, one_line

URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a local model directory"
_URI = re.compile(r"^(models:/[^/@]+(@[^/]+|/[^/]+)?|runs:/[^/]+/.+|[a-z][\w+.-]*://.+)$")


def is_local(model_uri: str) -> bool:
    """Whether ``model_uri`` is a model directory on this machine (rather than a store's URI)."""
    return "://" not in model_uri and not model_uri.startswith(("models:/", "runs:/"))


def load_pyfunc(model_uri: str, store: TrackingStore | None = None) -> Any:
    """Load a logged model from ``store`` (default: as :class:`TrackingStore` resolves), or a local model folder.

    Raises:
        UserError: one line for every failure (unknown URI form, no such model, unreachable store).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    store = store or TrackingStore()
    if is_local(model_uri):
        path = Path(model_uri).expanduser()
        if not path.exists():
            raise UserError(f"model {model_uri!r} not found: expected {URI_FORMS}")
        if not (path / "MLmodel").is_file():
            raise UserError(f"{model_uri} is not an MLflow model directory (no MLmodel file in it)")
    elif not _URI.match(model_uri):
        raise UserError(f"cannot parse model URI {model_uri!r}: expected {URI_FORMS}")
    else:
        store.check(must_exist=True)
    try:
        with store.activated(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise UserError(f"model {model_uri} not found in {store.uri}: {one_line(exc)}") from exc
        raise UserError(f"cannot load model {model_uri}: {one_line(exc)}") from exc
    except Exception as exc:
        where = "" if is_local(model_uri) else f" from {store.uri}"
        raise UserError(f"cannot load model {model_uri}{where}: {type(exc).__name__}: {one_line(exc)}") from exc


def classifier_of(pyfunc_model: Any) -> ImageClassifier:
    """The :class:`ImageClassifier` inside a loaded pyfunc.

    Raises:
        UserError: the model is not one of ours.
    """
    try:
        python_model = pyfunc_model.unwrap_python_model()
    except Exception as exc:
        raise UserError(f"not a transfer image classifier (no python model): {one_line(exc)}") from exc
    classifier = getattr(python_model, "classifier", None)
    if not isinstance(classifier, ImageClassifier):
        raise UserError("not a transfer image classifier: log it with transfer.deploy.registry.log_classifier")
    return classifier


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given and the image files under each folder (recursive, sorted).

    Raises:
        UserError: a path that does not exist, or a folder with no image file.
    """
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"image not found: {p} (pass image files or folders of images)")
    if not out:
        raise UserError("no images given: pass image files or folders")
    return out


def predict_paths(model_uri: str, paths: Sequence[str | Path], store: TrackingStore | None = None) -> pd.DataFrame:
    """Classify image files (folders are expanded, recursively and sorted) with a logged or registered model.

    The files are read here, locally (the one caller that opts in to paths), under the model's input limits.

    Args:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model`` or a local model folder.
        paths: image files or folders.
        store: where the model is (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).

    Returns:
        One row per image: ``path``, ``label``, ``score``, ``error``, ``unknown``, ``ood_score`` and
        ``prob_<class>`` per class (calibrated).

    Raises:
        UserError: unknown model URI, unreachable registry, missing images.
    """
    files = expand_image_paths(paths)
    classifier = classifier_of(load_pyfunc(model_uri, store))
    frame = classifier.predict([str(f) for f in files], allow_paths=True)
    frame.insert(0, "path", [str(f) for f in files])
    return frame
