"""What the page shows after a run, read back from MLflow: evaluation, deployment under the visitor's name, and the
deployed model's answers.

A run's evaluation is computed once (the validation images through the logged model) and kept in the run folder
(``evaluation/``), so opening the run again, reloading the page or a second tab shows it at once. Registered models
belong to their visitor: :func:`deploy` tags the registered model with its owner (``transfer.owner``) and the
version with its run and dataset digest, and refuses a name someone else owns; :func:`my_models` and
:func:`classify` only ever see the visitor's own models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from app.runs import RunFolder
from transfer.deploy.package import RELIABILITY_PNG
from transfer.deploy.registry import OWNER_TAG
from transfer.errors import UserError
from transfer.imaging import ImageInputError, load_file
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)

MAX_MISTAKES = 12
EVAL_DIR = "evaluation"
# Run artifacts the page shows when a fit logged them (calibration and model cards come from the fit, not the page).
MODEL_CARD_HINT = "model_card"


@dataclass
class Evaluation:
    """A finished run's evaluation, as the Evaluate tab shows it."""

    summary: str
    per_class: pd.DataFrame
    mistakes: list[tuple[str, str]]  # (image path, "true → predicted (score)")
    confusion: str | None = None  # PNG in the run folder
    reliability: str | None = None  # PNG in the run folder, when the fit logged one


def _val_images(run: RunFolder) -> tuple[list[str], list[str]]:
    """The run's validation images and their true labels, re-derived from its recipe (same split, same seed)."""
    from transfer.job import dataset_index
    from transfer.recipe import load_recipe

    index = dataset_index(load_recipe(run.recipe_path))
    return [p for p, _ in index.val], [index.classes[y] for _, y in index.val]


def _artifact(
    store: TrackingStore, run_id: str, hint: str, suffix: str, dest: Path, under: str | None = None
) -> str | None:
    """The first artifact of the run in folder ``under`` (top level: None) whose name holds ``hint`` and ends with
    ``suffix``, downloaded into ``dest``; None when there is none."""
    names = [a.path for a in store.client.list_artifacts(run_id, under)]
    found = next((n for n in names if n.endswith(suffix) and hint in n), None)
    if found is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    return store.client.download_artifacts(run_id, found, str(dest))


def evaluate_run(run: RunFolder, store: TrackingStore) -> Evaluation:
    """The evaluation of a finished run (computed on first call, then read from the run folder).

    Raises:
        UserError: the run has no model (it did not finish), or MLflow cannot give it back.
    """
    folder = run.path / EVAL_DIR
    if (folder / "evaluation.json").is_file():
        saved = json.loads((folder / "evaluation.json").read_text())
        return Evaluation(
            saved["summary"],
            pd.read_json(folder / "per_class.json"),
            [tuple(m) for m in saved["mistakes"]],  # type: ignore[misc]
            saved.get("confusion"),
            saved.get("reliability"),
        )
    result = run.result()
    if not result.get("model_uri"):
        raise UserError("this run has no model: it did not finish; train again or open a finished run")
    evaluation = _compute(run, result, store, folder)
    folder.mkdir(parents=True, exist_ok=True)
    evaluation.per_class.to_json(folder / "per_class.json")
    saved = {
        "summary": evaluation.summary,
        "mistakes": evaluation.mistakes,
        "confusion": evaluation.confusion,
        "reliability": evaluation.reliability,
    }
    (folder / "evaluation.json").write_text(json.dumps(saved))
    return evaluation


def _compute(run: RunFolder, result: dict[str, Any], store: TrackingStore, folder: Path) -> Evaluation:
    from transfer.deploy.predict import predict_paths

    run_id = result["run_id"]
    mlrun = store.client.get_run(run_id)
    m, p = mlrun.data.metrics, mlrun.data.params
    summary = (
        f"**val_acc {m.get('val_acc', float('nan')):.3f}**, val_f1 {m.get('val_f1', float('nan')):.3f} — "
        f"backbone `{p.get('backbone')}`, strategy `{p.get('strategy')}`"
    )
    if p.get("strategy_reason"):
        summary += f"\n\nWhy this strategy: {p['strategy_reason']}"
    paths, truth = _val_images(run)
    preds = predict_paths(result["model_uri"], paths, store)
    preds["true"] = truth
    preds = preds[preds["error"].isna()]
    per_class = (
        preds.assign(correct=preds["label"] == preds["true"])
        .groupby("true")["correct"]
        .agg(["mean", "count"])
        .reset_index()
        .rename(columns={"true": "class", "mean": "accuracy", "count": "images"})
    )
    per_class["accuracy"] = per_class["accuracy"].round(3)
    wrong = preds[preds["label"] != preds["true"]].sort_values("score", ascending=False).head(MAX_MISTAKES)
    mistakes = [(r.path, f"{r.true} → {r.label} ({r.score:.2f})") for r in wrong.itertuples()]
    summary += f"\n\n{len(preds)} validation images; the {len(mistakes)} most confident mistakes are below."
    confusion = _artifact(store, run_id, "confusion", ".png", folder)
    # The fit logs the diagram in a folder (calibration/): a top-level listing never showed it.
    diagram = Path(RELIABILITY_PNG)
    reliability = _artifact(store, run_id, diagram.name, diagram.suffix, folder, under=str(diagram.parent))
    return Evaluation(summary, per_class, mistakes, confusion, reliability)


