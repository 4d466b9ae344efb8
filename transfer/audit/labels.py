"""Likely label errors: confident learning (``cleanlab``) on the out-of-fold probabilities of a linear probe.

Every image is scored by a cross-validated linear probe on the cached frozen features that never saw it
(:func:`transfer.audit.probe.out_of_fold`); ``cleanlab.filter.find_label_issues`` then flags the images whose given
label the probe finds unlikely, given the noise it estimates per pair of classes (``filter_by="both"``: flagged by
both the per-class and the per-noise-rate rules, which halved the clean images flagged on digits at the same
recall). Suspects come most suspicious first, each with the label the probe suggests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transfer.audit.probe import out_of_fold

FILTER_BY = "both"


@dataclass(frozen=True)
class LabelIssue:
    """One suspect: its row, the given and suggested class indices, and how suspicious (1 - p(given label))."""

    index: int
    given: int
    suggested: int
    score: float


def label_issues(
    features: torch.Tensor, labels: np.ndarray, num_classes: int, *, seed: int = 0
) -> tuple[list[LabelIssue], np.ndarray]:
    """The suspects, most suspicious first, and the out-of-fold probabilities they were found with."""
    from cleanlab.filter import find_label_issues

    probs = out_of_fold(features, labels, num_classes, seed=seed)
    present = np.bincount(labels, minlength=num_classes) > 0
    if present.sum() < 2:
        return [], probs
    # cleanlab wants every class it sees in the probabilities to have examples: drop columns of absent classes.
    cols = np.flatnonzero(present)
    remap = np.full(num_classes, -1)
    remap[cols] = np.arange(len(cols))
    sub = probs[:, cols] / probs[:, cols].sum(1, keepdims=True)
    ranked = find_label_issues(  # n_jobs=1: no forked pool inside a process that holds torch threads
        remap[labels], sub, filter_by=FILTER_BY, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    issues = [
        LabelIssue(int(i), int(labels[i]), int(cols[sub[i].argmax()]), round(1.0 - float(sub[i, remap[labels[i]]]), 4))
        for i in ranked
    ]
    return issues, probs
