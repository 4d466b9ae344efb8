"""The code of the logged image classifier (MLflow "models from code": this file is the model, nothing is pickled).

MLflow copies this file into the logged model and runs it on load; ``load_context`` rebuilds the network from the
``config`` and ``weights`` artifacts (see :mod:`transfer.deploy.model_format`). It needs the ``transfer-workbench``
package (``zoo`` and ``transfer.deploy``) where the model is loaded. It reads no file paths: a served model takes
image bytes or base64 only (:mod:`transfer.deploy.classifier`).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """A pyfunc over :class:`transfer.deploy.classifier.ImageClassifier`: raw images in, label, score,
    probabilities out."""

    classifier: Any = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from transfer.deploy.classifier import ImageClassifier

        self.classifier = ImageClassifier.from_files(context.artifacts["config"], context.artifacts["weights"])

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
