"""Channels-last memory on the CPU: for forward passes (features, evaluation, the served network) and training.

oneDNN's CPU convolutions are markedly faster on NHWC tensors (2 cores, MobileNetV2): a pass over 360 photos at
224 px (decoding included) took 9.3-10.0 s channels-last against 15.2-17.3 s in PyTorch's default layout; the
features of 1,438 digits at 224 px 34-39 s against 60-61 s; training (batch 32) ran at 177-180 img/s against
108-118 at 64 px, and 17-18 against 12-13 at 224 px. An architecture may ``view`` activations in a way that needs
contiguous NCHW, so one random batch checks the switch before it is made. Answers agree to float precision, not
bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

_log = logging.getLogger(__name__)


def _first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def try_channels_last(model: nn.Module, input_size: tuple[int, ...], device: torch.device | str = "cpu") -> bool:
    """Convert ``model`` to channels-last memory in place when it runs and agrees with the default layout on a
    random batch of ``input_size`` (C, H, W); else leave it in NCHW. Returns whether it converted.

    The check runs in eval mode (a training model's BatchNorm statistics do not see the random batch; its mode is
    restored) and the conversion outside inference mode, so a model that trains afterwards keeps ordinary
    parameters.
    """
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = _first(model(x))
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            got = _first(model(x.contiguous(memory_format=torch.channels_last)))
        if torch.allclose(got, want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=1e-4):
            return True
        _log.debug("channels-last output differs: keeping NCHW")
    except Exception:  # an op that needs contiguous NCHW: keep the default layout
        _log.debug("channels-last forward failed: keeping NCHW", exc_info=True)
    finally:
        model.train(was_training)
    model.to(memory_format=torch.contiguous_format)
    return False


@contextlib.contextmanager
def channels_last(model: nn.Module, input_size: tuple[int, ...], device: torch.device | str = "cpu") -> Iterator[bool]:
    """Run ``model`` channels-last for the duration of a pass on the CPU (when :func:`try_channels_last` agrees);
    yields whether it does. The model is back in contiguous NCHW afterwards: it may train or be saved next (a
    safetensors file takes contiguous tensors only)."""
    used = torch.device(device).type == "cpu" and len(input_size) == 3  # images (C, H, W), not features
    used = used and try_channels_last(model, tuple(input_size), device)
    try:
        yield used
    finally:
        if used:
            model.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def channels_last_pass(
    model: nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu"
) -> Iterator[tuple[Iterator[Any], bool]]:
    """:func:`channels_last` for a pass over ``loader``'s ``(inputs, labels)`` batches, sized by the first batch
    (read here, outside inference mode, and given back first); yields ``(batches, used)``."""
    batches = iter(loader)
    first = next(batches, None)
    shape = tuple(first[0].shape[1:]) if first is not None else ()
    with channels_last(model, shape, device) as used:
        yield (itertools.chain([first], batches) if first is not None else batches), used


def as_layout(x: torch.Tensor, used: bool) -> torch.Tensor:
    """A 4-D batch in the layout the model runs in."""
    return x.contiguous(memory_format=torch.channels_last) if used and x.ndim == 4 else x
