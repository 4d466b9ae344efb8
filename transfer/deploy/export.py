"""Exporting a logged classifier's network: ONNX or TorchScript, checked against PyTorch before it is written.

The exported network takes a float32 batch (N, C, H, W), preprocessed as :func:`transfer.imaging.preprocess`
does, with a dynamic batch axis, and returns logits in class order (uncalibrated: divide them by the
``temperature`` in the metadata before the softmax). The class names, the data config and the temperature travel
in the file (ONNX ``metadata_props``; TorchScript extra file ``config.json``). ``--int8`` writes a statically
quantised ONNX model (:mod:`transfer.deploy.quantize`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transfer.deploy.predict import classifier_of, is_local, load_pyfunc
from transfer.deploy.runtime import write_onnx
from transfer.errors import UserError
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)


def _default_output(model_uri: str, fmt: str) -> Path:
    suffix = EXPORTERS[fmt][0]
    local = is_local(model_uri)
    stem = Path(model_uri).expanduser().resolve().name if local else re.sub(r"^[a-z]+:/+", "", model_uri)
    stem = re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "model"
    return Path.cwd() / f"{stem}{suffix}"


def _export_onnx(model: nn.Module, example: torch.Tensor, dest: Path, metadata: dict[str, str]) -> str:
    """Write ``model`` as ONNX (logits out) with a dynamic batch axis; returns which exporter did it."""
    return write_onnx(model, example, dest, metadata, ("logits",))


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _export_torchscript(model: nn.Module, example: torch.Tensor, dest: Path, metadata: dict[str, str]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(dest), _extra_files={"config.json": json.dumps(metadata)})
    return "torch.jit.trace"


def _torchscript_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()(x).numpy()


# format -> (file suffix, exporter, how to run the exported file)
EXPORTERS: dict[str, tuple[str, Callable[..., str], Callable[[Path, torch.Tensor], np.ndarray]]] = {
    "onnx": (".onnx", lambda *a: _export_onnx(*a) + " ONNX exporter", _onnx_logits),
    "torchscript": (".pt", _export_torchscript, _torchscript_logits),
}


def _destination(model_uri: str, fmt: str, output: str | None) -> Path:
    dest = Path(output).expanduser() if output else _default_output(model_uri, fmt)
    if dest.is_dir():
        raise UserError(f"output {dest} is a folder: pass a file name, e.g. {dest / ('model' + EXPORTERS[fmt][0])}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def export_model(
    model_uri: str, fmt: str, output: str | None, store: TrackingStore | None = None, *, int8: bool = False
) -> Path:
    """Export the network of a logged classifier (logits out, preprocessed input in), checked on a batch of 3.

    Args:
        model_uri: as :func:`transfer.deploy.predict.predict_paths`.
        fmt: ``onnx`` or ``torchscript``.
        output: the file to write (default: named after the model URI in the working directory).
        store: where the model is.
        int8: ONNX only: a statically quantised int8 model (:mod:`transfer.deploy.quantize`): the one the model
            carries when it was fitted with ``deploy.int8``, else one calibrated on its run's training images, with
            the accuracy change on its validation images logged to the run.

    Raises:
        UserError: unknown format or model, a failing export, or an export whose logits differ.
    """
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}: use {' or '.join(EXPORTERS)}")
    if int8 and fmt != "onnx":
        raise UserError(f"int8 models are ONNX models: use --format onnx with --int8 (not {fmt})")
    pyfunc = load_pyfunc(model_uri, store)
    classifier = classifier_of(pyfunc)
    if int8:
        from transfer.deploy.quantize import export_int8

        return export_int8(pyfunc, classifier, _destination(model_uri, fmt, output), store or TrackingStore())
    # Exported graphs take plain NCHW tensors; the serving-time channels-last layout is undone.
    model = classifier.model.cpu().eval().to(memory_format=torch.contiguous_format)
    dest = _destination(model_uri, fmt, output)
    c, h, w = classifier.data_config["input_size"]
    gen = torch.Generator().manual_seed(0)
    example, check = torch.randn(2, c, h, w, generator=gen), torch.randn(3, c, h, w, generator=gen)
    metadata = {
        "class_names": json.dumps(classifier.class_names),
        "data_config": json.dumps(classifier.data_config),
        "backbone": str(classifier.config.get("backbone")),
        "temperature": str(classifier.temperature),
        "source_model_uri": model_uri,
    }
    _, exporter, runner = EXPORTERS[fmt]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = model(check).numpy()
            how = exporter(model, example, tmp, metadata)
            got = runner(tmp, check)
        diff = float(np.abs(got - expected).max())
        tol = 1e-3 * max(1.0, float(np.abs(expected).max()))
        if not diff <= tol:
            raise UserError(f"the {fmt} export differs from the PyTorch model by {diff:.2e} (tolerance {tol:.1e})")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _log.info("exported %s to %s with the %s (max |logit diff| %.1e)", model_uri, dest, how, diff)
    return dest.resolve()
