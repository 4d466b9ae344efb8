"""Probes: the backbone stays frozen and linear classifiers train on its features, cached on disk.

- ``linear_probe``: a linear classifier on the pre-logits features (cached when ``strategy.cache_features``).
- ``stage_probe``: a linear probe on the pooled output of every stage, trained together; the stage that scores
  best wins and the deployed model is the backbone cut after it plus its probe.

A probe trains one linear layer on standardised features at :data:`PROBE_LR_SCALE` times ``optim.lr`` (the
recipe's rate is a fine-tuning rate, too timid for one layer); the standardisation is folded into the deployed
layer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from transfer.deploy.model_format import StageClassifier
from transfer.module import StageProbeModule, feature_stats
from transfer.strategies.base import Final, Plan, Strategy, image_logits

_log = logging.getLogger(__name__)

PROBE_LR_SCALE = 3.0  # a probe at 3x optim.lr: 3e-3 by default, the best of 3e-4..1e-2 (bench/results)
PROBE_EPOCHS = 20  # epochs of milliseconds on cached features: 20 beat 5 and 10 (bench/results)


def check_image_only_keys(recipe: Any) -> None:
    """Keys that change the training images cannot apply to cached features."""
    for key, on in (("optim.mixup", recipe.optim.mixup), ("optim.cutmix", recipe.optim.cutmix)):
        if on:
            raise recipe.error(
                key,
                "mixes training images, but this probe trains on cached features; use a "
                "fine-tuning strategy, or linear_probe with strategy.cache_features: false",
            )
    if recipe.data.progressive:
        raise recipe.error(
            "data.progressive",
            "resizes training images, but probes train on cached features; use full, partial or gradual",
        )


class LinearProbe(Strategy):
    """Frozen backbone, trainable classifier, on cached features when ``strategy.cache_features``."""

    name = "linear_probe"
    default_epochs = PROBE_EPOCHS
    trains_batchnorm = False
    summary = "Frozen backbone, features computed once and cached; only a linear classifier trains. Fastest."
    setting = "strategy.cache_features"

    @property
    def uses_features(self) -> bool:  # type: ignore[override]
        return bool(self.cfg.cache_features)

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        super().check_recipe(recipe)
        if recipe.strategy.cache_features:
            check_image_only_keys(recipe)

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return {"classifier"}

    def lr_scale(self, unit: str) -> float:
        return PROBE_LR_SCALE

    def build(self, job: Any) -> Plan:
        if not self.uses_features:
            return super().build(job)
        self.prepare_model(job)
        feats = job.features(per_stage=False)
        tensors = {s: [feats[s]["pre_logits"], feats[s]["labels"]] for s in ("train", "val")}
        module = self.classifier_module(job, features=True, feature_norm=feature_stats(feats["train"]["pre_logits"]))
        train, val = job.tensor_loaders(tensors)
        fit_kwargs = {"train_dataloaders": train, "val_dataloaders": val}
        return Plan(module, fit_kwargs, *self.count_params(job.model), params=job.cache_params())

    def finalise(self, job: Any, plan: Plan) -> Final:
        if not self.uses_features:
            return super().finalise(job, plan)
        module = plan.module.cpu().eval()
        module.fold_feature_norm()
        if job.recipe.data.tta != "none":  # the mirrored images have no cached features: the model runs on images
            return Final(job.model.eval(), *image_logits(job.model, job))
        logits, labels = module.predict_logits(plan.fit_kwargs["val_dataloaders"])
        return Final(job.model.eval(), logits.numpy(), labels.numpy())


class StageProbe(Strategy):
    """A linear probe per stage on cached pooled features; the backbone never trains."""

    name = "stage_probe"
    default_epochs = PROBE_EPOCHS
    trains_batchnorm = False
    summary = "A linear classifier on every stage's features; keeps the stage that transfers best."
    uses_features = True

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        super().check_recipe(recipe)
        check_image_only_keys(recipe)

    def trainable_at(self, epoch: int, n_stages: int) -> set[str]:
        return set()  # the probes live outside the backbone

    def build(self, job: Any) -> Plan:
        self.prepare_model(job)
        assert self.units is not None
        n = self.units.num_stages
        feats = job.features(per_stage=True)
        tensors = {s: [feats[s][f"stage{i}"] for i in range(n)] + [feats[s]["labels"]] for s in ("train", "val")}
        module = StageProbeModule(
            [int(feats["train"][f"stage{i}"].shape[1]) for i in range(n)],
            job.num_classes,
            optim=job.recipe.optim,
            batch_size=job.recipe.data.batch_size,
            class_weights=job.class_weights(),
            stats=[feature_stats(feats["train"][f"stage{i}"]) for i in range(n)],
            lr_scale=PROBE_LR_SCALE,
        )
        train, val = job.tensor_loaders(tensors)
        trainable = sum(p.numel() for p in module.probes.parameters())
        total = sum(p.numel() for p in job.model.parameters())
        return Plan(module, {"train_dataloaders": train, "val_dataloaders": val}, trainable, total, job.cache_params())

    def finalise(self, job: Any, plan: Plan) -> Final:
        module = plan.module.cpu().eval()
        val = plan.fit_kwargs["val_dataloaders"]
        with torch.inference_mode():
            batches = [(module(list(f)), f, y) for *f, y in val]
        labels = torch.cat([y for *_, y in batches])
        per_stage = [torch.cat([b[0][i] for b in batches]) for i in range(len(module.dims))]
        accs = [float((lg.argmax(1) == labels).float().mean()) for lg in per_stage]
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))
        final = StageClassifier(job.model, best + 1, job.num_classes, in_features=module.dims[best])
        final.classifier.load_state_dict(module.deployable_probe(best).state_dict())
        # The reported logits come from the deployable probe on raw features (they check the folding too), or from
        # the whole deployable model on the images when the recipe asks for test-time augmentation.
        with torch.inference_mode():
            logits = final.classifier(torch.cat([b[1][best] for b in batches])).numpy()
        if job.recipe.data.tta != "none":
            logits = image_logits(final, job)[0]
        _log.info("stage probe accuracy per stage: %s; best stage %d", ", ".join(f"{a:.3f}" for a in accs), best)
        stage_acc = {f"stage{i}": round(a, 4) for i, a in enumerate(accs)}
        report = {"stage_accuracy": stage_acc, "best_stage": best}
        return Final(
            final.eval(),
            logits,
            labels.numpy().astype(np.int64),
            report,
            {"best_stage": best},
            artifacts={"stage_probe.json": stage_acc},
        )
