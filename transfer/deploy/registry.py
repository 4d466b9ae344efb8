"""Logging a classifier as a raw-image MLflow pyfunc, registering versions, and moving the alias.

The logged model is built with MLflow's *models from code* (:mod:`transfer.deploy.pyfunc_model` is the model's
code; nothing is pickled) and carries the ``weights`` (safetensors) and ``config`` artifacts of
:mod:`transfer.deploy.model_format`. Every call goes through a :class:`~transfer.tracking.TrackingStore`, which is
the only code that touches MLflow's process state.

Ownership: a registered model may carry the tag ``transfer.owner`` (the web page sets it to the visitor). Registering
a new version under a name owned by someone else is refused.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torch import nn

from transfer.deploy.card import CARD_FILE, model_card
from transfer.deploy.classifier import IMAGE_COLUMN, PROB_PREFIX
from transfer.deploy.model_format import ONNX_ARTIFACTS, model_config
from transfer.deploy.package import Deployment
from transfer.errors import UserError
from transfer.tracking import TrackingStore, one_line

_log = logging.getLogger(__name__)

PROMOTE_METRIC = "val_acc"
PROMOTE_POLICIES = ("always", "if_better")
OWNER_TAG = "transfer.owner"
_PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
# What the fit-time audit logs in the fit's run (transfer.audit.fit): its metrics' prefix and its JSON report.
AUDIT_METRIC_PREFIX = "audit_"
AUDIT_REPORT = "audit/audit.json"


@dataclass
class ModelLogResult:
    """What :func:`log_classifier` logged.

    Attributes:
        model_uri: ``runs:/<run_id>/<artifact_path>``.
        registered_uri: ``models:/<name>/<version>`` when registered, else None.
        version: the registered version, else None.
        promoted: whether the alias now points at this version.
    """

    model_uri: str
    registered_uri: str | None = None
    version: int | None = None
    promoted: bool = False


def _signature(class_names: Sequence[str], batch_size: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", IMAGE_COLUMN)])
    outputs = Schema(
        [
            ColSpec("string", "label", required=False),
            ColSpec("double", "score", required=False),
            ColSpec("string", "error", required=False),
            ColSpec("boolean", "unknown", required=False),
            ColSpec("double", "ood_score", required=False),
            *(ColSpec("double", f"{PROB_PREFIX}{c}", required=False) for c in class_names),
        ]
    )
    params = ParamSchema([ParamSpec("batch_size", "long", batch_size)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _example_image_b64(data_config: dict[str, Any]) -> str:
    """A small PNG (a grey gradient) as base64: the logged input example."""
    _, h, w = data_config["input_size"]
    h, w = max(8, min(int(h), 64)), max(8, min(int(w), 64))
    ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, axis=0)
    buf = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp, ramp], axis=-1)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _requirements(config: dict[str, Any]) -> list[str]:
    from importlib import metadata

    def pin(dist: str) -> str:
        try:
            return f"{dist}=={metadata.version(dist).split('+')[0]}"
        except metadata.PackageNotFoundError:
            return dist

    # Explicit pins: inferring requirements would import the model in a subprocess (slow). The model's code
    # needs the transfer-workbench package (zoo + transfer.deploy) installed where it is loaded.
    dists = ["mlflow", "torch", "safetensors", "pillow", "numpy", "pandas", "transfer-workbench"]
    if config.get("runtime") == "onnx":
        dists.append("onnxruntime")
    return [pin(d) for d in dists]


def _cpu_copy(model: nn.Module) -> nn.Module:
    first = next(model.parameters(), None)
    if first is None or first.device.type == "cpu":
        return model
    import copy

    return copy.deepcopy(model).cpu()


def log_classifier(
    model: nn.Module,
    *,
    store: TrackingStore,
    run_id: str,
    backbone: str,
    class_names: list[str],
    data_config: dict,
    artifact_path: str = "model",
    registered_model_name: str | None = None,
    alias: str | None = "champion",
    promote: str = "always",
    metrics: dict[str, float] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    deployment: Deployment | None = None,
) -> ModelLogResult:
    """Log a trained classifier as a raw-image MLflow pyfunc in run ``run_id``, and optionally register it.

    Args:
        model: a zoo backbone with its classifier for ``len(class_names)`` classes, or a stage classifier.
        store: the tracking store of the run.
        run_id: the run the model belongs to.
        backbone: the zoo name the model was built from.
        class_names: class names in logit order.
        data_config: eval preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
            ``crop_mode``).
        artifact_path: name of the logged model in the run.
        registered_model_name: register a new version of this registered model when given.
        alias: alias to point at the new version (``None``: none).
        promote: ``always`` moves the alias; ``if_better`` only when ``val_acc`` beats the alias holder's.
        metrics: metrics to tag the version with (default: the run's latest metrics).
        model_kwargs: extra keyword arguments the backbone was created with (``zoo.create_model``).
        deployment: what the model carries besides its weights (:func:`transfer.deploy.package.prepare_deployment`:
            temperature, unknown detector, ONNX runtime); its metrics, reliability diagram and the model card are
            logged to the run, and the card becomes the registered version's description. None: a plain PyTorch
            model, uncalibrated, without a detector.

    Raises:
        UserError: bad arguments, or the registry refuses.
    """
    if promote not in PROMOTE_POLICIES:
        raise UserError(f"promote must be one of {', '.join(PROMOTE_POLICIES)}, got {promote!r}")
    config = model_config(model, backbone, class_names, data_config, model_kwargs)
    config.update(deployment.config if deployment else {})
    if metrics is None:
        metrics = dict(store.client.get_run(run_id).data.metrics)
    card = None
    with tempfile.TemporaryDirectory(prefix="transfer-model-") as tmp:
        artifacts = _write_artifacts(model, config, deployment, Path(tmp))
        if deployment is not None:
            metrics = {**metrics, **deployment.metrics}
            card = _log_deployment(store, run_id, registered_model_name or backbone, deployment, metrics, artifacts)
            artifacts["model_card"] = str(_write(Path(tmp, CARD_FILE), card))
        info = _log_pyfunc(store, run_id, artifact_path, config, artifacts)
    result = ModelLogResult(model_uri=f"runs:/{run_id}/{artifact_path}")
    _log.info("logged model %s (%s)", result.model_uri, info.model_uri)
    if registered_model_name:
        tags = {"backbone": config["backbone"], "num_classes": str(len(class_names)), "run_id": run_id}
        tags.update({k: str(config[k]) for k in ("runtime", "precision") if k in config})
        # The logged model's own URI (models:/m-...): MLflow 3 keeps logged models outside the run's artifacts.
        result.version, result.promoted = register(
            store,
            info.model_uri,
            registered_model_name,
            alias=alias,
            promote=promote,
            metrics=metrics,
            tags=tags,
            description=card,
        )
        result.registered_uri = f"models:/{registered_model_name}/{result.version}"
    return result


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_artifacts(model: nn.Module, config: dict, deployment: Deployment | None, tmp: Path) -> dict[str, str]:
    """The model's artifacts as files: weights (safetensors), config (JSON), and the deployment's files."""
    from safetensors.torch import save_model

    weights, cfg = tmp / "model.safetensors", tmp / "config.json"
    was_training = model.training
    save_model(_cpu_copy(model.eval()), str(weights))  # on the CPU: the weights do not say where it trained
    model.train(was_training)
    cfg.write_text(json.dumps(config, indent=1))
    files = {name: str(path) for name, path in (deployment.files if deployment else {}).items()}
    return {"weights": str(weights), "config": str(cfg), **files}


def _log_pyfunc(store: TrackingStore, run_id: str, artifact_path: str, config: dict, artifacts: dict) -> Any:
    import mlflow

    with store.activated(), _run(run_id):
        return mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=str(_PYFUNC_MODEL_FILE),
            artifacts=artifacts,
            signature=_signature(config["class_names"], config["batch_size"]),
            input_example=pd.DataFrame({IMAGE_COLUMN: [_example_image_b64(config["data_config"])]}),
            pip_requirements=_requirements(config),
            metadata={k: config[k] for k in ("backbone", "num_classes", "runtime", "precision") if k in config},
            # What a caller may override at load time (mlflow.pyfunc.load_model(uri, model_config={...})).
            model_config={"runtime": config.get("runtime", "torch"), "precision": config.get("precision", "fp32")},
        )


def _log_deployment(
    store: TrackingStore, run_id: str, name: str, d: Deployment, metrics: dict[str, float], artifacts: dict
) -> str:
    """Measure the logged model's latency; log the deployment's metrics, plots and model card; return the card."""
    from mlflow.entities import Metric

    latency = measure_latency(artifacts)
    timed = {k: v for k, v in latency.items() if isinstance(v, float)}
    facts = {**d.facts, "audit": audit_findings(store, run_id)}
    card = model_card(name, facts, {**metrics, **timed}, json.loads(Path(artifacts["config"]).read_text()), latency)
    logged = [Metric(k, float(v), 0, 0) for k, v in {**d.metrics, **timed}.items() if v == v]  # NaN: not measured
    store.client.log_batch(run_id, metrics=logged)
    for path, file in d.plots.items():
        store.client.log_artifact(run_id, str(file), str(Path(path).parent) if "/" in path else None)
    store.client.log_text(run_id, card, CARD_FILE)
    return card


def audit_findings(store: TrackingStore, run_id: str) -> dict[str, Any] | None:
    """What the fit-time audit (:mod:`transfer.audit.fit`) logged in ``run_id``: its ``audit_*`` metrics as
    ``counts`` (name without the prefix -> value) and the verdict lines of its ``audit/audit.json``; None when the
    run has no audit."""
    metrics = store.client.get_run(run_id).data.metrics
    counts = {
        k.removeprefix(AUDIT_METRIC_PREFIX): v for k, v in sorted(metrics.items()) if k.startswith(AUDIT_METRIC_PREFIX)
    }
    if not counts:
        return None
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="transfer-audit-") as tmp, contextlib.suppress(Exception):
        report = json.loads(Path(store.client.download_artifacts(run_id, AUDIT_REPORT, tmp)).read_text("utf-8"))
        verdicts = [str(v) for v in report.get("verdicts") or []]
    return {"counts": counts, "verdicts": verdicts}


def measure_latency(artifacts: dict[str, str], rounds: int = 5) -> dict[str, Any]:
    """How fast the logged model answers on this machine's CPU, decoding included: the median time of one image
    (ms) and the images/s of a batch of 32 (a real photo, scikit-image's ``chelsea``, as a JPEG)."""
    import statistics
    import time

    import torch

    from transfer.deploy.classifier import ImageClassifier

    clf = ImageClassifier.from_files(
        artifacts["config"],
        artifacts["weights"],
        device="cpu",
        ood_path=artifacts.get("ood"),
        onnx_paths={k: artifacts[f] for k, f in ONNX_ARTIFACTS.items() if f in artifacts},
    )
    image = _example_photo()

    def median_s(n: int, reps: int) -> float:
        clf.predict([image] * n)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            clf.predict([image] * n)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    one, batch = median_s(1, rounds), median_s(32, max(1, rounds // 2))
    return {
        "latency_ms_b1": 1000.0 * one,
        "images_per_s_b32": 32 / batch,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "runtime": clf.runtime,
    }


def _example_photo() -> bytes:
    """A real photo as JPEG bytes (scikit-image's chelsea, 451x300)."""
    from skimage.data import chelsea

    buf = io.BytesIO()
    Image.fromarray(chelsea()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@contextlib.contextmanager
def _run(run_id: str) -> Any:
    """The fluent run ``run_id`` (already active in a fit; reopened for a model logged afterwards)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield active
    else:
        with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
            yield run


def check_owner(store: TrackingStore, name: str, owner: str | None) -> None:
    """Refuse when registered model ``name`` exists and belongs to someone other than ``owner``.

    Raises:
        UserError: the name is taken by another owner.
    """
    if owner is None:
        return
    from mlflow.exceptions import MlflowException

    try:
        current = (store.client.get_registered_model(name).tags or {}).get(OWNER_TAG)
    except MlflowException:
        return  # no such model yet: it will be this owner's
    if current != owner:
        raise UserError(f"the model name {name!r} is taken by someone else; choose another name")


def register(
    store: TrackingStore,
    model_uri: str,
    name: str,
    *,
    alias: str | None = "champion",
    promote: str = "always",
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    owner: str | None = None,
    description: str | None = None,
) -> tuple[int, bool]:
    """Register a logged model (``runs:/RUN/model`` or ``models:/m-...``) as a new version of ``name``, tagged with
    its metrics (default: its run's) and ``tags``; move ``alias`` per ``promote``. The version's description is
    ``description``, else the model card its run logged (``model_card.md``), when there is one.

    Returns:
        (version, whether the alias moved to it).

    Raises:
        UserError: the store or the registry refuses, or ``name`` belongs to another ``owner``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    check_owner(store, name, owner)
    try:
        if metrics is None:
            metrics, run_tags = _run_facts(store, model_uri)
            tags = {**run_tags, **(tags or {})}
        version_tags = {**{k: str(v) for k, v in metrics.items()}, **(tags or {})}
        with store.activated():
            mv = mlflow.register_model(model_uri, name, tags=version_tags)
        card = description if description is not None else _logged_card(store, model_uri)
        if card:
            store.client.update_model_version(name, mv.version, description=card)
        if owner is not None:
            store.client.set_registered_model_tag(name, OWNER_TAG, owner)
        promoted = bool(alias) and should_promote(store, name, str(alias), promote, metrics)
        if promoted:
            store.client.set_registered_model_alias(name, alias, mv.version)
            _log.info("alias %s@%s -> version %s", name, alias, mv.version)
    except MlflowException as exc:
        raise UserError(f"could not register {model_uri} as {name!r}: {one_line(exc)}") from exc
    return int(mv.version), promoted


def _logged_card(store: TrackingStore, model_uri: str) -> str | None:
    """The model card logged with the run of ``runs:/RUN/...`` or of a logged model ``models:/m-...``, if any."""
    run_id = None
    with contextlib.suppress(Exception):
        if model_uri.startswith("runs:/"):
            run_id = model_uri.split("/")[1]
        elif model_uri.startswith("models:/m-"):
            run_id = store.client.get_logged_model(model_uri.removeprefix("models:/").split("/")[0]).source_run_id
    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="transfer-card-") as tmp, contextlib.suppress(Exception):
        return Path(store.client.download_artifacts(run_id, CARD_FILE, tmp)).read_text(encoding="utf-8")
    return None


def _run_facts(store: TrackingStore, model_uri: str) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and (backbone, run id) tags of the run a ``runs:/`` model belongs to; nothing for others."""
    if not model_uri.startswith("runs:/"):
        return {}, {}
    run_id = model_uri.split("/")[1]
    run = store.client.get_run(run_id)
    tags = {"run_id": run_id, **({"backbone": run.data.params["backbone"]} if "backbone" in run.data.params else {})}
    return dict(run.data.metrics), tags


def _metric_of_version(store: TrackingStore, version: Any, key: str) -> float | None:
    value = (version.tags or {}).get(key)
    if value is not None:
        with contextlib.suppress(ValueError):
            return float(value)
    if version.run_id:
        with contextlib.suppress(Exception):
            metric = store.client.get_run(version.run_id).data.metrics.get(key)
            return None if metric is None else float(metric)
    return None


def should_promote(store: TrackingStore, name: str, alias: str, promote: str, metrics: dict[str, float]) -> bool:
    """Whether the alias moves to a new version with ``metrics`` (``always``, or ``if_better`` on ``val_acc``)."""
    if promote == "always":
        return True
    from mlflow.exceptions import MlflowException

    try:
        current = store.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        _log.info("no version of %s has alias %s yet: promoting", name, alias)
        return True
    new, old = metrics.get(PROMOTE_METRIC), _metric_of_version(store, current, PROMOTE_METRIC)
    if new is None:
        _log.warning("not promoting: the new version has no %s to compare with version %s", PROMOTE_METRIC, current)
        return False
    if old is None:
        _log.info("version %s of %s has no %s: promoting", current.version, name, PROMOTE_METRIC)
        return True
    better = float(new) > old
    verdict = "promoting" if better else f"keeping the current {alias}"
    _log.info("%s %.4f vs %.4f of version %s: %s", PROMOTE_METRIC, float(new), old, current.version, verdict)
    return better
