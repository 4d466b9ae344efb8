"""What the page shows after a run, read back from MLflow: evaluation, deployment, and the deployed model's answers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from app.session import Session
from transfer.errors import UserError
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)


def _val_images(session: Session) -> tuple[list[str], list[str]]:
    """The run's validation images and their true labels, re-derived from its recipe (same split, same seed)."""
    from transfer.job import dataset_index
    from transfer.recipe import load_recipe

    assert session.run_dir is not None
    index = dataset_index(load_recipe(session.run_dir / "recipe.yaml"))
    return [p for p, _ in index.val], [index.classes[y] for _, y in index.val]


def evaluate_run(session: Session) -> tuple[str, str | None, pd.DataFrame, list[tuple[str, str]]]:
    """Summary, confusion-matrix PNG, per-class accuracy and the worst mistakes of the session's last run."""
    from transfer.deploy.predict import predict_paths

    run_id = session.result["run_id"]
    store = TrackingStore(session.tracking_uri)
    run = store.client.get_run(run_id)
    m, p = run.data.metrics, run.data.params
    summary = (
        f"**val_acc {m.get('val_acc', float('nan')):.3f}**, val_f1 {m.get('val_f1', float('nan')):.3f} — "
        f"backbone `{p.get('backbone')}`, strategy `{p.get('strategy')}`"
    )
    if p.get("strategy_reason"):
        summary += f"\n\nWhy this strategy: {p['strategy_reason']}"

    confusion = None
    artifacts = [a.path for a in store.client.list_artifacts(run_id)]
    png = next((a for a in artifacts if a.endswith(".png") and "confusion" in a), None)
    if png:
        assert session.run_dir is not None
        dest = session.run_dir / "artifacts"
        dest.mkdir(parents=True, exist_ok=True)
        confusion = store.client.download_artifacts(run_id, png, str(dest))

    paths, truth = _val_images(session)
    preds = predict_paths(session.result["model_uri"], paths, store)
    preds["true"] = truth
    ok = preds["error"].isna()
    preds = preds[ok]
    per_class = (
        preds.assign(correct=preds["label"] == preds["true"])
        .groupby("true")["correct"]
        .agg(["mean", "count"])
        .reset_index()
        .rename(columns={"true": "class", "mean": "accuracy", "count": "images"})
    )
    wrong = preds[preds["label"] != preds["true"]].sort_values("score", ascending=False).head(12)
    gallery = [(r.path, f"{r.true} → {r.label} ({r.score:.2f})") for r in wrong.itertuples()]
    summary += f"\n\n{len(preds)} validation images, {len(wrong)} of the most confident mistakes shown."
    return summary, confusion, per_class, gallery


def deploy(session: Session, name: str, alias: str) -> str:
    """Register the session's last model under ``name`` with ``alias``; return how to consume it."""
    from transfer.deploy.registry import register

    model_uri = session.result["model_uri"]
    version, _ = register(TrackingStore(session.tracking_uri), model_uri, name, alias=alias)
    uri = f"models:/{name}@{alias}"
    return (
        f"✅ Registered **{name}** version {version} with alias `{alias}`.\n\n"
        "Use it from Python:\n"
        "```python\n"
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({session.tracking_uri!r})\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        'print(model.predict(pd.DataFrame({"image": ["photo.jpg"]})))\n'
        "```\n"
        "Serve it over HTTP:\n"
        "```\n"
        f"MLFLOW_TRACKING_URI={session.tracking_uri} mlflow models serve -m {uri} --env-manager local -p 5001\n"
        "```\n"
        f"Or from the command line: `transfer predict {uri} photo.jpg --tracking-uri {session.tracking_uri}`"
    )


def classify_deployed(session: Session, image_path: str, name: str, alias: str) -> tuple[dict[str, float], str]:
    """Scores of the registered model ``name@alias`` (loaded from the registry, not from memory)."""
    from transfer.deploy.classifier import PROB_PREFIX
    from transfer.deploy.predict import predict_paths

    uri = f"models:/{name}@{alias}"
    df = predict_paths(uri, [image_path], TrackingStore(session.tracking_uri))
    row: dict[str, Any] = df.iloc[0].to_dict()
    if row.get("error"):
        raise UserError(f"{Path(image_path).name}: {row['error']}")
    scores = {k.removeprefix(PROB_PREFIX): float(v) for k, v in row.items() if k.startswith(PROB_PREFIX)}
    return scores, uri
