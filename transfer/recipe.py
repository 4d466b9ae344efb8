"""The recipe: one YAML file that says what to fine-tune on what, and how.

A recipe has the sections ``data``, ``model``, ``strategy``, ``optim``, ``trainer`` (passed to
``lightning.Trainer`` as is) and ``tracking``, plus a top-level ``seed``. Only ``data.source`` and
``model.backbone`` are required; everything else has a default (see ``recipes/quickstart.yaml``)::

    recipe = load_recipe("recipes/quickstart.yaml", overrides=["model.backbone=resnet18", "trainer.max_epochs=2"])

Bad recipes raise :class:`transfer.errors.UserError` with one line that names the file, the line, the key and
what to do: ``recipe.yaml:7: data.batchsize: unknown key; did you mean batch_size?``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import importlib.util
import inspect
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from transfer.augment import PRESETS
from transfer.errors import UserError
from transfer.module import TTA
from transfer.optim import OPTIMIZERS
from transfer.recipe_errors import describe, fmt, suggest
from transfer.strategies import check_recipe as check_strategy_settings
from transfer.strategies import strategy_names

_log = logging.getLogger(__name__)

StrategyName = Literal[strategy_names()]  # type: ignore[valid-type]  (the registry's names, auto first)
AugmentName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]
TTAName = Literal[TTA]  # type: ignore[valid-type]


class _Section(BaseModel):
    # extra="forbid" is what turns a typo into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("audit", "ood", mode="before", check_fields=False)
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` (in a file or a --set) as false: the user meant the word.
        return "off" if value is False else value


class DataConfig(_Section):
    """Where the images come from and how they are fed to the model."""

    source: str = Field(description="folder | file.zip | file.csv | hf:NAME | builtin:digits | builtin:lfw_faces")
    val_source: str | None = Field(None, description="a separate validation folder; else a stratified split")
    val_split: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of each class held out for validation")
    image_size: int | None = Field(None, ge=16, le=1024, description="square input side; default: the backbone's")
    augment: AugmentName = Field("none", description="augmentation preset: " + " | ".join(PRESETS))
    tta: TTAName = Field("none", description="test-time augmentation of the final evaluation and the registered model")
    progressive: bool = Field(
        False, description="progressive resizing (fine-tuning): train at half the image size first, then grow"
    )
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    balance: Literal["auto", "none", "sampler", "weights"] = Field(
        "auto",
        description="class imbalance: a weighted sampler, class weights in the loss, none, or auto "
        "(loss weights when the largest class is at least twice the smallest)",
    )
    max_per_class: int | None = Field(None, ge=1, description="use at most this many images per class (quick runs)")
    cache_dir: str | None = Field(
        None, description="where datasets and cached features go; default $TRANSFER_CACHE_DIR or ~/.cache/transfer"
    )
    audit: Literal["warn", "block", "off"] = Field(
        "warn", description="audit the data first (transfer audit): log the findings; block: stop on leakage; off"
    )


class ModelConfig(_Section):
    """The backbone and its starting weights."""

    backbone: str = Field(description="a zoo model name (`transfer zoo list`), or auto: `transfer recommend` picks")
    pretrained: bool | str = Field(
        True,
        description="as zoo.create_model: true, false, 'timm[:tag]', 'torchvision[:WEIGHTS]', a file path, or "
        "'pkg:PACKAGE/path/in/package.pth' (a weight file shipped inside an installed Python package)",
    )
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")


class StrategyConfig(_Section):
    """Which parameters train, and when."""

    name: StrategyName = "auto"
    stages: int = Field(2, ge=1, description="partial: how many of the last stages train")
    milestones: list[int] = Field([2, 4], description="gradual: epochs at which one more stage unfreezes")
    cache_features: bool = Field(True, description="linear_probe / stage_probe: compute frozen features once")
    layer_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="full: lr x this per weight layer above (1: off, as measured best)"
    )

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"milestones must be strictly increasing epochs >= 1, got {v}")
        return v


class OptimConfig(_Section):
    """Optimizer, learning rates, schedule, loss, regularisation and which weights are kept."""

    name: OptimizerName = "adamw"
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | Literal["auto"] = Field(
        1.0e-3,
        description="the head's learning rate (probes: x3); auto: the LR finder's suggestion (transfer lr-find)",
    )
    backbone_lr_mult: float = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="fine-tuning: backbone lr = lr x this (discriminative)"
    )
    weight_decay: float = Field(0.05, ge=0.0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and lars momentum (adamw: beta1)")
    warmup_epochs: float = Field(
        0.25, ge=0.0, allow_inf_nan=False, description="linear warmup, then cosine decay to zero (per step)"
    )
    scale_lr: bool | Literal["auto"] = Field(
        "auto",
        description="linear scaling rule lr x global batch / 256; auto: for sgd and lars, not for adamw",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="mixup alpha (timm Mixup); 0: off")
    cutmix: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="cutmix alpha (timm Mixup); 0: off")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="decay of an exponential moving average of the weights; 0: off")
    checkpoint: Literal["last", "best"] = Field(
        "last",
        description="weights kept: the last epoch's (the reported accuracy is not chosen on itself) or the best "
        "validation epoch's",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better val_acc; null: never"
    )


class TrackingConfig(_Section):
    """MLflow: where runs go and how the model is registered."""

    uri: str = Field(
        "sqlite:///mlflow.db",
        description="any MLflow tracking URI; when not set: $MLFLOW_TRACKING_URI, else this local file",
    )
    experiment: str = "transfer"
    run_name: str | None = None
    register_as: str | None = Field(None, description="a registered model name; null: log the model, do not register")
    alias: str | None = Field("champion", description="alias set on the new registered version")
    promote: Literal["always", "if_better"] = Field(
        "always", description="move the alias always, or only when val_acc beats the current holder's"
    )


class DeployConfig(_Section):
    """What the deployed model carries besides its weights: unknown detection and its runtime."""

    ood: Literal["off", "knn", "mahalanobis"] = Field(
        "knn", description="unknown detection on the penultimate features: kNN distance, Mahalanobis, or off"
    )
    ood_false_alarm: float = Field(
        0.05, gt=0.0, lt=0.5, description="share of in-domain (validation) images the detector may call unknown"
    )
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="the served model's runtime: ONNX Runtime when it exports and agrees (auto), or PyTorch"
    )
    int8: bool = Field(
        False, description="ONNX Runtime with int8 weights and activations, calibrated on training images"
    )


def _default_trainer() -> dict[str, Any]:
    # No max_epochs: each strategy has its own default (probes 20 epochs of milliseconds, fine-tunes 5).
    return {}


class Recipe(_Section):
    """A validated recipe. Build one with :func:`load_recipe` (file) or :meth:`Recipe.from_dict`."""

    seed: int = 42
    data: DataConfig
    model: ModelConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: dict[str, Any] = Field(default_factory=_default_trainer, description="lightning.Trainer arguments")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_defaults(cls, v: Any) -> Any:
        # A recipe that sets only trainer.precision still gets the default number of epochs.
        return {**_default_trainer(), **v} if isinstance(v, dict) else v

    # Where each key came from ("recipe.yaml:7" or "--set"), for error messages raised after validation.
    _where: dict[str, str] = PrivateAttr(default_factory=dict)
    _path: Path | None = PrivateAttr(default=None)
    _recommendation: dict[str, Any] | None = PrivateAttr(default=None)  # model.backbone: auto, as resolved

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """How ``model.backbone: auto`` was resolved (the ranked candidates), or None."""
        return self._recommendation

    def choose_backbone(self, backbone: str, pretrained: bool | str, table: dict[str, Any]) -> None:
        """Resolve ``model.backbone: auto`` in place, keeping the recommendation that chose it."""
        self.model.backbone, self.model.pretrained, self._recommendation = backbone, pretrained, table

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: dict[str, str] | None = None, path: Path | None = None) -> Recipe:
        """Validate a plain dict (as parsed from YAML); errors name the key and, with ``where``, its line."""
        return _validate(raw, where or {}, path)

    @property
    def path(self) -> Path | None:
        """The file the recipe was read from, if any."""
        return self._path

    @property
    def name(self) -> str:
        """A short name: the recipe file's stem, else ``recipe``."""
        return self._path.stem if self._path else "recipe"

    def where(self, key: str) -> str:
        """Where a dotted key was set (``recipe.yaml:7``, ``--set``), or the file (or ``recipe``) for defaults."""
        while key:
            if key in self._where:
                return self._where[key]
            key = key.rpartition(".")[0]
        return self._path.name if self._path else "recipe"

    def error(self, key: str, message: str) -> UserError:
        """A :class:`UserError` for ``key`` in the format ``recipe.yaml:7: data.source: message``."""
        return UserError(fmt(self.where(key), key, message))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (defaults filled in) as plain data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved recipe as YAML; loading it again gives the same recipe."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def digest(self) -> str:
        """A short hash of the resolved recipe: names its run directory (same recipe, same directory)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def resolve_path(self, value: str) -> Path:
        """A path from the recipe: against the working directory, else the recipe file's folder."""
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists() or self._path is None:
            return p
        beside = self._path.parent / p
        return beside if beside.exists() else p

    def resolve_pretrained(self) -> bool | str:
        """``model.pretrained`` with ``pkg:PACKAGE/sub/path`` and relative file paths made absolute."""
        value = self.model.pretrained
        if not isinstance(value, str):
            return value
        if value.startswith("pkg:"):
            return str(resolve_package_path(value, self.error))
        if value.endswith((".safetensors", ".pth", ".pt", ".bin")):
            path = self.resolve_path(value)
            if not path.is_file():
                raise self.error("model.pretrained", f"weight file {value!r} does not exist; give an existing file")
            return str(path)
        return value


