"""Calibrated scores: one temperature fitted on held-out logits, and how well it calibrates, measured honestly.

The deployed model divides its logits by a temperature ``T`` before the softmax (Guo et al., "On Calibration of
Modern Neural Networks", arXiv:1706.04599, 2017): ``T`` minimises the negative log-likelihood of the held-out
(validation) labels. A temperature never changes the argmax, so accuracy is unchanged.

The expected calibration error (ECE, 15 equal-width confidence bins, torchmetrics) before and after is
*cross-fitted*: the validation images are split in two halves at random (seeded), each half is calibrated with the
temperature fitted on the other half, and the ECE is measured on the union, so no image both fits the temperature
and scores it. The deployed temperature is then fitted on all of them. The reliability diagram (accuracy per
confidence bin, before and after) is drawn to a PNG.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_log = logging.getLogger(__name__)

ECE_BINS = 15
MIN_IMAGES = 10  # below this many held-out images a temperature is noise: none is fitted
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


@dataclass
class Calibration:
    """A fitted temperature and what it does on held-out images.

    Attributes:
        temperature: divide the logits by it before the softmax (1.0: none fitted).
        ece_before: ECE (15 bins) of the uncalibrated probabilities on the held-out images.
        ece_after: cross-fitted ECE of the calibrated probabilities (each half calibrated by the other's fit).
        nll_before: mean negative log-likelihood before.
        nll_after: cross-fitted mean negative log-likelihood after.
        images: how many held-out images.
        note: why no temperature was fitted, when none was.
        after_probs: the cross-fitted calibrated probabilities (for the diagram; not a metric).
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    images: int
    note: str = ""
    after_probs: np.ndarray | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics of this calibration."""
        keys = ("temperature", "ece_before", "ece_after", "nll_before", "nll_after")
        return {k: float(getattr(self, k)) for k in keys}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error (top-label, equal-width bins, L1), torchmetrics' definition."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=bins, norm="l1"))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the held-out negative log-likelihood (bounded to 0.05..20)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: nll(logits, labels, math.exp(t)), bounds=_LOG_T_BOUNDS, method="bounded")
    return float(math.exp(res.x))


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into two halves (the cross-fitting folds)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def calibrate(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Calibration:
    """Fit the deployed temperature on all held-out logits and measure before/after with 2-fold cross-fitting."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n = len(labels)
    before = softmax(logits)
    ece_before, nll_before = ece(before, labels), nll(logits, labels)
    if n < MIN_IMAGES:
        note = f"{n} held-out images are too few to fit a temperature (at least {MIN_IMAGES}); none is applied"
        _log.warning("%s", note)
        return Calibration(1.0, ece_before, ece_before, nll_before, nll_before, n, note)
    after = np.empty_like(before)
    fold_nll = 0.0
    a, b = halves(n, seed)
    for fit_on, apply_to in ((a, b), (b, a)):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        after[apply_to] = softmax(logits[apply_to], t)
        fold_nll += nll(logits[apply_to], labels[apply_to], t) * len(apply_to)
    temperature = fit_temperature(logits, labels)
    cal = Calibration(temperature, ece_before, ece(after, labels), nll_before, fold_nll / n, n, after_probs=after)
    _log.info("temperature %.3f: ECE %.4f -> %.4f (cross-fitted, %d images)", temperature, ece_before, cal.ece_after, n)
    return cal


def _bins(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accuracy, mean confidence, count) per equal-width confidence bin."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    acc = np.bincount(which, weights=(pred == labels).astype(float), minlength=bins) / np.maximum(count, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / np.maximum(count, 1)
    return acc, mean_conf, count


def reliability_png(
    panels: dict[str, tuple[np.ndarray, float]], labels: np.ndarray, path: Path, bins: int = ECE_BINS
) -> Path:
    """Draw reliability diagrams side by side: ``panels`` maps a title to (probabilities, ECE)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 4.4), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    edges = np.linspace(0, 1, bins + 1)
    for ax, (title, (probs, err)) in zip(axes, panels.items()):
        acc, conf, count = _bins(probs, labels, bins)
        shown = count > 0
        ax.bar(
            edges[:-1][shown],
            acc[shown],
            width=1 / bins,
            align="edge",
            color="#4c72b0",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            edges[:-1][shown],
            (conf - acc)[shown],
            bottom=acc[shown],
            width=1 / bins,
            align="edge",
            color="#dd8452",
            alpha=0.45,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title}: ECE {err:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"reliability on {len(labels)} validation images ({bins} bins)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def diagram(cal: Calibration, logits: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """The before/after reliability diagram of a :func:`calibrate` result."""
    after = cal.after_probs if cal.after_probs is not None else softmax(logits, cal.temperature)
    panels = {"before": (softmax(logits), cal.ece_before)}
    panels[f"after (T={cal.temperature:.2f}, cross-fitted)"] = (after, cal.ece_after)
    return reliability_png(panels, np.asarray(labels), path)
