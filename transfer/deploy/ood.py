"""Saying "I don't know": a distance score on the penultimate features, and a threshold chosen on held-out images.

The deployed model carries what it needs to tell an input unlike its training images (a registry of detectors,
:data:`DETECTORS`, named in the recipe's ``deploy.ood``):

- ``knn``: the L2-normalised features of the training images (at most :data:`MAX_INDEX`, a seeded stratified
  sample beyond that); the score is one minus the cosine similarity to the ``k``-th nearest of them (Sun et al.,
  "Out-of-Distribution Detection with Deep Nearest Neighbors", arXiv:2204.06507, 2022).
- ``mahalanobis``: class means and one shared covariance (Ledoit-Wolf shrinkage, since there are often fewer
  images than feature dimensions); the score is the smallest Mahalanobis distance to a class mean (Lee et al.,
  arXiv:1807.03888, 2018).

The threshold is the ``1 - false_alarm`` quantile of the scores of held-out (validation) images, which the index
never saw: about that share of new in-domain images is called unknown. The false-alarm rate reported is
cross-fitted (a threshold from one half of the validation images, counted on the other). The arrays travel inside
the model as safetensors, the settings in its config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from transfer.deploy.calibration import halves

_log = logging.getLogger(__name__)

MAX_INDEX = 20000  # training features kept by knn: 20000 x 1280 float32 is 100 MB; the score stays fast
KNN_K = 10


class Detector:
    """A score of how unlike the training features an input's features are (higher: more unusual)."""

    method: ClassVar[str] = ""

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> Detector:
        """Fit on the training images' features and labels."""
        raise NotImplementedError

    @classmethod
    def load(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> Detector:
        """Rebuild from :meth:`arrays` and :meth:`settings`."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """What travels in the safetensors file."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What travels in the config (JSON)."""
        return {}

    def score(self, feats: np.ndarray) -> np.ndarray:
        """One score per row of ``feats`` (N, D)."""
        raise NotImplementedError


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` rows, each class keeping its share."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(idx, max(1, round(limit * len(idx) / len(labels))), replace=False)
        for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(keep))[:limit]


class KnnDetector(Detector):
    """One minus the cosine similarity to the ``k``-th nearest training feature."""

    method = "knn"

    def __init__(self, index: np.ndarray, k: int) -> None:
        self.index = _normalise(index)
        self.k = max(1, min(int(k), len(self.index)))

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> KnnDetector:
        keep = _stratified_sample(np.asarray(labels), MAX_INDEX, seed)
        return cls(np.asarray(feats)[keep], KNN_K)

    @classmethod
    def load(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> KnnDetector:
        return cls(arrays["index"], int(settings["k"]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"index": self.index}

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "index_size": len(self.index)}

    def score(self, feats: np.ndarray) -> np.ndarray:
        sims = _normalise(feats) @ self.index.T
        kth = np.partition(sims, -self.k, axis=1)[:, -self.k]
        return (1.0 - kth).astype(np.float64)


class MahalanobisDetector(Detector):
    """The smallest Mahalanobis distance (squared) to a class mean under one shared, shrunk covariance."""

    method = "mahalanobis"

    def __init__(self, means: np.ndarray, precision: np.ndarray) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        self._mp = self.means @ self.precision  # (K, D)
        self._mpm = np.einsum("kd,kd->k", self._mp, self.means)

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> MahalanobisDetector:
        from sklearn.covariance import LedoitWolf

        x, y = np.asarray(feats, dtype=np.float64), np.asarray(labels)
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    @classmethod
    def load(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> MahalanobisDetector:
        return cls(arrays["means"], arrays["precision"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}

    def score(self, feats: np.ndarray) -> np.ndarray:
        x = np.asarray(feats, dtype=np.float64)
        xp = x @ self.precision
        d = np.einsum("nd,nd->n", xp, x)[:, None] - 2 * xp @ self.means.T + self._mpm[None, :]
        return np.maximum(d.min(axis=1), 0.0)


DETECTORS: dict[str, type[Detector]] = {d.method: d for d in (KnnDetector, MahalanobisDetector)}


@dataclass
class UnknownDetector:
    """A detector with its operating point: inputs scoring above ``threshold`` are unknown.

    Attributes:
        detector: the fitted score.
        threshold: the ``1 - false_alarm`` quantile of the held-out images' scores.
        false_alarm: the target share of in-domain images called unknown.
        false_alarm_val: the share measured on held-out images, cross-fitted (nan when not measured).
    """

    detector: Detector
    threshold: float
    false_alarm: float
    false_alarm_val: float = float("nan")

    def score(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, unknown) per row of ``feats``."""
        s = self.detector.score(feats)
        return s, s > self.threshold

    def config(self) -> dict[str, Any]:
        """The ``ood`` entry of the model config."""
        return {
            "method": self.detector.method,
            "threshold": float(self.threshold),
            "false_alarm": float(self.false_alarm),
            "false_alarm_val": float(self.false_alarm_val),
            **self.detector.settings(),
        }

    def save(self, path: Path) -> Path:
        """Write the detector's arrays as safetensors."""
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.detector.arrays().items()}, str(path))
        return path

    @classmethod
    def load(cls, settings: dict[str, Any], path: str | Path) -> UnknownDetector:
        """Rebuild from the config's ``ood`` entry and the safetensors file."""
        from safetensors.numpy import load_file

        method = settings["method"]
        if method not in DETECTORS:
            raise ValueError(f"unknown ood method {method!r} in the model config: use one of {', '.join(DETECTORS)}")
        detector = DETECTORS[method].load(load_file(str(path)), settings)
        return cls(
            detector, float(settings["threshold"]), float(settings["false_alarm"]), float(settings["false_alarm_val"])
        )


def _quantile(scores: np.ndarray, false_alarm: float) -> float:
    return float(np.quantile(scores, 1.0 - false_alarm, method="higher"))


def fit_unknown(
    method: str,
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    val_feats: np.ndarray,
    false_alarm: float,
    seed: int = 0,
) -> UnknownDetector:
    """Fit ``method`` on the training features; threshold on the held-out features for ``false_alarm``.

    The reported false-alarm rate is cross-fitted: each half of the held-out images is counted against the
    threshold chosen on the other half.
    """
    detector = DETECTORS[method].fit(train_feats, train_labels, seed)
    scores = detector.score(val_feats)
    flagged = 0
    if len(scores) >= 2:
        a, b = halves(len(scores), seed)
        for fit_on, count_on in ((a, b), (b, a)):
            flagged += int((scores[count_on] > _quantile(scores[fit_on], false_alarm)).sum())
    rate = flagged / len(scores) if len(scores) >= 2 else float("nan")
    found = UnknownDetector(detector, _quantile(scores, false_alarm), false_alarm, rate)
    _log.info(
        "unknown detection (%s): threshold %.4g for %.0f%% false alarms; %.1f%% cross-fitted on %d held-out images",
        method,
        found.threshold,
        100 * false_alarm,
        100 * rate,
        len(scores),
    )
    return found
