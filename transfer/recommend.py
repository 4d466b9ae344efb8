"""``transfer recommend``: rank pretrained backbones on the user's own data, not by their ImageNet top-1.

ImageNet accuracy is a poor guide to how well a backbone's features transfer (Kornblith et al. 2019, "Do Better
ImageNet Models Transfer Better?"; Fang et al. 2023, "Does progress on ImageNet transfer to real-world datasets?").
So each candidate's frozen features are computed on the data (through the feature cache, under the key a
``linear_probe`` fit of that backbone uses, so the fit that follows reuses them) and scored by a linear probe
trained on the recipe's training split and measured on its validation split (the ranking, with its 95% Wilson
interval: the number a fit of the recipe reports), a cross-validated probe over all the images (the steadier
estimate, shown beside it) and a k-nearest-neighbour classifier, beside its parameters, multiply-adds and measured
CPU latency.

Why the recipe's split ranks and not the cross-validation: the fit is judged on that split, and on a few hundred
images which images sit in it moves accuracy by several points per backbone (digits, 100 a class: ImageNet
MobileNetV2 90% cross-validated but 86% on the split's images, an MNIST LeNet-5 87% and 91%), so a ranking by
cross-validation alone named a backbone whose fit then scored 4 points below the other.

A candidate is a set of weights, not a name: timm's and torchvision's weights of one architecture are two
candidates, and so are pretrained and random weights.

Candidates: those given (``--candidate NAME[=PRETRAINED]``), else every zoo architecture whose weights are on this
machine already (the Hugging Face hub cache for timm's, the torch hub cache for torchvision's), smallest first,
until the time budget is spent. ``model.backbone: auto`` in a recipe is resolved here (:func:`resolve_auto`).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.errors import UserError

_log = logging.getLogger(__name__)

AUTO = "auto"
BUDGET_S = 900.0  # seconds of measuring; candidates left when it is spent are listed as not measured
KNN = 10
LATENCY_RUNS = 5


@dataclass(frozen=True)
class Candidate:
    """A backbone and its weights (``pretrained`` as :func:`zoo.create_model` takes it)."""

    backbone: str
    pretrained: bool | str

    @property
    def label(self) -> str:
        weights = Path(self.pretrained).name if isinstance(self.pretrained, str) else self.pretrained
        return f"{self.backbone} ({'random init' if weights is False else weights})"


@dataclass
class Score:
    """One candidate measured (or why not)."""

    candidate: Candidate
    probe_acc: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    cv_acc: float = float("nan")
    knn_acc: float = float("nan")
    params: int = 0
    macs: int = 0
    latency_ms: float = float("nan")
    seconds: float = 0.0
    status: str = "measured"
    within_noise: bool = False


@dataclass
class Recommendation:
    """Candidates ranked by the probe's accuracy, the choice first."""

    scores: list[Score]
    source: str
    budget_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Score | None:
        return self.scores[0] if self.scores and self.scores[0].status == "measured" else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "source": self.source,
            "choice": asdict(best.candidate) if best else None,
            "candidates": [{**asdict(s), "candidate": s.candidate.label, **asdict(s.candidate)} for s in self.scores],
            "budget_s": self.budget_s,
            "notes": self.notes,
        }


def _cached_timm(spec: Any) -> list[str]:
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(spec.timm, allow_unregistered=False) if spec.timm else None
    if cfg is None:
        return []
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return ["timm"] if any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, n), str) for n in names) else []
    return ["timm"] if cfg.url and (_hub_checkpoints() / Path(cfg.url).name).is_file() else []


def _cached_torchvision(spec: Any) -> list[str]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(spec.torchvision)
    return [f"torchvision:{w.name}" for w in enum if (_hub_checkpoints() / Path(w.url).name).is_file()]


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# weight source -> the ``pretrained`` values of an architecture whose weights this machine holds already
CACHED_WEIGHTS = {"timm": _cached_timm, "torchvision": _cached_torchvision}


def available_candidates() -> list[Candidate]:
    """Every zoo architecture's weights that this machine holds already (no download), smallest model first."""
    import zoo

    found = []
    for name in sorted(zoo.list_models(), key=lambda n: zoo.get_spec(n).num_params):
        spec = zoo.get_spec(name)
        for source in spec.weight_sources:
            try:
                found += [Candidate(name, weights) for weights in CACHED_WEIGHTS[source](spec)]
            except Exception as exc:  # a library that cannot say: the candidate is simply not offered
                _log.debug("cannot check the %s weights of %s: %s", source, name, exc)
    return found


