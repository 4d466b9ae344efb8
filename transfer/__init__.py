"""transfer: fine-tune zoo backbones with Lightning, track runs in MLflow, serve them from the registry."""

from transfer.errors import UserError

__all__ = ["UserError"]
