"""The audit's linear probe: multinomial logistic regression on standardised frozen features, full batch.

Label checks, learning curves and ``transfer recommend`` fit many small probes on the same cached features, so the
probe is a few L-BFGS steps in torch on the whole (small) training set: a fit on 1,500 x 1,280 features takes well
under a second, where scikit-learn's solver needs tens of seconds for the same model on this machine class.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from transfer.process_state import torch_threads

PROBE_L2 = 1e-2  # weight decay on standardised features; measured on digits: fewer false label suspects than 1e-3
PROBE_STEPS = 50
FOLDS = 5
PROBE_THREADS = 1  # see process_state.torch_threads: small full-batch ops run faster on one thread

Probe = Callable[[torch.Tensor], torch.Tensor]  # features -> class probabilities


def fit_probe(x: torch.Tensor, y: np.ndarray | torch.Tensor, num_classes: int, *, l2: float = PROBE_L2) -> Probe:
    """A linear classifier trained on ``x`` (N, D) and labels ``y``; returns features -> probabilities."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    target = torch.as_tensor(np.asarray(y), dtype=torch.long)
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=PROBE_STEPS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad(), torch_threads(PROBE_THREADS):
        opt.step(closure)
    w, b = weight.detach(), bias.detach()

    def probs(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(((features.float() - mean) / std) @ w + b, dim=1)

    return probs


def out_of_fold(x: torch.Tensor, y: np.ndarray, num_classes: int, *, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of a stratified ``FOLDS``-fold cross-validated probe: every image is
    scored by a probe that never saw it."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), num_classes), dtype=np.float64)
    folds = int(min(FOLDS, np.bincount(y).max()))
    if folds < 2:
        return out + 1.0 / num_classes
    with warnings.catch_warnings():  # a class smaller than the number of folds: the probe copes, the warning is noise
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
            out[held] = fit_probe(x[train], y[train], num_classes)(x[held]).numpy()
    return out
