"""What one page lets its visitors do: the one place for every limit and its default.

The defaults suit a page shared by a few people on one CPU machine; ``transfer app --limit NAME=VALUE`` (or the
``TRANSFER_APP_LIMITS`` variable, ``NAME=VALUE,NAME=VALUE``) changes any of them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from transfer.errors import UserError

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The page's limits (see :data:`HELP` for what each one bounds)."""

    upload_mb: int = 200
    expanded_mb: int = 1024
    max_files: int = 20_000
    trainings_per_visitor: int = 1
    trainings_total: int = 2
    max_backbone_mparams: float = 30.0
    idle_stop_minutes: float = 15.0
    session_ttl_hours: float = 24.0
    cancel_grace_s: float = 20.0
    cache_sweep_s: int = 3600
    cache_ttl_s: int = 86_400
    audit_max_images: int = 3000
    recommend_budget_s: float = 180.0

    @property
    def upload_bytes(self) -> int:
        return self.upload_mb * MB

    @property
    def expanded_bytes(self) -> int:
        return self.expanded_mb * MB

    @property
    def max_backbone_params(self) -> float:
        return self.max_backbone_mparams * 1e6

    @property
    def delete_cache(self) -> tuple[int, int]:
        """Gradio's ``delete_cache``: (how often to sweep, age of files to delete), in seconds."""
        return self.cache_sweep_s, self.cache_ttl_s

    def with_overrides(self, pairs: Sequence[str]) -> Limits:
        """A copy with ``NAME=VALUE`` overrides applied.

        Raises:
            UserError: an unknown name or a value of the wrong type.
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, object] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise UserError(f"--limit {pair!r}: write NAME=VALUE with NAME one of {', '.join(known)}")
            kind = type(getattr(self, name))
            try:
                changes[name] = kind(float(value)) if kind is int else kind(value)
            except ValueError:
                raise UserError(f"--limit {pair!r}: {name} takes a number") from None
            if changes[name] < 0:  # type: ignore[operator]
                raise UserError(f"--limit {pair!r}: {name} cannot be negative")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, pairs: Sequence[str] = ()) -> Limits:
        """The defaults, then ``$TRANSFER_APP_LIMITS``, then ``pairs`` (the command line's ``--limit``)."""
        env = [p for p in os.environ.get("TRANSFER_APP_LIMITS", "").split(",") if p.strip()]
        return cls().with_overrides([*env, *pairs])

    def describe(self) -> str:
        """One Markdown line a visitor reads: what this page allows."""
        return (
            f"Limits here: uploads up to {self.upload_mb} MB ({self.expanded_mb} MB and {self.max_files:,} files "
            f"unpacked); {self.trainings_per_visitor} training at a time per visitor, {self.trainings_total} on the "
            f"server; backbones up to {self.max_backbone_mparams:g}M parameters; a training stops "
            f"{self.idle_stop_minutes:g} min after its visitor's last page closes; work folders are deleted after "
            f"{self.session_ttl_hours:g} h without a visit (registered models stay)."
        )


HELP = {
    "upload_mb": "largest upload (a zip or the images dropped at once), in MB",
    "expanded_mb": "largest size a zip may expand to, in MB",
    "max_files": "most files in a zip or in one drop of images",
    "trainings_per_visitor": "trainings one visitor may run at once",
    "trainings_total": "trainings the server runs at once",
    "max_backbone_mparams": "largest backbone offered, in millions of parameters",
    "idle_stop_minutes": "a training stops this long after its visitor's last page closed",
    "session_ttl_hours": "a visitor's work folder is deleted after this long without a visit",
    "cancel_grace_s": "after Cancel, seconds a fit has to stop before it is killed",
    "cache_sweep_s": "how often Gradio sweeps its file cache, in seconds",
    "cache_ttl_s": "age at which Gradio deletes a cached file, in seconds",
    "audit_max_images": "most images one data audit or backbone recommendation reads",
    "recommend_budget_s": "seconds one backbone recommendation may spend measuring candidates",
}
