"""Errors the zoo raises for bad input; each message says what is wrong and what to do."""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error the zoo raises on bad input."""


class UnknownModelError(ZooError, KeyError):
    """The model name (or alias) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(ZooError):
    """Pretrained weights cannot be had: unknown tag, missing file, or offline with an empty cache."""


class CheckpointMismatchError(ZooError):
    """A checkpoint's keys or shapes do not fit the architecture."""
