"""Outliers: images far from every class in feature space, and pictures that are a problem in themselves.

Feature outliers use ``cleanlab.outlier.OutOfDistribution`` (the mean cosine distance to an image's nearest
neighbours, scored as ``exp(-distance / median distance)``): an image whose distance is more than
:data:`OUTLIER_DISTANCE` times the dataset's median is flagged. Planted photos of a cat and a coffee cup among
handwritten digits sat at 5 to 5.5 times the median, the farthest clean digit at 2.8.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from transfer.audit.scan import FileFacts

OUTLIER_DISTANCE = 4.0  # times the median nearest-neighbour distance
MIN_IMAGES = 12  # fewer than this: no neighbourhood to be far from


def feature_outliers(features: torch.Tensor) -> list[tuple[int, float]]:
    """``(row, distance in medians)`` of the images far from every other, farthest first."""
    from cleanlab.outlier import OutOfDistribution

    if len(features) < MIN_IMAGES:
        return []
    with contextlib.redirect_stdout(io.StringIO()):  # cleanlab prints its progress
        scores = OutOfDistribution().fit_score(features=features.numpy().astype(np.float64), verbose=False)
    distance = -np.log(np.clip(scores, 1e-300, 1.0))  # t = 1: the distance over the median distance
    rows = np.flatnonzero(distance > OUTLIER_DISTANCE)
    return sorted(((int(i), round(float(distance[i]), 2)) for i in rows), key=lambda r: -r[1])


def picture_problems(facts: Sequence[FileFacts]) -> list[tuple[int, str]]:
    """``(row, why)`` of readable images that are tiny or extremely elongated."""
    return [(i, f.problem) for i, f in enumerate(facts) if f.problem]
