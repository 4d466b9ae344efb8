"""What a fit's deployed model carries besides its weights, computed once after training.

:func:`prepare_deployment` takes the fit's job and the strategy's final model and works out, on the images the
model did not train on (the validation split) and on its training images:

1. the engine it serves with (:func:`transfer.deploy.runtime.choose_runtime`: ONNX Runtime fp32 or int8 when it
   exports and agrees with PyTorch on the validation images, else PyTorch), and that engine's validation outputs;
2. a temperature fitted on those validation logits, with the ECE before and after (cross-fitted) and the
   reliability diagram (:mod:`transfer.deploy.calibration`);
3. the unknown detector: fitted on the training images' penultimate features (from the feature cache when the
   strategy trained on it, else one pass of the deployed network) and thresholded on the validation images' scores
   from the serving engine (:mod:`transfer.deploy.ood`).

The checkpoint is not chosen on the validation images by default (the last epoch's weights are kept) and the
temperature and threshold are fitted on them, so the numbers reported for them are cross-fitted: each half of the
validation images is scored with what the other half chose. A stage probe does pick its stage on the validation
images; its calibration numbers share that optimism (the card says so).

The result, a :class:`Deployment`, is what :func:`transfer.deploy.registry.log_classifier` logs: config keys, files
(the ONNX model, the detector's safetensors), metrics, the diagram and the facts the model card tells.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfer.deploy.calibration import calibrate, diagram
from transfer.deploy.model_format import ServingNet, feature_key
from transfer.deploy.ood import fit_unknown
from transfer.deploy.runtime import Batches, TorchEngine, choose_runtime, int8_calibration_images, run_all
from transfer.layout import channels_last

_log = logging.getLogger(__name__)

RELIABILITY_PNG = "calibration/reliability.png"


@dataclass
class Deployment:
    """What a deployed model carries beyond its network (see the module docstring).

    Attributes:
        config: keys merged into the model config (``temperature``, ``ood``, ``tta``, ``runtime``, ...).
        files: model artifact name -> file (``onnx``, ``ood``).
        metrics: run metrics (ECE before/after, temperature, the detector's operating point, int8 accuracy change).
        plots: run artifact path -> file (the reliability diagram).
        facts: what the model card tells about the data and the training.
    """

    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    _workdir: Any = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """The fields ``run.json``'s result keeps: runtime, precision, temperature, ECEs, the detector's point."""
        ood = self.config.get("ood") or {}
        keys = ("ece_before", "ece_after", "int8_acc_change")
        return {
            "runtime": self.config.get("runtime"),
            "precision": self.config.get("precision"),
            "temperature": self.config.get("temperature"),
            **{k: self.metrics[k] for k in keys if k in self.metrics},
            "ood": ood.get("method", "off"),
            "ood_threshold": ood.get("threshold"),
            "ood_false_alarm_val": ood.get("false_alarm_val"),
        }

    def close(self) -> None:
        """Remove the files (after they were logged)."""
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _tta(recipe: Any) -> str | None:
    tta = getattr(recipe.data, "tta", None)  # data.tta (issue 12); older recipes have none
    return None if tta in (None, "none") else str(tta)


def _loader(job: Any, samples: list[Any]) -> Callable[[], Batches]:
    return lambda: iter(job.dm.loader_of(samples))


def _calibration_sample(job: Any) -> list[Any]:
    """A seeded random sample of training images for int8 calibration (every class, not the first few)."""
    train = list(job.index.train)
    rng = np.random.default_rng(job.recipe.seed)
    keep = rng.permutation(len(train))[: int8_calibration_images(job.data_config["input_size"])]
    return [train[i] for i in sorted(keep)]


def _train_features(job: Any, strategy: Any, net: ServingNet, engine: Any) -> tuple[np.ndarray, np.ndarray]:
    """The training images' penultimate features: cached when the strategy trained on frozen cached features (the
    deployed network computes the same), else one pass of ``engine``, the one the model serves with (None: PyTorch).

    The served engine computes what serving will compare with the index, and ONNX Runtime is the faster pass: 1,438
    digits at 224 px took 11.5-13.1 s with it against 37.9-39.2 s with channels-last PyTorch (features within 2e-5).
    """
    key = feature_key(net.model)
    if strategy.uses_features:
        feats = job.features(per_stage=key != "pre_logits")["train"]
        return feats[key].numpy(), feats["labels"].numpy()
    job.events.phase("evaluate", "Computing the training images' features for unknown detection")
    if engine is not None:
        out = run_all(engine, iter(job.dm.eval_loader("train")))
        return out.features, out.labels
    with channels_last(net.eval(), tuple(job.data_config["input_size"])) as converted:
        out = run_all(TorchEngine(net, converted=converted), iter(job.dm.eval_loader("train")))
    return out.features, out.labels


def prepare_deployment(job: Any, strategy: Any, final: Any) -> Deployment:
    """Everything the deployed model carries besides its weights (see the module docstring).

    Args:
        job: the fit's :class:`~transfer.job.FitJob`.
        strategy: the strategy that trained (its name, reason, and whether it trained on cached features).
        final: the strategy's :class:`~transfer.strategies.base.Final` (the model, on the CPU, in eval mode).
    """
    r = job.recipe
    cfg = r.deploy
    work = tempfile.TemporaryDirectory(prefix="transfer-deploy-")
    d = Deployment({}, _workdir=work, facts=_facts(job, strategy))
    root = Path(work.name)
    try:
        tta = _tta(r)
        net = ServingNet(final.model.eval(), tta)
        job.events.phase("evaluate", "Choosing the runtime of the deployed model")
        metadata = {"class_names": json.dumps(list(job.index.classes)), "backbone": job.spec.name}
        val = _loader(job, list(job.index.val))
        calibration = _loader(job, _calibration_sample(job))
        shape = tuple(int(v) for v in job.data_config["input_size"])
        choice = choose_runtime(net, cfg.runtime, cfg.int8, val, calibration, root, metadata, shape)
        d.config.update(runtime=choice.runtime, precision=choice.precision, runtime_reason=choice.reason)
        d.config.update({"tta": tta} if tta else {})
        d.files.update(choice.files)
        d.metrics.update(choice.metrics)
        _calibrate(d, choice.val, root)
        if cfg.ood != "off":
            job.events.phase("evaluate", "Fitting the unknown detector")
            train_feats, train_labels = _train_features(job, strategy, net, choice.engine)
            unknown = fit_unknown(
                cfg.ood, train_feats, train_labels, choice.val.features, cfg.ood_false_alarm, seed=r.seed
            )
            d.config["ood"] = unknown.config()
            d.files["ood"] = unknown.save(root / "ood.safetensors")
            d.metrics.update(ood_threshold=unknown.threshold, ood_false_alarm_val=unknown.false_alarm_val)
    except BaseException:
        work.cleanup()
        raise
    return d


def _calibrate(d: Deployment, val: Any, root: Path) -> None:
    cal = calibrate(val.logits, val.labels)
    d.config["temperature"] = cal.temperature
    d.metrics.update(cal.metrics())
    d.facts["calibration_note"] = cal.note
    d.facts["calibration_images"] = cal.images
    d.plots[RELIABILITY_PNG] = diagram(cal, val.logits, val.labels, root / "reliability.png")


def _facts(job: Any, strategy: Any) -> dict[str, Any]:
    """What the card says about the data and the training."""
    r = job.recipe
    index = job.index
    pretrained = r.model.pretrained
    weights = Path(pretrained).name if isinstance(pretrained, str) else ("default" if pretrained else "none")
    return {
        "classes": list(index.classes),
        "train_counts": list(index.class_counts("train")),
        "val_counts": list(index.class_counts("val")),
        "source": r.data.source,
        "val_source": r.data.val_source,
        "skipped": [f"{p}: {why}" for p, why in index.skipped],
        "backbone": job.spec.name,
        "paper": f"{job.spec.paper} ({job.spec.year})",
        "weights": weights,
        "image_size": int(job.data_config["input_size"][-1]),
        "strategy": strategy.name,
        "strategy_reason": strategy.reason,
        "epochs": r.trainer.get("max_epochs"),
        "checkpoint": getattr(r.optim, "checkpoint", "best"),
        "ood_setting": r.deploy.ood,
        "false_alarm_target": r.deploy.ood_false_alarm,
    }
