"""The engines that run a deployed network: PyTorch, or ONNX Runtime (fp32 or int8) exported from it.

An engine takes a preprocessed float32 batch (N, C, H, W) and returns ``(logits, features)`` as numpy arrays
(:class:`transfer.deploy.model_format.ServingNet`); everything before (decoding, preprocessing) and after
(temperature, unknown score) is the same code whatever the engine (:mod:`transfer.deploy.classifier`).

:func:`choose_runtime` exports the network (:func:`write_onnx`, :data:`SERVING_EXPORT_ORDER`), checks it against
PyTorch on real held-out images (labels agree on at least :data:`MIN_LABEL_AGREEMENT`, probabilities
within :data:`MAX_PROB_DIFF`) and, when asked, quantises it to int8 with ONNX Runtime's static quantisation (QDQ,
per-channel weights, activations calibrated on training images), kept only when it loses at most
:data:`INT8_MAX_LOSS` of validation accuracy. What does not check out falls back, with the reason recorded.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transfer.deploy.model_format import ONNX_ARTIFACTS
from transfer.errors import UserError
from transfer.layout import as_layout, channels_last, try_channels_last

_log = logging.getLogger(__name__)

MIN_LABEL_AGREEMENT = 0.995
MAX_PROB_DIFF = 1e-3
INT8_MAX_LOSS = 0.01  # int8 is served only when it costs at most one point of validation accuracy
# ONNX Runtime's min-max calibration keeps every intermediate output of every calibration image in memory (its
# CalibMaxIntermediateOutputs option drops data in onnxruntime 1.32): 128 images of 224 px is about 3 GB. So the
# number of calibration images is set by a pixel budget: 128 at 224 px, more at smaller sizes, where 128 images
# leave the ranges to chance (MobileNetV2 on 32 px digits lost 0.3 to 1.3 points over five draws of 128 images,
# 0.8 calibrated on all 600).
INT8_CALIBRATION_IMAGES = 128
INT8_CALIBRATION_PIXELS = INT8_CALIBRATION_IMAGES * 224 * 224
INT8_CALIBRATION_MAX_IMAGES = 2048
Batches = Iterable[tuple[torch.Tensor, Any]]


def int8_calibration_images(input_size: tuple[int, ...] | list[int]) -> int:
    """How many training images calibrate int8 activation ranges at ``input_size`` (C, H, W): the pixel budget
    :data:`INT8_CALIBRATION_PIXELS` spent, at least :data:`INT8_CALIBRATION_IMAGES` and at most
    :data:`INT8_CALIBRATION_MAX_IMAGES`."""
    pixels = max(1, int(input_size[-1]) * int(input_size[-2]))
    return max(INT8_CALIBRATION_IMAGES, min(INT8_CALIBRATION_MAX_IMAGES, INT8_CALIBRATION_PIXELS // pixels))


def _one_line(exc: BaseException) -> str:
    # transfer.tracking has the project's one_line, but importing it would load Lightning into every served model.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class TorchEngine:
    """The network in PyTorch eager mode, channels-last on CPU when that gives the same answers.

    Args:
        net: a :class:`~transfer.deploy.model_format.ServingNet` (moved to ``device`` and put in eval mode here).
        device: where it runs.
        channels_last: the input size (C, H, W) to try channels-last memory at (the model is converted in place
            when it agrees, :func:`transfer.layout.try_channels_last`), or None to keep the layout it has.
        converted: the caller has already made ``net`` channels-last (:func:`transfer.layout.channels_last`).
    """

    name = "torch"

    def __init__(
        self,
        net: nn.Module,
        device: torch.device | str = "cpu",
        channels_last: tuple[int, ...] | None = None,
        *,
        converted: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        tried = channels_last is not None and try_channels_last(self.net, channels_last, self.device)
        self.channels_last = converted or tried

    @torch.inference_mode()
    def run(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = as_layout(torch.as_tensor(batch).to(self.device), self.channels_last)
        logits, feats = self.net(x)
        return logits.float().cpu().numpy(), feats.float().cpu().numpy()


class OnnxEngine:
    """An ONNX file under ONNX Runtime's CPU execution provider."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)  # a CPU tensor or an array, without a copy when it can
        logits, feats = self.session.run(None, {self.input_name: x})[:2]
        return logits, feats


@dataclass
class Outputs:
    """What an engine computed over a set of images."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(1) == self.labels).mean()) if len(self.labels) else float("nan")


def run_all(engine: Any, batches: Batches) -> Outputs:
    """An engine's outputs over every ``(images, labels)`` batch."""
    return run_engines({"engine": engine}, batches)["engine"]


