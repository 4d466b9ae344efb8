"""Exporting a logged classifier's network: ONNX or TorchScript, checked against PyTorch before it is written.

The exported network takes a float32 batch (N, C, H, W), preprocessed as :func:`transfer.imaging.preprocess`
does, with a dynamic batch axis, and returns logits in class order. The class names and the data config travel
in the file (ONNX ``metadata_props``; TorchScript extra file ``config.json``).
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
from transfer.errors import UserError
from transfer.tracking import TrackingStore, one_line

_log = logging.getLogger(__name__)


def _default_output(model_uri: str, fmt: str) -> Path:
    suffix = EXPORTERS[fmt][0]
    local = is_local(model_uri)
    stem = Path(model_uri).expanduser().resolve().name if local else re.sub(r"^[a-z]+:/+", "", model_uri)
    stem = re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "model"
    return Path.cwd() / f"{stem}{suffix}"


def _export_onnx(model: nn.Module, example: torch.Tensor, dest: Path, metadata: dict[str, str]) -> str:
    """Write ``model`` as ONNX with a dynamic batch axis; returns which exporter did it."""
    try:
        import onnx
    except ImportError as exc:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from exc
    errors = []
    exported = False
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,
            )
        program.save(str(dest))
        exported = True
    except Exception as exc:  # unsupported op in the new exporter: try the TorchScript-based one
        errors.append(f"torch.export-based exporter: {one_line(exc)}")
        _log.debug("dynamo ONNX export failed, trying the TorchScript-based exporter", exc_info=True)
    if not exported:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(dest),
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=17,
                )
        except Exception as exc:
            errors.append(f"TorchScript-based exporter: {one_line(exc)}")
            raise UserError(f"ONNX export failed ({'; '.join(errors)}); try --format torchscript") from exc
    proto = onnx.load(str(dest))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dest))
    return "torch.export-based" if exported else "TorchScript-based"


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


def export_model(model_uri: str, fmt: str, output: str | None, store: TrackingStore | None = None) -> Path:
    """Export the network of a logged classifier (logits out, preprocessed input in), checked on a batch of 3.

    Args:
        model_uri: as :func:`transfer.deploy.predict.predict_paths`.
        fmt: ``onnx`` or ``torchscript``.
        output: the file to write (default: named after the model URI in the working directory).
        store: where the model is.

    Raises:
        UserError: unknown format or model, a failing export, or an export whose logits differ.
    """
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}: use {' or '.join(EXPORTERS)}")
    classifier = classifier_of(load_pyfunc(model_uri, store))
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
