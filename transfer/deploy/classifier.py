"""The classifier inside a logged model: raw images in, one row per image out.

Input: a DataFrame with a column ``image`` whose cells are raw bytes or base64 strings (a ``data:image/...;base64,``
prefix is accepted) or, in process, numpy HWC arrays and PIL images; a list of those, a Series, or one array. A
served model never reads a file path a client names: a string that is not base64 gets the same one-line error
whether a file of that name exists or not. Only a local caller that opts in (``allow_paths=True``, as
``transfer predict`` does) may pass paths.

Output: one row per input row with ``label`` (str, None on error; the argmax, whatever ``unknown`` says),
``score`` (calibrated probability of ``label``), ``error`` (None, or one line saying why this row got no answer),
``unknown`` (the input looks unlike the training images: the detector's score is above its threshold; always false
for a model without a detector), ``ood_score`` (that score, higher is more unusual; missing without a detector)
and one column ``prob_<class name>`` per class (calibrated), in class order, as pandas ``Float64`` / ``boolean``
(missing on error rows, so served JSON has ``null`` there). A bad row never fails the
request; an empty request is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (HTTP 400 when served).
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from transfer import imaging
from transfer.deploy.calibration import softmax
from transfer.deploy.model_format import DEFAULT_BATCH_SIZE, FORMAT_VERSION, ServingNet, build_model, limits_of
from transfer.deploy.ood import UnknownDetector
from transfer.deploy.runtime import load_engine
from transfer.imaging import ImageInputError

_log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
PROB_PREFIX = "prob_"
_MAX_PATH_LEN = 4096
REFUSED_STRING = "not base64 image data: send the image's bytes or base64 (a served model reads no file paths)"
# Rows of a request are decoded and preprocessed on this many threads at most (Pillow's decoders and resampling and
# numpy's arithmetic release the GIL): one image's preprocessing is about twice its ONNX Runtime forward pass.
MAX_DECODE_THREADS = 8


def _default_device() -> torch.device:
    wanted = os.environ.get("TRANSFER_SERVING_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one, as in a container; else all)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _empty_request_error() -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(
        f"empty request: send at least one image in column {IMAGE_COLUMN!r} (bytes or a base64 string)",
        error_code=INVALID_PARAMETER_VALUE,
    )


def _as_items(model_input: Any) -> list[Any]:
    """The list of image inputs in any of the accepted request shapes."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            col = model_input[IMAGE_COLUMN]
        elif len(model_input.columns) == 1:
            col = model_input.iloc[:, 0]
        else:
            raise MlflowException(
                f"no column {IMAGE_COLUMN!r} in the request (columns: {list(model_input.columns)[:10]})",
                error_code=INVALID_PARAMETER_VALUE,
            )
        items = col.tolist()
        # MLflow turns a dict request {"image": [a, b]} into one row holding the list: unpack it.
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            return list(items[0])
        return items
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise MlflowException(f"no key {IMAGE_COLUMN!r} in the request", error_code=INVALID_PARAMETER_VALUE)
        value = model_input[IMAGE_COLUMN]
        return _as_items(value) if not isinstance(value, (str, bytes)) else [value]
    if isinstance(model_input, np.ndarray):
        if model_input.dtype == object:
            return list(model_input.ravel())
        if model_input.ndim == 4:
            return list(model_input)
        return [model_input]
    if isinstance(model_input, (str, bytes, bytearray, Path, Image.Image)):
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise MlflowException(
        f"unsupported request type {type(model_input).__name__}: send a DataFrame with a column {IMAGE_COLUMN!r}",
        error_code=INVALID_PARAMETER_VALUE,
    )


