"""``transfer fit`` under DDP on CPU (gloo, two processes): one MLflow run, one registered version, the learning
rate scaled to the global batch, and every rank ending with the same weights.

The fit runs as a subprocess: Lightning's DDP launcher starts the other rank by running the same command again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import write_recipe
from tests.servers import free_port
from transfer.optim import BASE_BATCH

LR, BATCH, WORLD = 0.02, 8, 2


def _fit_in_subprocesses(recipe: Path, workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "transfer", "fit", str(recipe)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.timeout(900)
def test_ddp_fit_on_cpu_one_run_one_version_lr_scaled_to_the_global_batch(workdir):
    recipe = write_recipe(
        workdir,
        data={"max_per_class": 40, "batch_size": BATCH},
        # gradual: a stage unfreezes at epoch 1, after DDP has wrapped the model (the hard case for DDP)
        strategy={"name": "gradual", "milestones": [1]},
        optim={"name": "sgd", "lr": LR, "warmup_epochs": 1, "scale_lr": True},
        trainer={"max_epochs": 2, "accelerator": "cpu", "devices": WORLD, "strategy": "ddp"},
        tracking={"register_as": "digits_ddp"},
    )
    proc = _fit_in_subprocesses(recipe, workdir)
    # Only rank zero reports (the other rank's output would repeat the lines).
    keys = [line.split(":")[0] for line in proc.stdout.splitlines()]
    assert keys[:3] == ["run_id", "model_uri", "registered"] and len(keys) == len(set(keys))
    assert "ranks diverged" not in proc.stderr

    client = MlflowClient(
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", registry_uri=f"sqlite:///{workdir / 'mlflow.db'}"
    )
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    versions = client.search_model_versions("name='digits_ddp'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    params = run.data.params
    assert params["world_size"] == str(WORLD) and params["global_batch_size"] == str(BATCH * WORLD)
    assert params["sync_batchnorm"] == "True"  # a per-device batch of 8 gets synchronised BatchNorm by default
    peak = LR * BATCH * WORLD / BASE_BATCH
    assert float(params["lr_effective"]) == pytest.approx(peak)
    # The optimizer really ran at that rate: at the end of the one warmup epoch the schedule is at its peak.
    lr_hist = sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)
    assert lr_hist[0].step == 0 and lr_hist[0].value == pytest.approx(peak, rel=1e-6)
    assert lr_hist[-1].value < peak  # then the cosine decays
    # 400 images (40 per class), 80 for validation; each rank trained on half of the 320 others.
    assert int(params["train_size"]) == 320
    assert float(run.data.metrics["best_val_acc"]) > 0.5  # 10 classes: chance is 0.1


@pytest.mark.timeout(900)
def test_ddp_stage_probe_on_cached_features(workdir):
    # Probes train on shards of cached features: one feature pass (the other rank reads the cache), the
    # validation loss and accuracies reduced over both ranks, one run.
    recipe = write_recipe(
        workdir,
        data={"max_per_class": 30, "batch_size": BATCH},
        strategy={"name": "stage_probe"},
        trainer={"max_epochs": 2, "accelerator": "cpu", "devices": WORLD, "strategy": "ddp"},
    )
    proc = _fit_in_subprocesses(recipe, workdir)
    assert proc.stderr.count("computing frozen features") == 1 and "feature cache hit" in proc.stderr
    client = MlflowClient(
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", registry_uri=f"sqlite:///{workdir / 'mlflow.db'}"
    )
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == str(WORLD)
    stage_metrics = [k for k in run.data.metrics if k.startswith("val_acc_stage")]
    assert len(stage_metrics) >= 4 and "best_stage" in run.data.params
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1]
    assert float(run.data.metrics["best_val_acc"]) > 0.5
