"""What a fit works on: the recipe, the data, the backbone with its weights, the data module and feature cache.

:func:`prepare` turns a validated recipe into a :class:`FitJob`; every user error about the data or the backbone
surfaces there, before a run is opened. Strategies build their training from the job
(:meth:`transfer.strategies.base.Strategy.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from transfer.data import ImageDataModule, class_weights, make_sampler, resolve_balance
from transfer.features import FeatureCache
from transfer.progress import Events
from transfer.recipe import Recipe
from transfer.sources import DatasetIndex, build_index, cache_root


def on_gpu(recipe: Recipe) -> bool:
    """Whether the fit runs on a GPU (one is there and the recipe does not ask for another accelerator)."""
    return torch.cuda.is_available() and str(recipe.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def check_model_keys(recipe: Recipe) -> None:
    """Fail on the backbone name and the weights' location before any data is read (one line, no logs first);
    ``model.backbone: auto`` is first resolved in place to the backbone ``transfer recommend`` ranks first."""
    import zoo
    from transfer.recommend import resolve_auto

    resolve_auto(recipe)
    try:
        zoo.get_spec(recipe.model.backbone)
    except zoo.UnknownModelError as exc:
        raise recipe.error("model.backbone", str(exc)) from exc
    recipe.resolve_pretrained()


def create_model(recipe: Recipe, num_classes: int) -> tuple[Any, Any]:
    """The recipe's backbone with its weights and a classifier for ``num_classes``, and its ``ArchSpec``."""
    import zoo

    spec = zoo.get_spec(recipe.model.backbone)
    kwargs: dict[str, Any] = {"drop_rate": recipe.model.drop_rate} if recipe.model.drop_rate else {}
    try:
        model = zoo.create_model(spec.name, num_classes=num_classes, pretrained=recipe.resolve_pretrained(), **kwargs)
    except zoo.ZooError as exc:
        raise recipe.error("model.pretrained", str(exc)) from exc
    except TypeError as exc:
        raise recipe.error("model.drop_rate", f"{spec.name} does not take drop_rate ({exc}); remove it") from exc
    return model, spec


def data_config(recipe: Recipe, spec: Any) -> dict[str, Any]:
    """The backbone's preprocessing at the recipe's image size."""
    size = recipe.data.image_size or int(spec.input_size[-1])
    if size < spec.min_size:
        raise recipe.error("data.image_size", f"{size} is below {spec.name}'s smallest input {spec.min_size}; raise it")
    cfg = dict(spec.data_config)
    cfg["input_size"] = (3, size, size)
    return cfg


@dataclass
class FitJob:
    """A fit's inputs, prepared (see :func:`prepare`)."""

    recipe: Recipe
    spec: Any
    model: Any
    index: DatasetIndex
    data_config: dict[str, Any]
    dm: ImageDataModule
    cache: FeatureCache
    balance: str
    events: Events
    on_gpu: bool = False
    cache_hits: dict[str, bool] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def device(self) -> str:
        """Where features are computed."""
        return "cuda" if self.on_gpu else "cpu"

    def class_weights(self) -> torch.Tensor | None:
        """Loss weights per class when ``data.balance`` resolved to ``weights``."""
        return class_weights(self.index.class_counts("train")) if self.balance == "weights" else None

    def features(
        self, per_stage: bool, loaders: dict[str, DataLoader] | None = None, files: str | None = None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Frozen features of the train and val splits (or of ``loaders``), from the cache when there.

        The cache is locked per key: under DDP (or two fits at once) one process computes, the others read.
        """
        loaders = loaders or {"train": self.dm.eval_loader("train"), "val": self.dm.eval_loader("val")}
        hits = self.cache.hits
        self.events.phase("features")
        feats = self.cache.get_or_compute(
            self.model,
            loaders,
            backbone=self.spec.name,
            data_config=self.data_config,
            files=files or self.index.fingerprint(),
            per_stage=per_stage,
            device=self.device,
            progress=self.events.counter("features", "images"),
        )
        self.cache_hits["auto" if files else "fit"] = self.cache.hits > hits
        return feats

    def cache_params(self) -> dict[str, str]:
        """The ``feature_cache`` MLflow param: whether the fit's features came from the cache."""
        return {"feature_cache": "hit" if self.cache_hits.get("fit") else "miss"}

    def tensor_loaders(self, tensors: dict[str, list[torch.Tensor]]) -> tuple[DataLoader, DataLoader]:
        """Loaders over cached features: shuffled (or class-balanced) train, and val."""
        batch_size, seed = self.recipe.data.batch_size, self.recipe.seed
        train, val = TensorDataset(*tensors["train"]), TensorDataset(*tensors["val"])
        sampler = None
        if self.balance == "sampler":
            sampler = make_sampler([lab for _, lab in self.index.train], self.num_classes, seed)
        n = len(train)
        tl = DataLoader(
            train,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            drop_last=n > batch_size and n % batch_size == 1,
        )
        return tl, DataLoader(val, batch_size=max(batch_size, 256), shuffle=False)


def dataset_index(recipe: Recipe) -> DatasetIndex:
    """The recipe's data as classes and the same train / val split every time (the seed fixes it)."""
    return build_index(
        recipe.data.source,
        val_source=recipe.data.val_source,
        val_split=recipe.data.val_split,
        max_per_class=recipe.data.max_per_class,
        seed=recipe.seed,
        cache_dir=recipe.data.cache_dir,
        resolve_path=recipe.resolve_path,
    )


def prepare(recipe: Recipe, events: Events) -> FitJob:
    """Read the data and build the backbone: a :class:`FitJob` (user errors surface here, as one line)."""
    events.phase("data")
    r = recipe
    index = dataset_index(r)
    events.phase("weights")
    model, spec = create_model(r, index.num_classes)
    cfg = data_config(r, spec)
    balance = resolve_balance(r.data.balance, index.class_counts("train"))
    dm = ImageDataModule(
        index,
        cfg,
        augment=r.data.augment,
        batch_size=r.data.batch_size,
        num_workers=r.data.num_workers,
        balance=balance,
        seed=r.seed,
    )
    cache = FeatureCache(cache_root(r.data.cache_dir))
    return FitJob(r, spec, model, index, cfg, dm, cache, balance, events, on_gpu=on_gpu(r))
