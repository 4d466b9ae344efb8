"""The audit's findings (:class:`AuditReport`) and the one-line verdict per problem that says what to do."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SMALL_CLASS = 20  # fewer training images than this in a class: too few to learn it, or to measure it
IMBALANCE = 0.5  # a class with under half the images of the largest is under-represented
EXAMPLES = 3  # paths named in a verdict line


@dataclass
class AuditReport:
    """What ``transfer audit`` found. :meth:`to_dict` is the ``--json`` output (paths are strings).

    Attributes:
        source: the data source audited.
        backbone: the backbone (and weights) whose frozen features were used.
        classes: class name -> images (training and validation together).
        split_counts: ``{"train": {class: n}, "val": {class: n}}``.
        exact_duplicates: groups of files with the same bytes (``paths``, ``labels``, ``splits``, ``similarity``,
            ``conflicting_labels``).
        near_duplicates: groups of the same picture in other files (same fields; ``similarity``: feature cosine).
        leaks: ``[train_path, val_path]`` pairs of the same picture in both splits.
        label_issues: ``{path, given, suggested, score, split}``, most suspicious first (``score``: 1 - the
            probe's probability of the given label).
        outliers: paths far from every class in feature space (``outlier_distance``: times the median distance).
        unreadable: paths that are not usable images (``unreadable_reasons``: why).
        odd_images: ``{path, why}`` of tiny or extremely elongated pictures.
        stats: image sizes, colour modes and formats.
        probe: the cross-validated linear probe's accuracy with its 95% Wilson interval.
        learning_curve: accuracy against training images, with the forecast at twice the data.
        thresholds: the calibrated near-duplicate thresholds.
        verdicts: one line per problem, saying what to do.
    """

    source: str
    backbone: str
    classes: dict[str, int]
    split_counts: dict[str, dict[str, int]]
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    leaks: list[list[str]] = field(default_factory=list)
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[str] = field(default_factory=list)
    outlier_distance: dict[str, float] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    unreadable_reasons: dict[str, str] = field(default_factory=dict)
    odd_images: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    learning_curve: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)

    @property
    def few_classes(self) -> list[str]:
        """Classes with fewer than :data:`SMALL_CLASS` training images (too few to learn, or to measure)."""
        return [c for c, n in self.split_counts.get("train", {}).items() if n < SMALL_CLASS]

    @property
    def minority_classes(self) -> list[str]:
        """Classes with under :data:`IMBALANCE` times the training images of the largest (balanced data has none)."""
        train = self.split_counts.get("train", {})
        largest = max(train.values(), default=0)
        return [c for c, n in train.items() if n < IMBALANCE * largest]

    @property
    def small_classes(self) -> list[str]:
        """Classes with too few training images, absolutely or against the largest class."""
        minority = set(self.minority_classes)
        return [c for c in self.split_counts.get("train", {}) if c in minority or c in self.few_classes]

    @property
    def clean(self) -> bool:
        """No problem found (the learning-curve forecast is advice, not a problem)."""
        return not (
            self.exact_duplicates
            or self.near_duplicates
            or self.leaks
            or self.label_issues
            or self.outliers
            or self.unreadable
            or self.odd_images
            or self.small_classes
        )

    @property
    def exit_code(self) -> int:
        """``transfer audit``'s exit code: 0 clean, 1 problems found."""
        return 0 if self.clean else 1

    def flagged(self) -> set[str]:
        """Every path some finding names (what a person would be asked to look at)."""
        groups = [p for g in self.exact_duplicates + self.near_duplicates for p in g["paths"]]
        return {
            *groups,
            *(p for pair in self.leaks for p in pair),
            *(i["path"] for i in self.label_issues),
            *self.outliers,
            *self.unreadable,
            *(o["path"] for o in self.odd_images),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(paths: list[str]) -> str:
    more = f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else ""
    return ", ".join(paths[:EXAMPLES]) + more


def _extra_copies(groups: list[dict[str, Any]]) -> int:
    return sum(len(g["paths"]) - 1 for g in groups)


def _class_size_verdicts(r: AuditReport) -> list[str]:
    """At most two lines: classes with too few images, and classes outnumbered by the largest (never on balanced
    data, where every class is the largest)."""
    train = r.split_counts.get("train", {})
    out = []
    if r.few_classes:
        sizes = [f"{c!r} ({train[c]})" for c in r.few_classes]
        which = "every class has" if len(r.few_classes) == len(train) else f"{len(sizes)} classes have"
        out.append(
            f"few images: {which} fewer than {SMALL_CLASS} training images ({_names(sizes)}): add images to them"
        )
    if r.minority_classes:
        big = max(train, key=lambda c: train[c])
        sizes = [f"{c!r} ({train[c]})" for c in r.minority_classes]
        out.append(
            f"imbalance: {_names(sizes)} have under half the training images of {big!r} ({train[big]}): add images "
            "to them (data.balance: auto weights the loss meanwhile)"
        )
    return out


def verdicts(r: AuditReport) -> list[str]:
    """One line per problem, each saying what to do; the forecast last."""
    out = []
    if r.leaks:
        out.append(
            f"leakage: {len(r.leaks)} validation images are copies of training images, so the validation accuracy "
            f"overstates the model: remove them from validation ({_names([v for _, v in r.leaks])})"
        )
    for kind, groups in (("exact duplicates", r.exact_duplicates), ("near-duplicates", r.near_duplicates)):
        conflicting = [g for g in groups if g["conflicting_labels"]]
        if groups:
            out.append(
                f"{kind}: remove these {_extra_copies(groups)} extra copies in {len(groups)} groups (keep one of each)"
                + (f"; {len(conflicting)} groups carry two labels: keep the right one" if conflicting else "")
            )
    if r.label_issues:
        named = [f"{i['path']} ({i['given']}, looks like {i['suggested']})" for i in r.label_issues]
        out.append(f"labels: check these {len(r.label_issues)} labels, most suspicious first ({_names(named)})")
    if r.outliers:
        out.append(
            f"outliers: {len(r.outliers)} images are far from every class; check they belong ({_names(r.outliers)})"
        )
    if r.unreadable:
        out.append(f"unreadable: fix or remove these {len(r.unreadable)} files ({_names(r.unreadable)})")
    if r.odd_images:
        odd = [o["path"] for o in r.odd_images]
        out.append(f"pictures: {len(odd)} are tiny or extremely elongated ({_names(odd)})")
    out += _class_size_verdicts(r)
    curve = r.learning_curve
    if curve.get("forecast_accuracy") is not None:
        starved = curve.get("data_starved") or []
        out.append(
            f"more data: twice the images ({curve['forecast_size']}) would bring the linear probe from about "
            f"{curve['fitted_accuracy']:.1%} to about {curve['forecast_accuracy']:.1%} (the power law fitted to "
            "its learning curve)"
            + (f"; most gain from more images of {', '.join(map(repr, starved[:5]))}" if starved else "")
        )
    elif curve.get("no_forecast"):
        out.append(f"more data: no forecast: {curve['no_forecast']}")
    return out
