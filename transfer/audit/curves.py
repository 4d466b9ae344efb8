"""How many more images would help: learning curves on cached features, and a power-law forecast.

A linear probe is trained on stratified subsets of the training split (:data:`FRACTIONS` of it, each
:data:`REPEATS` times with different draws) and scored on the validation split, overall and per class. The error
is fitted with a power law ``err(n) = a * n^-b + c`` (Hestness et al. 2017, "Deep learning scaling is predictable,
empirically"; ``c >= 0`` the error more data cannot remove), and the fit forecasts the accuracy at twice the data.
A class whose own curve promises the largest gain is data-starved: more images of it help most.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from transfer.audit.probe import fit_probe

_log = logging.getLogger(__name__)

# Four sizes, three draws each below the full set: measured on digits (forecast from a quarter of the training
# images against probes on half, six draws), as close as six sizes (mean error 1.2 vs 1.6 points) in 58% of the time.
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
REPEATS = 3
STARVED_GAIN = 0.02  # a class whose forecast gains at least this much at twice the data is data-starved
CLASS_CURVE_MIN_VAL = 10  # a class's own curve needs this many validation images to say anything
# No forecast below this many validation images: each point's 95% interval is then wider than +-13 points.
FORECAST_MIN_VAL = 50
# ...nor when the fitted law misses the accuracy measured on all the training images by more than this: the curve
# is noise (a few validation images, or a probe that jumps between sizes), and a forecast from it would not be.
FORECAST_MAX_MISS = 0.03


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a * n^-b + c``."""
    return a * np.power(n, -b) + c


def fit_power_law(n: np.ndarray, err: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, c)`` of :func:`power_law` fitted to errors ``err`` at sizes ``n`` (least squares, bounded)."""
    from scipy.optimize import curve_fit

    n, err = np.asarray(n, float), np.clip(np.asarray(err, float), 1e-4, 1.0)
    slope = -np.polyfit(np.log(n), np.log(err), 1)[0]  # the c = 0 fit, a start and a fallback
    start = (float(err[0] * n[0] ** max(slope, 0.05)), float(max(slope, 0.05)), 0.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(
                power_law, n, err, p0=start, bounds=([0.0, 0.0, 0.0], [np.inf, 3.0, float(err.min())]), maxfev=5000
            )
        return float(params[0]), float(params[1]), float(params[2])
    except (RuntimeError, ValueError):
        return start


def _subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified draw of ``fraction`` of each class (at least one image each)."""
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picked.append(rng.choice(rows, max(1, round(fraction * len(rows))), replace=False))
    return np.concatenate(picked)


@dataclass
class LearningCurve:
    """Accuracy of a linear probe against the number of training images, and its forecast at twice the data."""

    sizes: list[int]
    accuracy: list[float]  # mean over repeats
    per_class: dict[str, list[float]]
    forecast: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "accuracy": self.accuracy, "per_class": self.per_class, **self.forecast}


def measure(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    classes: list[str],
    *,
    fractions: tuple[float, ...] = FRACTIONS,
    repeats: int = REPEATS,
    seed: int = 0,
) -> LearningCurve:
    """The learning curve of ``train`` scored on ``val``, with its forecast at twice the training images."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    sizes, acc, per_class = [], [], np.zeros((len(fractions), k))
    for f_i, fraction in enumerate(fractions):
        scores, class_scores = [], np.zeros(k)
        for _ in range(repeats if fraction < 1.0 else 1):
            rows = _subset(train_y, fraction, rng)
            pred = fit_probe(train_x[rows], train_y[rows], k)(val_x).argmax(1).numpy()
            scores.append(float((pred == val_y).mean()))
            class_scores += [
                float((pred[val_y == c] == c).mean()) if (val_y == c).sum() >= CLASS_CURVE_MIN_VAL else np.nan
                for c in range(k)
            ]
            n = len(rows)
        sizes.append(n)
        acc.append(float(np.mean(scores)))
        per_class[f_i] = class_scores / (repeats if fraction < 1.0 else 1)
    measured = [i for i in range(k) if np.isfinite(per_class[:, i]).all()]  # classes with enough val images
    by_class = {classes[i]: np.round(per_class[:, i], 4).tolist() for i in measured}
    curve = LearningCurve(sizes, [round(a, 4) for a in acc], by_class)
    curve.forecast = forecast(curve, 2 * sizes[-1])
    why_not = _no_forecast(curve, len(val_y))
    if why_not:
        curve.forecast.update(forecast_accuracy=None, forecast_gain=None, data_starved=[], no_forecast=why_not)
    return curve


def _no_forecast(curve: LearningCurve, n_val: int) -> str | None:
    """Why the curve cannot honestly forecast (None: it can)."""
    if n_val < FORECAST_MIN_VAL:
        return f"too few validation images ({n_val}; a forecast needs {FORECAST_MIN_VAL})"
    miss = abs(curve.forecast["fitted_accuracy"] - curve.accuracy[-1])
    if miss > FORECAST_MAX_MISS:
        return f"the learning curve is too uneven to extrapolate (the fitted law misses today's accuracy by {miss:.1%})"
    return None


def forecast(curve: LearningCurve, n: int) -> dict[str, Any]:
    """Expected accuracy at ``n`` training images (the power law fitted to the curve), overall and per class (the
    gain from the largest measured size to ``n``), and the data-starved classes."""
    sizes = np.array(curve.sizes, float)
    ends = np.array([sizes[-1], n], float)
    now, then = 1.0 - power_law(ends, *fit_power_law(sizes, 1.0 - np.array(curve.accuracy)))
    gains = {}
    for name, accs in curve.per_class.items():
        a = np.array(accs, float)
        if not np.isnan(a).any():
            err = power_law(ends, *fit_power_law(sizes, 1.0 - a))
            gains[name] = round(float(err[0] - err[1]), 4)
    starved = sorted((c for c, g in gains.items() if g >= STARVED_GAIN), key=lambda c: -gains[c])
    return {
        "forecast_size": int(n),
        "fitted_accuracy": round(float(np.clip(now, 0.0, 1.0)), 4),
        "forecast_accuracy": round(float(np.clip(then, 0.0, 1.0)), 4),
        "forecast_gain": round(float(then - now), 4),
        "class_gain": gains,
        "data_starved": starved,
    }


def plot(curve: LearningCurve, path: Path | IO[bytes]) -> Path | IO[bytes]:
    """The curve, its power-law fit and the forecast point, as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.figure import Figure

    sizes = np.array(curve.sizes, float)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(sizes, curve.accuracy, "o", label="linear probe (validation)")
    if curve.forecast.get("forecast_accuracy") is not None:  # no law drawn through a curve too noisy to forecast
        grid = np.linspace(sizes[0], 2 * sizes[-1], 100)
        law = 1.0 - power_law(grid, *fit_power_law(sizes, 1.0 - np.array(curve.accuracy)))
        ax.plot(grid, law, "-", label="power law")
        ax.plot([curve.forecast["forecast_size"]], [curve.forecast["forecast_accuracy"]], "s", label="forecast at 2x")
    ax.set_xlabel("training images")
    ax.set_ylabel("accuracy")
    ax.set_title("How many more images would help?")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path