def parse_candidate(text: str) -> Candidate:
    """``NAME`` (its default pretrained weights) or ``NAME=PRETRAINED`` (``false``, ``timm``, a file, ``pkg:...``)."""
    import yaml

    name, sep, weights = text.partition("=")
    value: Any = yaml.safe_load(weights) if sep and weights.strip() else True
    if not name.strip() or not isinstance(value, bool | str):
        raise UserError(f"--candidate {text}: write NAME or NAME=WEIGHTS (true, false, timm, torchvision, a file)")
    return Candidate(name.strip(), value)


def _cost(model: torch.nn.Module, data_config: dict[str, Any]) -> tuple[int, float]:
    """(multiply-adds of one image, median CPU latency in ms at batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *(int(v) for v in data_config["input_size"]))
    model = model.cpu().eval()
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x)
        times = []
        for _ in range(LATENCY_RUNS + 1):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return counter.get_total_flops() // 2, 1000 * statistics.median(times[1:])


def _knn_accuracy(x: torch.Tensor, y: np.ndarray, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    folds = int(min(5, np.bincount(y).min()))
    if folds < 2:
        return float("nan")
    knn = KNeighborsClassifier(n_neighbors=min(KNN, len(y) // 2), metric="cosine")
    pred = cross_val_predict(knn, x.numpy(), y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float((pred == y).mean())


def score(recipe: Any, index: Any, candidate: Candidate) -> Score:
    """Measure one candidate on the recipe's data (features through the recipe's feature cache)."""
    from transfer.audit.probe import fit_probe, out_of_fold
    from transfer.data import ImageDataModule
    from transfer.features import FeatureCache
    from transfer.job import FitJob, create_model, data_config, on_gpu
    from transfer.progress import Events
    from transfer.reports import wilson_interval
    from transfer.sources import cache_root

    start = time.monotonic()
    r = recipe.model_copy(deep=True)
    r.model.backbone, r.model.pretrained = candidate.backbone, candidate.pretrained
    with torch.random.fork_rng():  # random weights the same every time (and the caller's generator untouched)
        torch.manual_seed(r.seed)
        model, spec = create_model(r, index.num_classes)
    cfg = data_config(r, spec)
    dm = ImageDataModule(index, cfg, augment="none", batch_size=r.data.batch_size, num_workers=r.data.num_workers)
    job = FitJob(r, spec, model, index, cfg, dm, FeatureCache(cache_root(r.data.cache_dir)), "none", Events(None))
    job.on_gpu = on_gpu(r)
    feats = job.features(per_stage=False)
    x = torch.cat([feats["train"]["pre_logits"], feats["val"]["pre_logits"]]).float()
    y = np.array([lab for _, lab in index.train + index.val])
    cv = float((out_of_fold(x, y, index.num_classes, seed=r.seed).argmax(1) == y).mean())
    ntr = len(index.train)
    probe = fit_probe(x[:ntr], y[:ntr], index.num_classes)
    correct = int((probe(x[ntr:]).argmax(1).numpy() == y[ntr:]).sum())
    low, high = wilson_interval(correct, len(y) - ntr)
    macs, latency = _cost(model, cfg)
    return Score(
        candidate,
        probe_acc=round(correct / max(1, len(y) - ntr), 4),
        low=round(low, 4),
        high=round(high, 4),
        cv_acc=round(cv, 4),
        knn_acc=round(_knn_accuracy(torch.nn.functional.normalize(x, dim=1), y, r.seed), 4),
        params=sum(p.numel() for p in model.parameters()),
        macs=int(macs),
        latency_ms=round(latency, 2),
        seconds=round(time.monotonic() - start, 1),
    )


def rank(scores: list[Score]) -> list[Score]:
    """Measured candidates by the probe's validation accuracy (cross-validated, then kNN, accuracy break ties),
    then the rest; each measured candidate whose 95% interval overlaps the best's is marked within noise of it."""
    measured = [s for s in scores if s.status == "measured"]
    measured.sort(key=lambda s: (-s.probe_acc, -s.cv_acc, -s.knn_acc))
    if measured:
        best = measured[0]
        for s in measured[1:]:
            s.within_noise = s.high >= best.low
    return measured + [s for s in scores if s.status != "measured"]


