"""Does an earlier stage transfer better than the last one? A paired test that does not flip on noise.

Per-stage linear probes (ridge classifiers on standardised pooled features: closed form, fast, and ranking stages
as a logistic regression does) are scored on the same repeated
stratified folds (:data:`FOLDS` x :data:`REPEATS`). The best stage other than the last challenges the last one on
the fold-by-fold differences; their variance is corrected for the overlap of repeated cross-validation (Nadeau &
Bengio 2003: ``(1 / J + n_test / n_train) * s^2``), since folds that share training images are not independent.
An earlier stage wins only when its mean gain exceeds :data:`Z` corrected standard errors and :data:`MIN_GAIN`.

Calibration (tests/transfer/test_auto.py; synthetic pooled features, 16 dimensions, 5 stages of which the last 4
are tested): with every stage's features drawn from one distribution (no true gap), the old rule ("the best of ~4
noisy scores minus the last > 0.03") chose stage_probe on 19 to 27 of 40 seeds; this test, at Z = 3, on 1 of 40
(2 classes, 80 images) and 0 of 40 (5 classes, 200 images); Z = 2 gave 2 and 3 of 40. Where one stage really
separates the classes better (signal 1.2 against 0.3 at the last stage) it finds the gap on 10 of 10 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FOLDS, REPEATS = 3, 3
Z = 3.0  # standard errors the gain must clear (the best of several stages is chosen on the same folds)
MIN_GAIN = 0.02  # and at least this much accuracy: a smaller gain is not worth a truncated backbone


@dataclass
class StageGap:
    """The test's outcome.

    Attributes:
        scores: mean cross-validated accuracy of each stage tried.
        best: the best stage other than the last (or the last when it is the only one).
        last: the last stage.
        gain: mean accuracy of ``best`` minus the last's, over the folds.
        se: the corrected standard error of ``gain``.
        significant: whether ``best`` beats the last beyond noise.
    """

    scores: dict[int, float] = field(default_factory=dict)
    best: int = 0
    last: int = 0
    gain: float = 0.0
    se: float = 0.0
    significant: bool = False

    def describe(self) -> str:
        """One phrase for the run's reason."""
        verdict = "beats" if self.significant else "does not beat"
        return (
            f"stage {self.best} ({self.scores.get(self.best, 0.0):.3f}) {verdict} the last stage "
            f"({self.scores.get(self.last, 0.0):.3f}): gain {self.gain:+.3f} +- {self.se:.3f}"
        )


def fold_accuracies(x: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The held-out accuracy of a standardised ridge classifier on each ``(train, test)`` split."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    out = []
    for tr, te in splits:
        scaler = StandardScaler().fit(x[tr])
        clf = RidgeClassifier(alpha=1.0).fit(scaler.transform(x[tr]), y[tr])
        out.append(float((clf.predict(scaler.transform(x[te])) == y[te]).mean()))
    return np.asarray(out)


def stage_gap(stage_features: dict[str, np.ndarray], labels: np.ndarray, stages: list[int], seed: int) -> StageGap:
    """Test whether the best of ``stages`` beats the last of them (see the module docstring).

    Args:
        stage_features: ``stage{i}`` -> (N, C_i) pooled features.
        labels: (N,) class indices.
        stages: the stages to try, the last one last.
        seed: fixes the folds.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    folds = int(min(FOLDS, np.bincount(labels).min()))
    last = stages[-1]
    if folds < 2 or len(stages) < 2:
        return StageGap(best=last, last=last)
    splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=REPEATS, random_state=seed).split(labels, labels))
    acc = {i: fold_accuracies(stage_features[f"stage{i}"], labels, splits) for i in stages}
    best = max(stages[:-1], key=lambda i: (acc[i].mean(), i))
    diff = acc[best] - acc[last]
    n_test = len(splits[0][1])
    var = float(diff.var(ddof=1)) if len(diff) > 1 else 0.0
    se = math.sqrt(var * (1 / len(diff) + n_test / (len(labels) - n_test)))
    gain = float(diff.mean())
    scores = {i: round(float(a.mean()), 4) for i, a in acc.items()}
    return StageGap(scores, best, last, gain, se, gain > Z * se and gain > MIN_GAIN)