# ----------------------------------------------------------------------------------------------------------------
# Writing ONNX


def _dynamo_export(model: nn.Module, example: torch.Tensor, dest: Path, outputs: tuple[str, ...]) -> None:
    import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=["input"],
        output_names=list(outputs),
        dynamic_shapes=({0: batch},),
        external_data=False,
    )
    program.save(str(dest))


def _torchscript_export(model: nn.Module, example: torch.Tensor, dest: Path, outputs: tuple[str, ...]) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(dest),
        dynamo=False,
        input_names=["input"],
        output_names=list(outputs),
        dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)},
        opset_version=17,
    )


# name -> exporter; write_onnx tries them in the order it is given
ONNX_EXPORTERS: dict[str, Callable[..., None]] = {
    "torch.export-based": _dynamo_export,
    "TorchScript-based": _torchscript_export,
}
# The model logged by a fit: the TorchScript-based exporter first, since it exports MobileNetV2 in 4 s where the
# torch.export-based one takes 16 s (2 CPUs) and ONNX Runtime runs both graphs at the same speed; `transfer export`
# keeps the newer exporter first.
SERVING_EXPORT_ORDER = ("TorchScript-based", "torch.export-based")


def write_onnx(
    model: nn.Module,
    example: torch.Tensor,
    dest: Path,
    metadata: dict[str, str],
    outputs: tuple[str, ...],
    order: tuple[str, ...] = tuple(ONNX_EXPORTERS),
) -> str:
    """Write ``model`` as ONNX with a dynamic batch axis and ``metadata``, with the first exporter of ``order``
    that manages; returns its name.

    Raises:
        UserError: no exporter managed.
    """
    try:
        import onnx
    except ImportError as exc:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from exc
    errors = []
    for how in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ONNX_EXPORTERS[how](model, example, dest, outputs)
            break
        except Exception as exc:  # an op one exporter does not support: try the next
            errors.append(f"{how} exporter: {_one_line(exc)}")
            _log.debug("the %s ONNX exporter failed", how, exc_info=True)
    else:
        raise UserError(f"ONNX export failed ({'; '.join(errors)}); try --format torchscript")
    proto = onnx.load(str(dest))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dest))
    return how


class _Reader:
    """ONNX Runtime's calibration data reader over preprocessed batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}


def quantize_int8(src: Path, dest: Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, min-max ranges) of ``src``,
    its activation ranges calibrated on the ``calibration`` batches (training images, preprocessed).

    The classifier (the graph's ``Gemm``/``MatMul``) stays in fp32: it is a sliver of the compute, and quantising
    it cost MobileNetV2 on digits a point of accuracy (0.1 point without it)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Reader, CalibrationDataReader), {})("input", calibration)
    with tempfile.TemporaryDirectory(prefix="transfer-int8-") as tmp:
        pre = Path(tmp, "pre.onnx")
        try:  # shape inference and graph fusions first, as ONNX Runtime recommends
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:
            _log.debug("quantisation pre-processing failed (%s); quantising the graph as exported", _one_line(exc))
            pre = src
        heads = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Gemm", "MatMul")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(pre),
                str(dest),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=heads,
            )
    return dest


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (and the onnx package the export writes with) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


# ----------------------------------------------------------------------------------------------------------------
# Choosing the engine of a deployed model


@dataclass
class RuntimeChoice:
    """The engine a deployed model serves with, and the evidence for it.

    Attributes:
        runtime: ``onnx`` or ``torch``.
        precision: ``fp32`` or ``int8``.
        reason: why (what fell back, and why).
        engine: the engine itself (for the held-out outputs below).
        val: its outputs on the held-out images.
        files: artifact name -> file (``onnx``: fp32; ``onnx_int8``).
        metrics: parity and int8 measurements for MLflow.
    """

    runtime: str
    precision: str
    reason: str
    engine: Any
    val: Outputs
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def parity(a: Outputs, b: Outputs) -> tuple[float, float]:
    """(share of images with the same label, max |probability difference|) of two engines' outputs."""
    from transfer.deploy.calibration import softmax

    if not len(a.labels):
        return 1.0, 0.0
    agree = float((a.logits.argmax(1) == b.logits.argmax(1)).mean())
    return agree, float(np.abs(softmax(a.logits) - softmax(b.logits)).max())


