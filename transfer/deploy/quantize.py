"""``transfer export --format onnx --int8``: a statically quantised int8 ONNX model, and what it costs in accuracy.

A model fitted with ``deploy.int8: true`` already carries its int8 graph (calibrated on its training images and
checked on its validation images when it was logged, :mod:`transfer.deploy.runtime`): that file is written (its
outputs are the logits and the penultimate features). Any other model is quantised here: its network is exported
(logits out), its activation ranges calibrated on up to :func:`~transfer.deploy.runtime.int8_calibration_images`
of its run's training images (the run's ``recipe.yaml`` says where they are; a seeded random sample), and the
accuracy of the fp32 and int8 graphs measured on the run's validation images and logged to the run
(``export_fp32_val_acc``, ``export_int8_val_acc``, ``export_int8_acc_change``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer import imaging
from transfer.deploy.runtime import int8_calibration_images, quantize_int8, write_onnx
from transfer.errors import UserError
from transfer.tracking import TrackingStore, one_line

_log = logging.getLogger(__name__)

_BATCH = 32


def _run_index(store: TrackingStore, run_id: str | None) -> Any:
    """The training and validation images of the run that logged the model (from its ``recipe.yaml``)."""
    from transfer.job import dataset_index
    from transfer.recipe import load_recipe

    if not run_id:
        raise UserError("int8 export calibrates on the model's training images, but this model has no run")
    with tempfile.TemporaryDirectory(prefix="transfer-recipe-") as tmp:
        try:
            recipe = load_recipe(store.client.download_artifacts(run_id, "recipe.yaml", tmp))
        except Exception as exc:
            raise UserError(
                f"int8 export calibrates on the training images of run {run_id}, but its recipe cannot be read "
                f"({one_line(exc)}); fit with deploy.int8: true to carry an int8 model"
            ) from exc
        try:
            return dataset_index(recipe)
        except UserError as exc:
            raise UserError(f"int8 export needs run {run_id}'s images ({exc}); export where they are") from exc


def _batches(samples: Sequence[Any], data_config: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed ``(images, labels)`` batches of the readable samples."""
    draft = imaging.draft_size(data_config)
    xs, ys = [], []
    for path, label in samples:
        try:
            xs.append(imaging.preprocess_image(imaging.load_file(path, draft=draft), data_config))
            ys.append(label)
        except imaging.ImageInputError:
            continue
        if len(xs) == _BATCH:
            yield torch.stack(xs).numpy(), np.asarray(ys)
            xs, ys = [], []
    if xs:
        yield torch.stack(xs).numpy(), np.asarray(ys)


def _accuracy(path: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    right = seen = 0
    for x, y in batches:
        right += int((session.run(None, {name: x})[0].argmax(1) == y).sum())
        seen += len(y)
    return right / max(seen, 1)


def _place(src: Path, dest: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest.resolve()


def export_int8(pyfunc: Any, classifier: Any, dest: Path, store: TrackingStore) -> Path:
    """Write the int8 ONNX model of a loaded classifier to ``dest`` (see the module docstring)."""
    from mlflow.entities import Metric

    carried = classifier.config.get("precision") == "int8" and classifier.onnx_path
    if carried:
        _log.info("writing the int8 model the classifier carries (its outputs: logits, features)")
        return _place(Path(classifier.onnx_path), dest)
    run_id = getattr(pyfunc.metadata, "run_id", None)
    index = _run_index(store, run_id)
    dc = classifier.data_config
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(index.train))[: int8_calibration_images(dc["input_size"])]
    train = [index.train[i] for i in sorted(keep)]
    model = classifier.model.cpu().eval().to(memory_format=torch.contiguous_format)
    metadata = {"class_names": json.dumps(classifier.class_names), "temperature": str(classifier.temperature)}
    with tempfile.TemporaryDirectory(prefix="transfer-int8-") as tmp:
        fp32, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        write_onnx(model, torch.randn(2, *dc["input_size"]), fp32, metadata, ("logits",))
        quantize_int8(fp32, int8, (x for x, _ in _batches(train, dc)))
        acc32, acc8 = _accuracy(fp32, _batches(index.val, dc)), _accuracy(int8, _batches(index.val, dc))
        found = {"export_fp32_val_acc": acc32, "export_int8_val_acc": acc8, "export_int8_acc_change": acc8 - acc32}
        store.client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in found.items()])
        _log.info("int8: validation accuracy %.4f -> %.4f (%+.2f points)", acc32, acc8, 100 * (acc8 - acc32))
        return _place(int8, dest)
