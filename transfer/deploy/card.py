"""The model card: one Markdown page that says what a registered model is, how good it is, and where it stops.

Built from what the fit measured (:class:`transfer.deploy.package.Deployment`, the validation metrics, the
latency of the logged model) by :func:`model_card`; logged as the run artifact ``model_card.md``, carried inside
the model, and set as the registered version's description (MLflow keeps at most :data:`MAX_CHARS` there).
"""

from __future__ import annotations

from typing import Any

MAX_CHARS = 5000  # the registry's description column (MLflow's SQL stores: VARCHAR(5000))
CARD_FILE = "model_card.md"
_MAX_CLASSES_LISTED = 30
_MAX_VERDICTS = 8  # the audit's verdict lines the card repeats (the run's audit/report.html has them all)
_MAX_VERDICT_CHARS = 300


def _num(x: Any, fmt: str = ".3f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if v != v else format(v, fmt)


def _data(f: dict[str, Any]) -> list[str]:
    classes, train, val = f.get("classes", []), f.get("train_counts", []), f.get("val_counts", [])
    listed = ", ".join(f"{c} ({t}+{v})" for c, t, v in zip(classes[:_MAX_CLASSES_LISTED], train, val))
    more = f", and {len(classes) - _MAX_CLASSES_LISTED} more" if len(classes) > _MAX_CLASSES_LISTED else ""
    lines = [
        "## Data",
        f"- Source: `{f.get('source')}`" + (f", validation from `{f['val_source']}`" if f.get("val_source") else ""),
        f"- {len(classes)} classes, {sum(train)} training + {sum(val)} validation images "
        f"(per class, training+validation): {listed}{more}",
    ]
    if train and min(train) * 2 <= max(train):
        lines.append(f"- Imbalanced: the largest class has {max(train)} training images, the smallest {min(train)}")
    skipped = f.get("skipped") or []
    if skipped:
        lines.append(f"- {len(skipped)} file(s) skipped as unreadable, e.g. {skipped[0]}")
    return lines + _audit(f.get("audit"))


def _audit(audit: dict[str, Any] | None) -> list[str]:
    """The fit-time audit's counts and verdict lines (``facts["audit"]``: ``counts``, ``verdicts``)."""
    if not audit:
        return ["- Audit: none ran with this fit (`data.audit: off`, or the model was not logged by a fit)"]
    counts = ", ".join(f"{k.replace('_', ' ')} {_num(v, 'g')}" for k, v in audit.get("counts", {}).items())
    verdicts = audit.get("verdicts") or []
    lines = [f"- Audit at fit time ({counts}): " + ("findings below" if verdicts else "no problem found")]
    for line in verdicts[:_MAX_VERDICTS]:
        clipped = line if len(line) <= _MAX_VERDICT_CHARS else line[: _MAX_VERDICT_CHARS - 3] + "..."
        lines.append(f"  - {clipped}")
    if len(verdicts) > _MAX_VERDICTS:
        lines.append(f"  - and {len(verdicts) - _MAX_VERDICTS} more in the run's audit/report.html")
    return lines


def _training(f: dict[str, Any]) -> list[str]:
    return [
        "## Model",
        f"- Backbone: `{f.get('backbone')}` ({f.get('paper')}), weights: {f.get('weights')}, "
        f"input {f.get('image_size')} px",
        f"- Strategy: `{f.get('strategy')}` ({f.get('strategy_reason')}); {f.get('epochs')} epochs, "
        f"{f.get('checkpoint')} checkpoint kept",
    ]


def _metrics(m: dict[str, float], f: dict[str, Any]) -> list[str]:
    n = sum(f.get("val_counts", []))
    lines = [
        f"## Metrics (validation, {n} images)",
        f"- Accuracy {_num(m.get('val_acc'))} (95% Wilson interval {_num(m.get('val_acc_low'))}"
        f"-{_num(m.get('val_acc_high'))}); macro F1 {_num(m.get('val_f1'))}",
    ]
    if "val_acc_top5" in m:
        lines.append(f"- Top-5 accuracy {_num(m['val_acc_top5'])}")
    return lines


def _calibration(m: dict[str, float], c: dict[str, Any], f: dict[str, Any]) -> list[str]:
    lines = [
        "## Calibration",
        f"- Temperature {_num(c.get('temperature'), '.3f')} fitted on the validation images; ECE (15 bins) "
        f"{_num(m.get('ece_before'), '.4f')} before, {_num(m.get('ece_after'), '.4f')} after (cross-fitted: each "
        f"half of the {f.get('calibration_images', 'n/a')} images calibrated by the other half's temperature)",
        "- `score` and `prob_<class>` are the calibrated probabilities; the label is unchanged by calibration",
    ]
    if f.get("calibration_note"):
        lines.append(f"- {f['calibration_note']}")
    return lines


def _unknown(c: dict[str, Any]) -> list[str]:
    ood = c.get("ood")
    if not ood:
        return ["## Unknown detection", "- Off (`deploy.ood: off`): `unknown` is always false"]
    what = {"knn": f"distance to the {ood.get('k')}-th nearest of {ood.get('index_size')} training images"}
    return [
        "## Unknown detection",
        f"- `{ood['method']}` on the penultimate features ({what.get(ood['method'], 'nearest class mean')}); "
        f"`unknown` when `ood_score` > {_num(ood['threshold'], '.4g')}",
        f"- Operating point: {100 * float(ood['false_alarm']):.0f}% of in-domain images flagged by design; "
        f"measured {_num(100 * float(ood['false_alarm_val']), '.1f')}% on the validation images (cross-fitted)",
    ]


def _runtime(m: dict[str, float], c: dict[str, Any], latency: dict[str, float]) -> list[str]:
    lines = [
        "## Runtime",
        f"- {c.get('runtime', 'torch')} at {c.get('precision', 'fp32')} ({c.get('runtime_reason', 'default')})",
    ]
    if "int8_acc_change" in m:
        lines.append(f"- int8 changes validation accuracy by {100 * m['int8_acc_change']:+.2f} points")
    if latency:
        lines.append(
            f"- Measured on {latency.get('device', 'cpu')} ({latency.get('threads', '?')} threads), decoding "
            f"included: {_num(latency.get('latency_ms_b1'), '.1f')} ms for one image, "
            f"{_num(latency.get('images_per_s_b32'), '.0f')} images/s in batches of 32"
        )
    return lines


def _use(f: dict[str, Any], c: dict[str, Any]) -> list[str]:
    classes = f.get("classes", [])
    return [
        "## Intended use and limits",
        f"- Sorts images into the {len(classes)} classes above; it has no other answer, so check `unknown` before "
        "trusting a label for an image that may show something else",
        "- Judged on a validation split of the same source: expect lower accuracy on images taken differently "
        "(camera, lighting, framing); the interval above reflects the sample size only",
        "- Not for decisions about people without a human in the loop",
    ]


def model_card(
    name: str,
    facts: dict[str, Any],
    metrics: dict[str, float],
    config: dict[str, Any],
    latency: dict[str, float] | None = None,
) -> str:
    """The model card (Markdown, at most :data:`MAX_CHARS` characters).

    Args:
        name: the model's name (registered name, else the backbone).
        facts: :attr:`transfer.deploy.package.Deployment.facts`, with ``audit`` (what the fit-time audit found:
            ``counts`` and ``verdicts``) when the fit ran one.
        metrics: the validation metrics and the deployment's metrics.
        config: the model config (temperature, ood, runtime, precision).
        latency: what :func:`transfer.deploy.registry.measure_latency` measured.
    """
    parts = [
        [f"# Model card: {name}"],
        _data(facts),
        _training(facts),
        _metrics(metrics, facts),
        _calibration(metrics, config, facts),
        _unknown(config),
        _runtime(metrics, config, latency or {}),
        _use(facts, config),
    ]
    text = "\n\n".join("\n".join(p) for p in parts) + "\n"
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 20] + "\n\n(truncated)\n"
