"""Know your data before you train: duplicates, leakage, label errors, outliers, balance, and how much more data helps.

>>> from transfer.audit import audit_target
>>> report, job = audit_target("my_photos/", pretrained="/path/mobilenet_v2-b0353104.pth")
>>> report.leaks, report.label_issues[:5], report.verdicts

:func:`audit` works on a prepared fit (:class:`transfer.job.FitJob`): the frozen features come from the job's
feature cache under the key a ``linear_probe`` fit uses, so ``transfer fit`` computes them once for both. One pass
over the files (:mod:`~transfer.audit.scan`) adds content hashes, perceptual hashes and header facts; then
:mod:`~transfer.audit.duplicates` (exact, near, leaks), :mod:`~transfer.audit.labels` (cleanlab on a cross-validated
probe), :mod:`~transfer.audit.outliers` and :mod:`~transfer.audit.curves` (learning curves and the forecast) each
add their findings to an :class:`AuditReport`, which :mod:`~transfer.audit.report` shows (terminal, JSON,
Markdown, HTML with thumbnails). ``transfer fit`` runs it first (``data.audit``: :mod:`~transfer.audit.fit`); the
page shows it and writes a cleaned copy (:mod:`~transfer.audit.clean`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.audit.findings import AuditReport, verdicts

_log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenetv2_100"  # the audit's backbone when a plain data source is given
AUDIT_TEXT = "Checking the data: duplicates, leaks, labels, outliers"


def _counts(samples: list[tuple[str, int]], classes: list[str]) -> dict[str, int]:
    c = Counter(label for _, label in samples)
    return {name: c[i] for i, name in enumerate(classes)}


def fit_features(job: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The frozen features of the job's train and val splits: those the fit already computed when they hold the
    pre-logits (a linear or a stage probe's; the cache's last key), else the linear probe's through the cache."""
    key = job.cache.last_key
    cached = job.cache.load(key) if key else None
    if cached and all("pre_logits" in cached.get(split, {}) for split in ("train", "val")):
        return cached
    return job.features(per_stage=False)


def audit(job: Any, *, curves: bool = True) -> AuditReport:
    """Audit the data of a prepared fit (see the module docstring).

    Args:
        job: a :class:`transfer.job.FitJob` (its index, backbone, preprocessing and feature cache).
        curves: also measure the learning curve and forecast (a few seconds more).
    """
    from transfer.audit import curves as lc
    from transfer.audit import duplicates, labels, outliers
    from transfer.audit.scan import image_stats, scan_files
    from transfer.reports import wilson_interval

    index, seed, classes = job.index, job.recipe.seed, job.index.classes
    feats = fit_features(job)
    job.events.phase("audit", AUDIT_TEXT)
    facts = scan_files([(p, lab, "train") for p, lab in index.train] + [(p, lab, "val") for p, lab in index.val])
    x = torch.cat([feats["train"]["pre_logits"], feats["val"]["pre_logits"]]).float()
    xn = torch.nn.functional.normalize(x, dim=1)
    y = np.array([f.label for f in facts])
    thr = duplicates.calibrate(facts, xn, job.model, job.data_config, seed=seed)
    exact = duplicates.exact_groups(facts)
    near = duplicates.connected(duplicates.near_pairs(facts, xn, thr, exact))
    issues, probs = labels.label_issues(x, y, len(classes), seed=seed)
    far = outliers.feature_outliers(x)
    correct = int((probs.argmax(1) == y).sum())
    low, high = wilson_interval(correct, len(y))
    report = AuditReport(
        source=index.source,
        backbone=f"{job.spec.name} ({job.recipe.model.pretrained})",
        classes=_counts(index.train + index.val, classes),
        split_counts={"train": _counts(index.train, classes), "val": _counts(index.val, classes)},
        exact_duplicates=[duplicates.describe_group(facts, g, 1.0, classes) for g in exact],
        near_duplicates=[duplicates.describe_group(facts, g, s, classes) for g, s in near],
        leaks=duplicates.leaks(facts, [*exact, *(g for g, _ in near)]),
        label_issues=[
            {
                "path": facts[i.index].path,
                "given": classes[i.given],
                "suggested": classes[i.suggested],
                "score": i.score,
                "split": facts[i.index].split,
            }
            for i in issues
        ],
        outliers=[facts[i].path for i, _ in far],
        outlier_distance={facts[i].path: d for i, d in far},
        unreadable=[p for p, _ in index.skipped] + [f.path for f in facts if f.error],
        unreadable_reasons={p: why for p, why in index.skipped} | {f.path: f.error for f in facts if f.error},
        odd_images=[{"path": facts[i].path, "why": why} for i, why in outliers.picture_problems(facts)],
        stats=image_stats(facts),
        probe={"accuracy": round(correct / max(1, len(y)), 4), "low": round(low, 4), "high": round(high, 4)},
        thresholds={**thr.to_dict(), "outlier_distance": outliers.OUTLIER_DISTANCE},
    )
    if curves:
        ntr = len(index.train)
        train_y, val_y = y[:ntr], y[ntr:]
        report.learning_curve = lc.measure(x[:ntr], train_y, x[ntr:], val_y, classes, seed=seed).to_dict()
    report.verdicts = verdicts(report)
    return report


def recipe_for(
    target: str,
    *,
    val_source: str | None = None,
    backbone: str | None = None,
    pretrained: bool | str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Any:
    """The recipe an audit (or a recommendation) runs on: ``target`` as a recipe file, or as a data source with the
    given backbone (default :data:`DEFAULT_BACKBONE`, pretrained)."""
    from transfer.recipe import load_recipe

    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false"):  # --pretrained false
        pretrained = pretrained.lower() == "true"
    if Path(target).suffix.lower() in (".yaml", ".yml"):
        extra = [f"data.val_source={val_source}"] if val_source else []
        extra += [f"model.backbone={backbone}"] if backbone else []
        extra += [f"model.pretrained={pretrained}"] if pretrained is not None else []
        return load_recipe(target, [*extra, *overrides])
    model = {"backbone": backbone or DEFAULT_BACKBONE, "pretrained": True if pretrained is None else pretrained}
    return load_recipe({"data": {"source": target, "val_source": val_source}, "model": model}, overrides)


def audit_target(target: str, *, curves: bool = True, **kwargs: Any) -> tuple[AuditReport, Any]:
    """Audit a recipe file or a data source (keyword arguments as :func:`recipe_for`); returns the report and the
    prepared job (its backbone and preprocessing make the thumbnails and the cleaned copy).

    Raises:
        UserError: bad recipe, data source or backbone (one line).
    """
    from transfer.job import check_model_keys, prepare
    from transfer.progress import Events

    recipe = recipe_for(target, **kwargs)
    check_model_keys(recipe)
    job = prepare(recipe, Events(None))
    return audit(job, curves=curves), job


__all__ = ["AuditReport", "audit", "audit_target", "recipe_for"]