def resolve_package_path(value: str, error: Any = None) -> Path:
    """Resolve ``pkg:PACKAGE/sub/path`` to a file inside an installed package (importlib.resources).

    Raises:
        UserError: the package is not installed or holds no such file.
    """
    spec = value.removeprefix("pkg:")
    package, _, rel = spec.partition("/")
    if not package or not rel:
        msg = f"{value!r}: write pkg:PACKAGE/path/inside/package.pth"
        raise error("model.pretrained", msg) if error else UserError(msg)
    if importlib.util.find_spec(package) is None:
        msg = f"{value!r}: Python package {package!r} is not installed; pip install it or give a weight file path"
        raise error("model.pretrained", msg) if error else UserError(msg)
    resource = importlib.resources.files(package).joinpath(rel)
    if not resource.is_file():
        msg = f"{value!r}: package {package!r} has no file {rel!r}"
        raise error("model.pretrained", msg) if error else UserError(msg)
    return Path(str(resource))


# ----------------------------------------------------------------------------------------------------------------
# YAML with line numbers


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node: yaml.Node | None, fname: str, prefix: str = "") -> dict[str, str]:
    """Dotted key -> ``file:line`` for every mapping key in the document."""
    out: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = f"{fname}:{key_node.start_mark.line + 1}"
            out.update(_line_map(value_node, fname, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix.rstrip('.')}.{i}"
            out[key] = f"{fname}:{item.start_mark.line + 1}"
            out.update(_line_map(item, fname, key + "."))
    return out


def _parse_yaml(text: str, fname: str) -> tuple[Any, dict[str, str]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{fname}:{mark.line + 1}" if mark else fname
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise UserError(f"{line}: invalid YAML: {problem}; fix the syntax") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{fname}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    return data, _line_map(node, fname)


# ----------------------------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: dict[str, str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a raw recipe dict; records ``--set`` as their origin."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"--set {item}: write --set KEY=VALUE with a dotted key, e.g. --set data.batch_size=16")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # an unquoted string YAML cannot parse is meant as that string
        parts = key.split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise UserError(f"--set {item}: {prefix} is a value, not a section; set {prefix}=VALUE instead")
            node = child
        node[parts[-1]] = value
        for k in list(where):  # the old lines no longer describe the overridden value
            if k == key or k.startswith(key + "."):
                del where[k]
        where[key] = "--set"
    return raw


# ----------------------------------------------------------------------------------------------------------------
# Validation with messages a user can act on

_SECTIONS: dict[str, type[BaseModel]] = {
    "": Recipe,
    "data": DataConfig,
    "model": ModelConfig,
    "strategy": StrategyConfig,
    "optim": OptimConfig,
    "tracking": TrackingConfig,
    "deploy": DeployConfig,
}


def _trainer_keys() -> list[str]:
    import lightning

    return [p for p in inspect.signature(lightning.Trainer.__init__).parameters if p != "self"]


def _validate(raw: Any, where: dict[str, str], path: Path | None) -> Recipe:
    fname = path.name if path else "recipe"
    if raw is None:
        raise UserError(f"{fname}: the recipe is empty; it needs at least data.source and model.backbone")
    if not isinstance(raw, dict):
        raise UserError(f"{fname}:1: a recipe is a mapping of sections (data:, model:, ...), got {type(raw).__name__}")

    def locate(key: str) -> str:
        k = key
        while k:
            if k in where:
                return where[k]
            k = k.rpartition(".")[0]
        return f"{fname}:1" if path else fname

    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        described = describe(exc.errors(), _SECTIONS)

        def order(item: tuple[str, str]) -> int:
            loc = locate(item[0])
            tail = loc.rpartition(":")[2]
            return int(tail) if tail.isdigit() else 10**9

        described.sort(key=order)
        key, msg = described[0]
        n = len(described) - 1
        more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
        raise UserError(fmt(locate(key), key, msg + more)) from exc
    recipe._where = dict(where)
    recipe._path = path

    # trainer is passed to lightning.Trainer as is: check its keys here, where the line is still known.
    valid = _trainer_keys()
    for key in recipe.trainer:
        if key not in valid:
            msg = f"unknown lightning.Trainer argument; {suggest(key, valid)}"
            raise UserError(fmt(locate("trainer." + key), "trainer." + key, msg))
    for key in ("callbacks", "logger", "plugins", "profiler"):
        if key in recipe.trainer and recipe.trainer[key] not in (None, False, True):
            raise recipe.error(f"trainer.{key}", "only true/false/null can be given in a recipe")
    _check_combinations(recipe)
    return recipe


def _check_combinations(r: Recipe) -> None:
    """Settings that are each valid but impossible together."""
    max_epochs = r.trainer.get("max_epochs", 1)
    max_steps = r.trainer.get("max_steps", -1)
    if max_epochs is not None and not isinstance(max_epochs, int):
        raise r.error("trainer.max_epochs", f"expected an integer, got {max_epochs!r}")
    if (max_epochs is None or max_epochs < 1) and (max_steps is None or max_steps < 1):
        raise r.error("trainer.max_epochs", "set a positive number of epochs (the cosine schedule needs an end)")
    check_strategy_settings(r)
    if r.tracking.promote == "if_better" and not r.tracking.register_as:
        raise r.error("tracking.promote", "if_better compares with a registered model; set tracking.register_as")
    if r.tracking.register_as is not None and not r.tracking.register_as.strip():
        raise r.error("tracking.register_as", "an empty name; give a registered model name or null")
    if r.deploy.int8 and r.deploy.runtime == "torch":
        raise r.error("deploy.int8", "int8 runs on ONNX Runtime; set deploy.runtime to auto or onnx, or int8 false")
    if r.data.val_source is not None and r.data.val_source == r.data.source:
        raise r.error("data.val_source", "the validation source is the training source; give another folder or null")
    if isinstance(r.model.pretrained, str) and not r.model.pretrained.strip():
        raise r.error("model.pretrained", "an empty string; use true, false, a source or a file")


def load_recipe(source: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe.

    Args:
        source: a YAML file path, a raw dict, or a :class:`Recipe` (then only the overrides are applied).
        overrides: ``KEY=VALUE`` strings, values parsed as YAML (``trainer.max_epochs=3``, ``model.pretrained=false``).

    Raises:
        UserError: unreadable file, bad YAML, unknown key, wrong type or impossible combination; the message names
            the file and line (or ``--set``) and the key.
    """
    if isinstance(source, Recipe):
        if not overrides:
            return source
        where = dict(source._where)
        raw = apply_overrides(source.to_dict(), overrides, where)
        return _validate(raw, where, source._path)
    if isinstance(source, dict):
        where: dict[str, str] = {}
        return _validate(apply_overrides(source, overrides, where), where, None)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist; give the path of a YAML recipe (see recipes/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {str(path)!r}: {exc}; give a UTF-8 YAML file") from exc
    raw, where = _parse_yaml(text, path.name)
    if raw is None and overrides:
        raw = {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides, where)
    return _validate(raw, where, path.resolve())
