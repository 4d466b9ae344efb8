"""A tracking server that goes away: before training (one clear error, nothing trained) and in the middle of a run
(training goes on, the checkpoints stay, ``--resume`` logs and registers once the server is back)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import write_recipe
from tests.servers import MlflowServer
from transfer.errors import UserError
from transfer.train import fit, run_dir_for


class _StopServerAfterEpoch(L.Callback):
    """Stops the tracking server at the end of epoch 0, after that epoch's metrics were logged."""

    def __init__(self, server: MlflowServer) -> None:
        self.server = server

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.server.stop()


@pytest.fixture
def server(tmp_path: Path) -> MlflowServer:
    srv = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    with srv:
        yield srv


def test_server_away_mid_run_keeps_checkpoints_and_resume_logs_the_run(workdir, server, monkeypatch):
    # Calls to a server known to be away must not sit in MLflow's minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    recipe = write_recipe(
        workdir,
        strategy={"name": "linear_probe"},
        trainer={"max_epochs": 3},
        tracking={"uri": server.url, "register_as": "outage"},
    )
    with pytest.raises(UserError) as err:
        fit(recipe, callbacks=[_StopServerAfterEpoch(server)])
    msg = str(err.value)
    assert "went away" in msg and "--resume" in msg and len(msg.splitlines()) == 1

    from transfer.recipe import load_recipe

    run_dir = run_dir_for(load_recipe(recipe))
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "trained"
    # Training went on to the end while the server was away: nothing trained is lost.
    assert torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 2
    assert (run_dir / "best.ckpt").is_file()
    pending = [json.loads(line) for line in (run_dir / "pending_metrics.jsonl").read_text().splitlines()]
    assert {p["step"] for p in pending} == {1, 2} and {"train_loss", "val_acc"} <= {p["key"] for p in pending}

    server.start()
    result = fit(recipe, resume=True)
    assert result.run_id == state["run_id"] and result.version == 1
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # One history per metric with every epoch once: epoch 0 sent live, 1 and 2 from the pending file.
    for key in ("train_loss", "val_acc"):
        assert sorted(m.step for m in client.get_metric_history(result.run_id, key)) == [0, 1, 2]
    assert not (run_dir / "pending_metrics.jsonl").exists()
    assert [v.run_id for v in client.search_model_versions("name='outage'")] == [result.run_id]
    assert client.get_model_version_by_alias("outage", "champion").version == "1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
