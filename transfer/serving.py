"""Models logged before version 0.2 run ``from transfer.serving import ImageClassifier`` in their own copy of the
model's code: this name keeps them loading. New code imports :mod:`transfer.deploy`."""

from transfer.deploy.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
