"""Deployment: the logged model's format, its inference wrapper, the registry, local prediction and export.

- :mod:`transfer.deploy.model_format`: the config and safetensors a logged model carries, and the network they
  describe;
- :mod:`transfer.deploy.classifier`: :class:`ImageClassifier`, what the pyfunc runs (raw images in, label, score,
  error and probabilities out);
- :mod:`transfer.deploy.pyfunc_model`: the model's code (MLflow *models from code*);
- :mod:`transfer.deploy.calibration`, :mod:`transfer.deploy.ood`: the temperature and the unknown detector;
- :mod:`transfer.deploy.runtime`: the engines (PyTorch, ONNX Runtime fp32 / int8) and choosing one;
- :mod:`transfer.deploy.package`: what a fit's model carries besides its weights, computed after training;
- :mod:`transfer.deploy.card`: the model card;
- :mod:`transfer.deploy.registry`: logging, registering, owners and promotion;
- :mod:`transfer.deploy.predict`: loading a model and ``transfer predict``;
- :mod:`transfer.deploy.export`, :mod:`transfer.deploy.quantize`: ONNX (fp32, int8) and TorchScript.

Training imports only what it needs to log a model; :mod:`transfer.data` imports nothing from here.
"""
