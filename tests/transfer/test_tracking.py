"""The tracking store is the only code that touches MLflow's process state, and it puts back what it found."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch

from tests.helpers import digits_folder, quiet_trainer, write_recipe
from transfer.deploy.predict import predict_paths
from transfer.deploy.registry import register
from transfer.recipe import load_recipe
from transfer.tracking import DEFAULT_URI, TrackingStore
from transfer.train import fit


def _process_state() -> tuple:
    """Everything MLflow keeps process-wide that a caller could notice, the whole environment and cuDNN's mode."""
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return (
        tracking_utils._tracking_uri,
        registry_utils._registry_uri,
        fluent._active_experiment_id,
        mlflow.get_tracking_uri(),
        mlflow.get_registry_uri(),
        mlflow.active_run(),
        dict(os.environ),
        torch.backends.cudnn.benchmark,
    )


def test_activated_restores_exactly_what_it_found(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")  # a user's own setting survives
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = _process_state()
    store = TrackingStore(f"sqlite:///{tmp_path / 'a.db'}")
    with store.activated():
        assert mlflow.get_tracking_uri() == store.uri and mlflow.get_registry_uri() == store.uri
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
        with TrackingStore(f"sqlite:///{tmp_path / 'b.db'}").activated(retries=False):
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert mlflow.get_tracking_uri() == store.uri
    assert _process_state() == before


def test_restored_puts_back_cudnn_benchmark_as_lightning_sets_it(monkeypatch):
    from transfer.process_state import restored

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with restored():
        quiet_trainer(benchmark=True)  # what a fit does when its recipe sets trainer.benchmark: true
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize(
    ("explicit", "env", "expected"),
    [
        (None, None, "sqlite:///{cwd}/mlflow.db"),
        (None, "sqlite:///team.db", "sqlite:///{cwd}/team.db"),
        ("sqlite:///own.db", "sqlite:///team.db", "sqlite:///{cwd}/own.db"),
        ("http://127.0.0.1:5000", None, "http://127.0.0.1:5000"),
    ],
)
def test_one_rule_resolves_the_uri(workdir, monkeypatch, explicit, env, expected):
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    tracking = {"uri": explicit} if explicit else {}
    recipe = load_recipe(write_recipe(workdir, tracking=tracking))
    assert TrackingStore.for_recipe(recipe).uri == expected.format(cwd=workdir)
    assert DEFAULT_URI == "sqlite:///mlflow.db"


def test_fit_predict_register_deploy_and_try_leave_mlflow_and_the_environment_as_they_were(workdir, tmp_path):
    import yaml

    from app.evaluate import classify, deploy
    from app.runs import RunFolder

    before = _process_state()
    recipe = write_recipe(workdir, data={"max_per_class": 6}, strategy={"name": "linear_probe"})
    run = RunFolder.create(tmp_path / "page-runs", yaml.safe_load(recipe.read_text()), {})
    result = fit(str(run.recipe_path))
    assert _process_state() == before
    store = TrackingStore(f"sqlite:///{workdir}/mlflow.db")
    images = sorted(Path(p) for p in digits_folder(tmp_path / "digits", (0, 1), 2).rglob("*.png"))
    assert len(predict_paths(result.model_uri, images, store)) == len(images)
    assert _process_state() == before
    register(store, result.model_uri, "by-hand")
    assert _process_state() == before
    deploy(run, store, "from-the-page", "champion", owner="visitor", if_better=False)
    scores, _ = classify(store, "visitor", str(images[0]), "from-the-page@champion")
    assert len(scores) == 10
    assert _process_state() == before
