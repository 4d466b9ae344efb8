"""The code of the logged image classifier (MLflow "models from code": this file is the model, nothing is pickled).

MLflow copies this file into the logged model and runs it on load; ``load_context`` rebuilds the network from the
``config`` and ``weights`` artifacts (see :mod:`transfer.deploy.model_format`), with the unknown detector's arrays
(``ood``) and the ONNX files (``onnx``, ``onnx_int8``, run by ONNX Runtime) when the model carries them. Loading
with ``model_config={"runtime": "torch"}`` runs PyTorch instead, ``{"precision": "fp32"}`` the fp32 graph. It needs
the ``transfer-workbench`` package (``zoo`` and ``transfer.deploy``) where the model is loaded. It reads no file
paths: a served model takes image bytes or base64 only (:mod:`transfer.deploy.classifier`).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """A pyfunc over :class:`transfer.deploy.classifier.ImageClassifier`: raw images in; label, score, unknown,
    ood_score and calibrated probabilities out."""

    classifier: Any = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from transfer.deploy.classifier import ImageClassifier
        from transfer.deploy.model_format import ONNX_ARTIFACTS

        artifacts = context.artifacts
        # Load-time choices (mlflow.pyfunc.load_model(uri, model_config={...})): {"runtime": "torch"} runs PyTorch
        # where the model would run ONNX Runtime; {"precision": "fp32"} the fp32 graph of an int8 model.
        wanted = getattr(context, "model_config", None) or {}
        self.classifier = ImageClassifier.from_files(
            artifacts["config"],
            artifacts["weights"],
            ood_path=artifacts.get("ood"),
            onnx_paths={k: artifacts[f] for k, f in ONNX_ARTIFACTS.items() if f in artifacts},
            runtime=wanted.get("runtime"),
            precision=wanted.get("precision"),
        )

    # MLflow reads the type hint of `model_input`: pd.DataFrame means "validate with the logged signature".
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext | None, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Classify each row of ``model_input`` (column ``image``: bytes or base64 strings).

        Params: ``batch_size`` (images per forward pass).
        """
        batch_size = (params or {}).get("batch_size")
        return self.classifier.predict(model_input, batch_size=int(batch_size) if batch_size else None)


mlflow.models.set_model(ImageClassifierModel())