def model_card(run: RunFolder, store: TrackingStore) -> str | None:
    """The model card the fit logged (Markdown), if it logged one."""
    result = run.result()
    if not result.get("run_id"):
        return None
    path = _artifact(store, result["run_id"], MODEL_CARD_HINT, ".md", run.path / EVAL_DIR)
    return Path(path).read_text(encoding="utf-8") if path else None


def open_image(path: str) -> Image.Image | None:
    """An image for a thumbnail, decoded as training does; None when it no longer decodes."""
    try:
        return load_file(path)
    except (ImageInputError, OSError):
        return None


# ---------------------------------------------------------------------------------------------------- deploy
def deploy(run: RunFolder, store: TrackingStore, name: str, alias: str, owner: str, if_better: bool) -> str:
    """Register the run's model as a new version of ``name`` owned by ``owner``; return what happened and how to
    use it (no server paths).

    Raises:
        UserError: no model, or ``name`` belongs to someone else.
    """
    from transfer.deploy.registry import register
    from transfer.job import dataset_index
    from transfer.recipe import load_recipe

    result = run.result()
    if not result.get("model_uri"):
        raise UserError("this run has no model to deploy: it did not finish; train again or open a finished run")
    digest = dataset_index(load_recipe(run.recipe_path)).fingerprint()
    tags = {OWNER_TAG: owner, "run_id": result["run_id"], "dataset_digest": digest}
    version, moved = register(
        store,
        result["model_uri"],
        name,
        alias=alias,
        promote="if_better" if if_better else "always",
        tags=tags,
        owner=owner,
    )
    uri = f"models:/{name}@{alias}"
    where = store.uri if store.is_remote else "<this server's MLflow tracking URI>"
    moved_text = (
        f"alias `{alias}` now points at it"
        if moved
        else f"alias `{alias}` stays on the better version it had (this one is kept as version {version})"
    )
    return (
        f"✅ Registered **{name}** version {version}; {moved_text}.\n\n"
        "Use it from Python:\n"
        "```python\n"
        "import base64, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({where!r})\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        'image = base64.b64encode(open("photo.jpg", "rb").read()).decode()\n'
        'print(model.predict(pd.DataFrame({"image": [image]})))\n'
        "```\n"
        "Serve it over HTTP:\n"
        "```\n"
        f"MLFLOW_TRACKING_URI={where} mlflow models serve -m {uri} --env-manager local -p 5001\n"
        "```"
    )


def my_models(store: TrackingStore, owner: str) -> list[str]:
    """The visitor's deployed models, as ``NAME@ALIAS`` (or ``NAME/VERSION`` for versions without an alias)."""
    found = store.client.search_registered_models(filter_string=f"tags.`{OWNER_TAG}` = '{_quote(owner)}'")
    out = []
    for model in sorted(found, key=lambda m: m.name):
        aliases = sorted(model.aliases or {})
        if aliases:
            out += [f"{model.name}@{a}" for a in aliases]
        elif model.latest_versions:
            out.append(f"{model.name}/{max(int(v.version) for v in model.latest_versions)}")
    return out


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


UNKNOWN_NOTE = "not sure: this looks unlike the training images"  # the try-it's words when the model says unknown


def classify(store: TrackingStore, owner: str, image_path: str, choice: str) -> tuple[dict[str, float], str]:
    """Scores of the visitor's deployed model ``choice`` (``NAME@ALIAS``) for one image, loaded from the registry.

    Raises:
        UserError: ``choice`` is not one of the visitor's models, or the image cannot be classified.
    """
    from transfer.deploy.classifier import PROB_PREFIX
    from transfer.deploy.predict import predict_paths

    if choice not in my_models(store, owner):
        raise UserError(f"no deployed model {choice!r} of yours; deploy one on the Deploy tab, then pick it here")
    uri = f"models:/{choice}"
    row: dict[str, Any] = predict_paths(uri, [image_path], store).iloc[0].to_dict()
    if row.get("error"):
        raise UserError(f"this image cannot be classified: {row['error']}")
    scores = {k.removeprefix(PROB_PREFIX): float(v) for k, v in row.items() if k.startswith(PROB_PREFIX)}
    note = f"from `{uri}`"
    unknown = row.get("unknown")
    if unknown is not None and pd.notna(unknown) and bool(unknown):
        note = f"⚠️ {UNKNOWN_NOTE} ({note})"
    return scores, note
