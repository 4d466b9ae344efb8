"""Pretrained weights: timm (its pretrained configs and the Hugging Face hub cache), torchvision (its weight enums
and the torch hub cache) and local files, all loaded with ``weights_only`` semantics.

Every source ends in a state dict with native keys, which :func:`load_into` puts into the model after dropping a
classifier of the wrong size and adapting the stem to ``in_chans``.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._registry import ArchSpec, StateDict, get_spec
from zoo.errors import CheckpointMismatchError, WeightsUnavailableError, ZooError

_log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _ways_out(spec: ArchSpec) -> str:
    sources = ", ".join(f"'{s}'" for s in spec.weight_sources) or "none (native only)"
    return (
        f"pretrained sources of {spec.name}: {sources}; pass a local .safetensors/.pth/.bin file, fill the HF or "
        "torch hub cache on a machine that can reach the hub, or use pretrained=False"
    )


def convert_state_dict(name: str, state_dict: StateDict, source: str) -> StateDict:
    """Map a checkpoint of ``source`` (``"timm"`` or ``"torchvision"``) to the native keys of model ``name``."""
    spec = get_spec(name)
    if source == "timm":
        if spec.timm is None:
            raise ZooError(f"{spec.name} has no timm counterpart; {_ways_out(spec)}")
        return dict(spec.convert_timm(state_dict)) if spec.convert_timm else dict(state_dict)
    if source == "torchvision":
        if spec.torchvision is None or spec.convert_torchvision is None:
            raise ZooError(f"{spec.name} has no torchvision counterpart; {_ways_out(spec)}")
        return dict(spec.convert_torchvision(state_dict))
    raise ZooError(f"unknown weight source {source!r}: use 'timm' or 'torchvision'")


def _timm_state_dict(spec: ArchSpec, tag: str | None) -> tuple[StateDict, dict[str, Any]]:
    import timm.models
    from timm.models import load_state_dict_from_hf

    if spec.timm is None:
        raise WeightsUnavailableError(f"{spec.name} has no timm weights; {_ways_out(spec)}")
    arch = spec.timm.split(".")[0]
    full = f"{arch}.{tag}" if tag else spec.timm
    try:
        cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=False)
    except RuntimeError:  # timm raises for a tag it does not know
        cfg = None
    if cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise WeightsUnavailableError(
            f"timm has no weights {full!r}; tags for {arch}: {', '.join(tags) or 'none'}; {_ways_out(spec)}"
        )
    try:
        if cfg.hf_hub_id:
            loc = (cfg.hf_hub_id, cfg.hf_hub_filename) if cfg.hf_hub_filename else (cfg.hf_hub_id,)
            sd = load_state_dict_from_hf(*loc, weights_only=True)
        elif cfg.url:
            sd = torch.hub.load_state_dict_from_url(cfg.url, map_location="cpu", progress=False, weights_only=True)
        else:
            raise WeightsUnavailableError(f"timm weights {full!r} have no download location; {_ways_out(spec)}")
    except ZooError:
        raise
    except Exception as exc:  # the hub raises many types for "offline" and "not cached"
        raise WeightsUnavailableError(
            f"could not get timm weights {full!r} ({type(exc).__name__}); {_ways_out(spec)}"
        ) from exc
    return convert_state_dict(spec.name, sd, "timm"), cfg.to_dict()


def _torchvision_state_dict(spec: ArchSpec, enum_name: str | None) -> StateDict:
    from torchvision.models import get_model_weights

    if spec.torchvision is None:
        raise WeightsUnavailableError(f"{spec.name} has no torchvision weights; {_ways_out(spec)}")
    enum = get_model_weights(spec.torchvision)
    if enum_name is None:
        weights = enum.DEFAULT
    else:
        short = enum_name.split(".")[-1]
        if short not in enum.__members__:
            raise WeightsUnavailableError(
                f"torchvision has no weights {enum_name!r} for {spec.torchvision}; "
                f"choose one of {', '.join(enum.__members__)}"
            )
        weights = enum[short]
    try:
        sd = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not get torchvision weights {weights} ({type(exc).__name__}); {_ways_out(spec)}"
        ) from exc
    return convert_state_dict(spec.name, sd, "torchvision")


def read_checkpoint(path: str | Path) -> StateDict:
    """Read a local checkpoint safely (safetensors, or torch pickles with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weight file {str(path)!r} does not exist; give a path to an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(f"cannot read weight file {str(path)!r}: {exc}".splitlines()[0]) from exc
    for wrapper in ("state_dict", "model", "model_state"):  # common training-checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointMismatchError(f"weight file {str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _mismatch(model: nn.Module, sd: StateDict) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    return missing, unexpected, shapes


def _local_state_dict(spec: ArchSpec, model: nn.Module, path: str) -> StateDict:
    raw = read_checkpoint(path)
    candidates = {"native": raw}
    for source, conv in (("timm", spec.convert_timm), ("torchvision", spec.convert_torchvision)):
        if conv is not None:
            try:
                candidates[source] = dict(conv(raw))
            except Exception as exc:  # a converter may fail on foreign keys: that source does not fit
                _log.debug("%s conversion of %s failed: %s", source, path, exc)

    def badness(sd: StateDict) -> int:
        missing, unexpected, _ = _mismatch(model, sd)
        return len(missing) + len(unexpected)

    best = min(candidates, key=lambda s: badness(candidates[s]))
    _log.info("weight file %s read as %s format", path, best)
    return candidates[best]


def _adapt(spec: ArchSpec, model: nn.Module, sd: StateDict, label_offset: int = 0) -> StateDict:
    """Drop a classifier of another size and adapt the stem conv to the model's input channels."""
    from timm.models import adapt_input_conv

    own = model.state_dict()
    sd = dict(sd)
    for suffix in ("weight", "bias"):
        key = f"{spec.classifier}.{suffix}"
        if key not in sd or key not in own:
            continue
        if label_offset and sd[key].shape[0] == own[key].shape[0] + label_offset:
            sd[key] = sd[key][label_offset:]  # TF ports carry a background class first
        elif sd[key].shape != own[key].shape:
            del sd[key]
    key = f"{spec.first_conv}.weight"
    if key in sd and key in own and sd[key].shape[1] != own[key].shape[1]:
        sd[key] = adapt_input_conv(own[key].shape[1], sd[key])
    return sd


def load_into(model: nn.Module, spec: ArchSpec, sd: StateDict, label_offset: int = 0) -> None:
    """Load a native-key state dict; only a resized classifier may be missing, anything else is an error."""
    sd = _adapt(spec, model, sd, label_offset)
    missing, unexpected, shapes = _mismatch(model, sd)
    allowed = {f"{spec.classifier}.weight", f"{spec.classifier}.bias"}
    missing = [
        k
        for k in missing
        if k not in allowed
        and not k.endswith("num_batches_tracked")
        and not any(fnmatch.fnmatch(k, pat) for pat in spec.new_keys)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointMismatchError(
            f"checkpoint does not fit {spec.name}: {'; '.join(parts)}; is it a checkpoint of another architecture?"
        )
    model.load_state_dict(sd, strict=False)


def load_pretrained(model: nn.Module, name: str, pretrained: bool | str) -> None:
    """Resolve ``pretrained`` (see :func:`zoo.create_model`) and load the weights into ``model``."""
    spec = get_spec(name)
    if pretrained is True:
        if not spec.weight_sources:
            raise WeightsUnavailableError(f"{spec.name} has no pretrained weights anywhere; {_ways_out(spec)}")
        pretrained = spec.weight_sources[0]
    assert isinstance(pretrained, str)
    source, _, tag = pretrained.partition(":")
    if source == "timm":
        sd, cfg = _timm_state_dict(spec, tag or None)
        load_into(model, spec, sd, label_offset=int(cfg.get("label_offset") or 0))
    elif source == "torchvision":
        load_into(model, spec, _torchvision_state_dict(spec, tag or None))
    elif pretrained.endswith(LOCAL_SUFFIXES) or Path(pretrained).exists():
        load_into(model, spec, _local_state_dict(spec, model, pretrained))
    else:
        raise WeightsUnavailableError(
            f"pretrained={pretrained!r} is neither a source ('timm', 'timm:<tag>', 'torchvision', "
            f"'torchvision:<WEIGHTS>') nor a weight file; {_ways_out(spec)}"
        )


@dataclass(frozen=True)
class WeightsStatus:
    """Where a model's pretrained weights can be had on this machine, found without downloading anything.

    Attributes:
        available: loading them needs no network.
        where: ``"local file"``, ``"HF hub cache"``, ``"torch hub cache"``, ``"download"`` (from the hub) or
            ``"none"`` (the architecture has no pretrained weights).
        pretrained: the ``pretrained`` value of :func:`zoo.create_model` that loads exactly these weights
            (the source found, e.g. ``"torchvision"`` when only torchvision's checkpoint is cached), or False.
        detail: the cached or local file, or what a download would fetch (hub repository or URL).
    """

    available: bool
    where: str
    pretrained: bool | str
    detail: str = ""


def _hf_cached(repo: str, filenames: tuple[str, ...]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _torch_hub_cached(url: str) -> str | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    return str(path) if path.is_file() else None


def _timm_status(spec: ArchSpec, tag: str | None, source: str) -> WeightsStatus:
    import timm.models

    if spec.timm is None:
        return WeightsStatus(False, "none", False, f"{spec.name} has no timm weights")
    full = f"{spec.timm.split('.')[0]}.{tag}" if tag else spec.timm
    try:
        cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return WeightsStatus(False, "none", False, f"timm has no weights {full!r}")
    if cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        found = _hf_cached(cfg.hf_hub_id, names)
        return (
            WeightsStatus(True, "HF hub cache", source, found)
            if found
            else WeightsStatus(False, "download", source, f"huggingface.co/{cfg.hf_hub_id}")
        )
    if cfg.url:
        found = _torch_hub_cached(cfg.url)
        return (
            WeightsStatus(True, "torch hub cache", source, found)
            if found
            else WeightsStatus(False, "download", source, cfg.url)
        )
    return WeightsStatus(False, "none", False, f"timm weights {full!r} have no download location")


def _torchvision_status(spec: ArchSpec, enum_name: str | None, source: str) -> WeightsStatus:
    from torchvision.models import get_model_weights

    if spec.torchvision is None:
        return WeightsStatus(False, "none", False, f"{spec.name} has no torchvision weights")
    enum = get_model_weights(spec.torchvision)
    short = (enum_name or "DEFAULT").split(".")[-1]
    if short != "DEFAULT" and short not in enum.__members__:
        return WeightsStatus(False, "none", False, f"torchvision has no weights {enum_name!r}")
    weights = enum.DEFAULT if short == "DEFAULT" else enum[short]
    found = _torch_hub_cached(weights.url)
    return (
        WeightsStatus(True, "torch hub cache", source, found)
        if found
        else WeightsStatus(False, "download", source, weights.url)
    )


def weights_status(name: str, pretrained: bool | str = True) -> WeightsStatus:
    """Where ``pretrained`` weights of model ``name`` are available here (reads caches only; never downloads).

    Args:
        name: a zoo model name.
        pretrained: as :func:`zoo.create_model`; ``True`` looks at every source in preference order and reports
            the first one found cached (else a download of the preferred one).
    """
    spec = get_spec(name)
    if pretrained is False:
        return WeightsStatus(False, "none", False, "trains from scratch")
    if isinstance(pretrained, str) and (pretrained.endswith(LOCAL_SUFFIXES) or Path(pretrained).exists()):
        ok = Path(pretrained).is_file()
        return WeightsStatus(ok, "local file" if ok else "none", pretrained if ok else False, pretrained)
    checks = {"timm": _timm_status, "torchvision": _torchvision_status}
    wanted = spec.weight_sources if pretrained is True else [str(pretrained)]
    statuses = []
    for value in wanted:
        source, _, tag = value.partition(":")
        if source not in checks:
            return WeightsStatus(False, "none", False, f"pretrained={value!r} is neither a source nor a weight file")
        statuses.append(checks[source](spec, tag or None, value))
    found = next((s for s in statuses if s.available), None)
    if found:
        return found
    return next((s for s in statuses if s.where == "download"), None) or WeightsStatus(
        False, "none", False, f"{spec.name} has no pretrained weights"
    )