def recommend(recipe: Any, candidates: list[Candidate] | None = None, budget_s: float = BUDGET_S) -> Recommendation:
    """Rank ``candidates`` (default: :func:`available_candidates`) on the recipe's data within ``budget_s``.

    Raises:
        UserError: bad data, or no candidate at all.
    """
    from transfer.job import dataset_index

    index = dataset_index(recipe)
    todo = list(dict.fromkeys(candidates if candidates is not None else available_candidates()))
    if not todo:
        raise UserError(
            "no candidate backbone has its weights on this machine; name some with --candidate NAME=WEIGHTS (a "
            "weight file, or timm/torchvision once their hub cache holds them)"
        )
    scores, start = [], time.monotonic()
    for cand in todo:
        if time.monotonic() - start > budget_s:
            scores.append(Score(cand, status=f"not measured: time budget of {budget_s:.0f} s spent"))
            continue
        try:
            scores.append(score(recipe, index, cand))
        except UserError as exc:
            scores.append(Score(cand, status=f"error: {exc}"))
        _log.info(
            "recommend: %s: %s",
            cand.label,
            scores[-1].status if scores[-1].status != "measured" else scores[-1].probe_acc,
        )
    return Recommendation(rank(scores), index.source, budget_s)


def table(rec: Recommendation) -> str:
    """The ranking as a terminal table, the choice first."""
    head = (
        f"{'#':>2}  {'candidate':<44}{'val acc (95% interval)':>26}{'CV acc':>8}{'kNN':>7}{'params':>9}{'MACs':>9}"
        f"{'CPU ms':>8}"
    )
    title = f"backbones ranked on {rec.source} (a linear probe on frozen features: validation split, cross-validated)"
    lines = [title, "", head]
    for i, s in enumerate(rec.scores, 1):
        if s.status != "measured":
            lines.append(f"{i:>2}  {s.candidate.label[:43]:<44}{s.status}")
            continue
        acc = f"{s.probe_acc:.1%} ({s.low:.1%}-{s.high:.1%})"
        noise = "  within noise of #1" if s.within_noise else ""
        lines.append(
            f"{i:>2}  {s.candidate.label[:43]:<44}{acc:>26}{s.cv_acc:>8.1%}{s.knn_acc:>7.1%}{s.params / 1e6:>8.1f}M"
            f"{s.macs / 1e6:>8.0f}M{s.latency_ms:>8.1f}{noise}"
        )
    best = rec.best
    lines += ["", f"choice: {best.candidate.label}" if best else "choice: none (no candidate could be measured)"]
    return "\n".join(lines)


def log_recommendation(store: Any, rec: Recommendation, experiment: str, *, tags: dict[str, str] | None = None) -> str:
    """Log the ranking as its own MLflow run (params: the choice; artifact: the table); returns the run id.

    Args:
        store: the :class:`~transfer.tracking.TrackingStore`.
        rec: the recommendation.
        experiment: the experiment to log it in.
        tags: tags of the run (e.g. who asked for it).
    """
    from mlflow.entities import Param

    exp = store.experiment_id(experiment)
    run = store.client.create_run(exp, run_name=f"recommend-{Path(rec.source).name or rec.source}", tags=tags or {})
    best = rec.best
    params = {"choice": best.candidate.label if best else "none", "candidates": len(rec.scores), "source": rec.source}
    store.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    store.client.log_dict(run.info.run_id, rec.to_dict(), "recommend.json")
    store.client.log_text(run.info.run_id, table(rec), "recommend.txt")
    store.client.set_terminated(run.info.run_id)
    return run.info.run_id


def resolve_auto(recipe: Any) -> None:
    """``model.backbone: auto`` -> the recommended backbone and weights, in place (nothing for any other name).

    Raises:
        UserError: no candidate could be measured.
    """
    if recipe.model.backbone != AUTO:
        return
    rec = recommend(recipe)
    if rec.best is None:
        raise recipe.error("model.backbone", "auto could measure no candidate backbone; name one (transfer zoo list)")
    _log.info("model.backbone auto -> %s\n%s", rec.best.candidate.label, table(rec))
    recipe.choose_backbone(rec.best.candidate.backbone, rec.best.candidate.pretrained, rec.to_dict())