def choose_runtime(
    net: nn.Module,
    want: str,
    int8: bool,
    val: Callable[[], Batches],
    train: Callable[[], Batches],
    workdir: Path,
    metadata: dict[str, str],
    input_shape: tuple[int, ...] | None = None,
) -> RuntimeChoice:
    """The engine a deployed model should serve with (see the module docstring).

    The held-out images are decoded once: every candidate engine (PyTorch, ONNX fp32, ONNX int8) runs on each batch
    of the same pass, so the files are written and quantised first.

    Args:
        net: the :class:`~transfer.deploy.model_format.ServingNet`, on the CPU, in eval mode.
        want: ``auto`` (ONNX Runtime when it exports and agrees, else PyTorch), ``onnx`` (the same, but a failure
            is an error) or ``torch``.
        int8: quantise to int8 (ONNX only).
        val: held-out ``(images, labels)`` batches (called once).
        train: training batches (int8 calibration).
        workdir: where the ONNX files are written.
        metadata: ONNX ``metadata_props``.
        input_shape: the network's input (C, H, W); read from the first held-out batch when not given.

    PyTorch runs channels-last for the pass (:mod:`transfer.layout`), as the served PyTorch model does; ``net`` is
    back in the default layout afterwards.

    Raises:
        UserError: ``want == "onnx"`` and the ONNX model cannot be had.
    """
    engines: dict[str, Any] = {}
    files: dict[str, Path] = {}
    notes: list[str] = []
    shape = input_shape or _input_shape(val)
    if want != "torch":
        try:
            how = _export(net, shape, workdir, metadata, engines, files)
        except Exception as exc:
            _onnx_failed(want, exc)
            notes.append(f"ONNX Runtime not used: {_one_line(exc)}")
        else:
            notes.append(f"exported with the {how} exporter")
            if int8:
                notes += _quantise(files[ONNX_ARTIFACTS["fp32"]], train, workdir, engines)
    with channels_last(net.eval(), shape) as converted:  # exported first: the ONNX file has the default layout
        engines["torch"] = TorchEngine(net, converted=converted)
        outs = run_engines(engines, val())
    if want == "torch":
        return RuntimeChoice("torch", "fp32", "deploy.runtime is torch", None, outs["torch"])
    if "onnx" not in engines:
        return RuntimeChoice("torch", "fp32", "; ".join(notes), None, outs["torch"])
    try:
        metrics = _check_parity(outs["torch"], outs["onnx"])
    except RuntimeError as exc:
        _onnx_failed(want, exc)
        return RuntimeChoice("torch", "fp32", f"ONNX Runtime not used: {_one_line(exc)}", None, outs["torch"])
    agree, diff = metrics["onnx_label_agreement"], metrics["onnx_max_prob_diff"]
    _log.info("ONNX Runtime (%s exporter): labels agree %.1f%%, max prob diff %.1e", how, 100 * agree, diff)
    reason = "; ".join([f"{notes[0]}; agrees with PyTorch on {len(outs['onnx'].labels)} held-out images", *notes[1:]])
    choice = RuntimeChoice("onnx", "fp32", reason, engines["onnx"], outs["onnx"], files, metrics)
    if "int8" in engines:
        _keep_int8(choice, engines["int8"], outs["int8"], shape)
    return choice