def to_image(item: Any, limits: imaging.ImageLimits, draft: int | None, allow_paths: bool = False) -> Image.Image:
    """One input cell as an RGB image, through :mod:`transfer.imaging` (the decoder training used).

    Raises:
        ImageInputError: a one-line reason.
    """
    if isinstance(item, Image.Image):
        limits.check_size(*item.size)
        return imaging.to_rgb(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return imaging.decode(bytes(item), limits=limits, draft=draft)
    if isinstance(item, np.ndarray):
        return imaging.from_array(item, limits)
    if isinstance(item, (str, Path)):
        text = str(item).strip()
        if allow_paths and len(text) <= _MAX_PATH_LEN and Path(text).expanduser().is_file():
            return imaging.load_file(Path(text).expanduser(), limits=limits, draft=draft)
        if isinstance(item, Path):
            raise ImageInputError(f"image file not found: {text[:200]}" if allow_paths else REFUSED_STRING)
        try:
            return imaging.decode_base64(text, limits=limits, draft=draft)
        except ImageInputError as exc:
            if str(exc) != "not base64 image data":
                raise
            why = f"neither an image file nor {REFUSED_STRING}" if allow_paths else REFUSED_STRING
            raise ImageInputError(why) from exc
    if item is None or item is pd.NA or (isinstance(item, float) and math.isnan(item)):
        raise ImageInputError("missing image")
    raise ImageInputError(f"unsupported input type {type(item).__name__}: send bytes or base64")


class ImageClassifier:
    """A classifier with its preprocessing, class names, calibration and unknown detector: what the pyfunc runs.

    Args:
        model: the network (a zoo backbone or a stage classifier); put in eval mode here.
        config: the model config (:mod:`transfer.deploy.model_format`): ``temperature``, ``tta`` and ``runtime``
            are read from it.
        device: where the forward pass runs (default: ``$TRANSFER_SERVING_DEVICE``, else CUDA when available).
        channels_last: run PyTorch in channels-last memory (default: on CPU, when a check batch agrees; set
            ``TRANSFER_SERVING_CHANNELS_LAST=0`` to turn it off). The model is moved and converted in place.
        unknown: the unknown detector (None: ``unknown`` is always false and ``ood_score`` missing).
        onnx_path: the model's ONNX file, run by ONNX Runtime when the config's ``runtime`` is ``onnx``.
        runtime: ``torch`` or ``onnx`` instead of the config's.
    """

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any],
        device: torch.device | str | None = None,
        channels_last: bool | None = None,
        *,
        unknown: UnknownDetector | None = None,
        onnx_path: str | Path | None = None,
        runtime: str | None = None,
    ):
        self.config = config
        self.class_names: list[str] = [str(c) for c in config["class_names"]]
        self.data_config: dict[str, Any] = config["data_config"]
        self.batch_size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.limits = limits_of(config)
        self.draft = imaging.draft_size(self.data_config)
        self.temperature = float(config.get("temperature") or 1.0)
        self.unknown = unknown
        self.onnx_path = str(onnx_path) if onnx_path else None
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.prob_columns = [f"{PROB_PREFIX}{c}" for c in self.class_names]
        if channels_last is None:
            channels_last = self.device.type == "cpu" and os.environ.get("TRANSFER_SERVING_CHANNELS_LAST", "1") != "0"
        size = tuple(int(v) for v in self.data_config["input_size"]) if channels_last else None
        net = ServingNet(self.model, config.get("tta"))
        self.engine = load_engine(runtime or config.get("runtime") or "torch", net, self.device, onnx_path, size)
        self.runtime = self.engine.name
        self.precision = str(config.get("precision") or "fp32") if self.runtime == "onnx" else "fp32"
        self.channels_last = bool(getattr(self.engine, "channels_last", False))
        self.decode_threads = max(1, min(MAX_DECODE_THREADS, _usable_cpus()))
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None  # threads do not pickle; a copy starts its own when it first decodes
        return state

    @classmethod
    def from_files(
        cls,
        config_path: str | Path,
        weights_path: str | Path,
        device: torch.device | str | None = None,
        *,
        ood_path: str | Path | None = None,
        onnx_paths: dict[str, str | Path] | None = None,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> ImageClassifier:
        """Rebuild the classifier from the artifacts of a logged model (config, weights, and when it has them the
        unknown detector's arrays and the ONNX files by precision, ``fp32`` and ``int8``); ``runtime`` and
        ``precision`` override the config's."""
        from safetensors.torch import load_model

        config = json.loads(Path(config_path).read_text())
        version = int(config.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"model config format {version} is newer than this transfer ({FORMAT_VERSION}): upgrade")
        model = build_model(config)
        load_model(model, str(weights_path), strict=True, device="cpu")
        unknown = UnknownDetector.load(config["ood"], ood_path) if config.get("ood") and ood_path else None
        if precision:
            config["precision"] = precision
        onnx_path = (onnx_paths or {}).get(str(config.get("precision") or "fp32"))
        return cls(model, config, device=device, unknown=unknown, onnx_path=onnx_path, runtime=runtime)

    def load(self, item: Any, allow_paths: bool = False) -> torch.Tensor:
        """One input cell as the model's input tensor (decoded and preprocessed as in training)."""
        try:
            img = to_image(item, self.limits, self.draft, allow_paths)
            return imaging.preprocess_image(img, self.data_config)
        except MemoryError as exc:
            raise ImageInputError("image too large to decode in memory") from exc

    def load_batch(self, items: list[Any]) -> torch.Tensor:
        """Input cells as one preprocessed batch (N, C, H, W).

        Raises:
            ImageInputError: a cell is not a readable image.
        """
        return torch.stack([self.load(item) for item in items])

    def _load_row(self, item: Any, allow_paths: bool) -> np.ndarray | str:
        """One cell preprocessed (CHW float32), or the one-line reason it cannot be."""
        try:
            return self.load(item, allow_paths).numpy()
        except ImageInputError as exc:
            return str(exc).splitlines()[0][:300] if str(exc) else "cannot read image"

    def load_rows(self, items: list[Any], allow_paths: bool = False) -> list[np.ndarray | str]:
        """Input cells decoded and preprocessed as in training: per cell a (C, H, W) float32 array, or the one-line
        reason it cannot be; on :attr:`decode_threads` threads when there are several cells."""
        if len(items) == 1 or self.decode_threads == 1:
            return [self._load_row(item, allow_paths) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="transfer-decode")
        return list(self._pool.map(lambda item: self._load_row(item, allow_paths), items))

    def infer(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, classes), unknown scores (N,) and unknown flags (N,) of a preprocessed
        batch; the same post-processing whichever engine ran the network."""
        logits, feats = self.engine.run(batch)
        probs = softmax(logits, self.temperature)
        if self.unknown is None:
            return probs, np.full(len(probs), np.nan), np.zeros(len(probs), dtype=bool)
        score, unknown = self.unknown.score(feats)
        return probs, score, unknown

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (N, num_classes) of a preprocessed batch."""
        return torch.from_numpy(self.infer(batch)[0])

    def predict(self, model_input: Any, batch_size: int | None = None, *, allow_paths: bool = False) -> pd.DataFrame:
        """Classify images; one output row per input row, bad rows with an ``error`` and no label.

        Args:
            model_input: a DataFrame with a column ``image`` (bytes, base64 strings), a list of those, a Series, an
                HWC (or NHWC) uint8 array, or a PIL image.
            batch_size: images per forward pass (default: the model's ``batch_size``, 64).
            allow_paths: also read strings that name local files (local callers only; never for a served model).

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` when the request holds no image at all.
        """
        items = _as_items(model_input)
        if not items:
            raise _empty_request_error()
        bs = max(1, int(batch_size or self.batch_size))
        n, k = len(items), len(self.class_names)
        probs = np.full((n, k), np.nan, dtype=np.float64)
        score, unknown = np.full(n, np.nan), np.zeros(n, dtype=bool)
        errors: list[str | None] = [None] * n
        for start in range(0, n, bs):
            arrays, rows = [], []
            for i, got in enumerate(self.load_rows(items[start : start + bs], allow_paths), start):
                if isinstance(got, str):
                    errors[i] = got
                else:
                    arrays.append(got)
                    rows.append(i)
            if arrays:  # numpy, not torch.stack: no intra-op thread pool woken for a copy
                probs[rows], score[rows], unknown[rows] = self.infer(np.stack(arrays))
        return self._frame(probs, errors, score, unknown)

    def _frame(
        self, probs: np.ndarray, errors: list[str | None], ood_score: np.ndarray, unknown: np.ndarray
    ) -> pd.DataFrame:
        ok = np.array([e is None for e in errors])
        best = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
        labels = [self.class_names[b] if good else None for b, good in zip(best, ok)]
        score = probs[np.arange(len(errors)), best]
        if self.unknown is None:
            ood_score = np.full(len(errors), np.nan)

        def floats(values: np.ndarray) -> pd.arrays.FloatingArray:
            values = np.asarray(values, dtype=np.float64)
            return pd.arrays.FloatingArray(values, ~ok | np.isnan(values))

        # Float64 / boolean (nullable, masked on error rows) so an error row serves as JSON null, not NaN; object
        # columns keep None as None. Built with their masks: setting NA cell by cell cost more than the network.
        data: dict[str, Any] = {
            "label": pd.Series(labels, dtype=object),
            "score": floats(score),
            "error": pd.Series(errors, dtype=object),
            "unknown": pd.arrays.BooleanArray(np.asarray(unknown, dtype=bool), ~ok),
            "ood_score": floats(ood_score),
        }
        for j, col in enumerate(self.prob_columns):
            data[col] = floats(probs[:, j])
        return pd.DataFrame(data)