def run_engines(engines: dict[str, Any], batches: Batches) -> dict[str, Outputs]:
    """Each engine's outputs over the same ``(images, labels)`` batches, decoded once."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in engines}
    for x, y in batches:
        labels = np.asarray(y)
        for name, engine in engines.items():
            logits, feats = engine.run(x)
            parts[name].append((logits, feats, labels))
    return {name: _outputs(p) for name, p in parts.items()}


def _outputs(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Outputs:
    if not parts:
        return Outputs(np.empty((0, 0)), np.empty((0, 0)), np.empty(0, dtype=np.int64))
    logits, feats, labels = (np.concatenate(column) for column in zip(*parts))
    return Outputs(logits, feats, labels.astype(np.int64))


def _onnx_failed(want: str, exc: BaseException) -> None:
    """ONNX cannot serve: an error when the recipe asked for it, else a warning (PyTorch serves)."""
    if want == "onnx":
        raise UserError(f"deploy.runtime onnx: {_one_line(exc)}; set deploy.runtime to auto or torch") from exc
    _log.warning("serving with PyTorch: %s", _one_line(exc))


def _export(
    net: nn.Module,
    shape: tuple[int, ...],
    workdir: Path,
    metadata: dict[str, str],
    engines: dict[str, Any],
    files: dict[str, Path],
) -> str:
    """Write the fp32 ONNX model and load it into ONNX Runtime (``engines["onnx"]``); returns the exporter."""
    if not onnxruntime_available():
        raise RuntimeError("onnxruntime (or onnx) is not installed")
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    path = workdir / "model.onnx"
    how = write_onnx(net, example, path, metadata, ("logits", "features"), SERVING_EXPORT_ORDER)
    engines["onnx"] = OnnxEngine(path)
    files[ONNX_ARTIFACTS["fp32"]] = path
    return how


def _check_parity(torch_val: Outputs, onnx_val: Outputs) -> dict[str, float]:
    """The ONNX model's agreement with PyTorch on held-out images, as metrics.

    Raises:
        RuntimeError: it disagrees beyond :data:`MIN_LABEL_AGREEMENT` or :data:`MAX_PROB_DIFF`.
    """
    agree, diff = parity(torch_val, onnx_val)
    if agree < MIN_LABEL_AGREEMENT or diff > MAX_PROB_DIFF:
        raise RuntimeError(
            f"the ONNX model disagrees with PyTorch on held-out images (labels agree on {agree:.1%}, probabilities "
            f"differ by up to {diff:.1e})"
        )
    return {"onnx_label_agreement": agree, "onnx_max_prob_diff": diff}


def _input_shape(val: Callable[[], Batches]) -> tuple[int, ...]:
    for x, _ in val():
        return tuple(int(v) for v in x.shape[1:])
    raise RuntimeError("no held-out images to check the export on")


def _calibration_batches(train: Callable[[], Batches]) -> Iterable[np.ndarray]:
    seen, limit = 0, None
    for x, _ in train():
        limit = limit or int8_calibration_images(tuple(x.shape[1:]))
        if seen >= limit:
            return
        batch = x[: limit - seen]
        seen += len(batch)
        yield batch.numpy()


def _quantise(src: Path, train: Callable[[], Batches], workdir: Path, engines: dict[str, Any]) -> list[str]:
    """Quantise the fp32 ONNX model to int8 (``engines["int8"]``); a failure is returned as a note (fp32 serves)."""
    try:
        path = quantize_int8(src, workdir / "model_int8.onnx", _calibration_batches(train))
        engines["int8"] = OnnxEngine(path)
    except Exception as exc:
        _log.warning("int8 quantisation failed (%s): serving fp32", _one_line(exc))
        return [f"int8 quantisation failed: {_one_line(exc)}"]
    return []


def _keep_int8(choice: RuntimeChoice, engine: OnnxEngine, int8_val: Outputs, shape: tuple[int, ...]) -> None:
    """Serve int8 when it loses at most :data:`INT8_MAX_LOSS` of validation accuracy against fp32."""
    fp32 = choice.val
    loss = fp32.accuracy - int8_val.accuracy
    choice.metrics.update({"int8_val_acc": int8_val.accuracy, "int8_acc_change": -loss})
    if loss > INT8_MAX_LOSS:
        _log.warning("int8 loses %.1f points of validation accuracy: serving fp32", 100 * loss)
        choice.reason += f"; int8 not served: it lost {100 * loss:.1f} points of validation accuracy"
        return
    _log.info("serving int8 (validation accuracy %.4f -> %.4f)", fp32.accuracy, int8_val.accuracy)
    choice.precision, choice.engine, choice.val = "int8", engine, int8_val
    choice.files[ONNX_ARTIFACTS["int8"]] = engine.path  # the fp32 file stays too: a caller may load it at fp32
    choice.reason += f"; int8 calibrated on up to {int8_calibration_images(shape)} training images"


def load_engine(
    want: str, net: nn.Module, device: torch.device, onnx_path: str | Path | None, channels_last: tuple[int, ...] | None
) -> Any:
    """The engine a loaded model runs on: ONNX Runtime when ``want`` is ``onnx`` and that can run here, else
    PyTorch (the reason logged)."""
    if want == "onnx":
        if onnx_path is None:
            reason = "the model carries no ONNX file"
        elif device.type != "cpu":
            reason = f"the model runs on {device}"
        elif not onnxruntime_available():
            reason = "onnxruntime is not installed here"
        else:
            try:
                return OnnxEngine(onnx_path)
            except Exception as exc:
                reason = f"ONNX Runtime cannot load the model: {_one_line(exc)}"
        _log.warning("running the model with PyTorch instead of ONNX Runtime: %s", reason)
    return TorchEngine(net, device, channels_last if device.type == "cpu" else None)
