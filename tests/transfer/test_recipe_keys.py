"""Each modern-recipe key changes training as it claims: the learning-rate policy, the LR finder, mixup and cutmix,
EMA of the weights, test-time augmentation, progressive resizing, policy augmentations, the kept checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.helpers import write_recipe
from transfer.augment import build_transforms
from transfer.module import ClassifierModule, predict_logits
from transfer.optim import effective_lr, scales_linearly
from transfer.recipe import OptimConfig, StrategyConfig
from transfer.strategies import create
from transfer.tracking import TrackingStore
from transfer.train import fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CFG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}


@pytest.mark.parametrize(("name", "scaled"), [("adamw", False), ("sgd", True), ("lars", True)])
def test_the_scaling_rule_applies_to_sgd_and_lars_not_adamw(name: str, scaled: bool) -> None:
    assert scales_linearly(name, "auto") is scaled
    assert effective_lr(1e-3, 64, 1, scales_linearly(name, "auto")) == pytest.approx(1e-3 * (64 / 256 if scaled else 1))
    assert scales_linearly(name, True) and not scales_linearly(name, False)


def _module(**optim: float) -> ClassifierModule:
    model = zoo.create_model("resnet18", num_classes=4)
    strategy = create("full", StrategyConfig())
    strategy.setup(model)
    return ClassifierModule(model, strategy, 4, optim=OptimConfig(**optim), batch_size=8)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 4


def test_mixup_mixes_images_and_makes_soft_targets() -> None:
    x, y = _batch()
    mixed, targets = _module(mixup=0.8).mix(x.clone(), y)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1.0).all()  # soft: no row is one-hot
    assert not torch.equal(mixed, x)


def test_cutmix_pastes_a_patch_of_another_image() -> None:
    x, y = _batch()
    mixed, targets = _module(cutmix=1.0).mix(x.clone(), y)
    flipped = x.flip(0)  # timm pairs each image with the batch reversed
    pasted = (mixed == flipped) & (mixed != x)
    assert pasted.any() and targets.shape == (8, 4)


def test_without_mixing_the_batch_is_untouched() -> None:
    x, y = _batch()
    mixed, targets = _module().mix(x, y)
    assert mixed is x and targets is y


def test_tta_averages_the_logits_of_each_image_and_its_mirror() -> None:
    model = zoo.create_model("resnet18", num_classes=4).eval()
    x, y = _batch(4)
    loader = [(x, y)]
    logits, _ = predict_logits(model, loader, "hflip")
    with torch.no_grad():
        want = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(logits, want)
    assert not torch.allclose(logits, predict_logits(model, loader)[0])


@pytest.mark.parametrize("preset", ["trivial", "randaugment"])
def test_policy_presets_run_torchvision_policies_on_the_decoded_image(preset: str) -> None:
    from torchvision.transforms import RandAugment, TrivialAugmentWide

    train, _ = build_transforms(CFG, preset)
    assert isinstance(train.policy, TrivialAugmentWide if preset == "trivial" else RandAugment)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    outs = [train(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


class _Seen(L.Callback):
    """Records each epoch's training image side and whether a batch's targets were soft."""

    def __init__(self) -> None:
        self.sides: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sides.setdefault(trainer.current_epoch, int(batch[0].shape[-1]))


@pytest.fixture(scope="module")
def modern(tmp_path_factory: pytest.TempPathFactory, data_cache) -> dict:
    """One fit with EMA, progressive resizing and flip TTA (full fine-tune, digits at 48 px, 4 epochs)."""
    work = tmp_path_factory.mktemp("modern")
    recipe = write_recipe(
        work,
        data={
            "max_per_class": 8,
            "image_size": 48,
            "progressive": True,
            "tta": "hflip",
            "augment": "none",
            "cache_dir": str(data_cache),
        },
        strategy={"name": "full"},
        optim={"ema": 0.9},
        trainer={"max_epochs": 4},
        tracking={"uri": f"sqlite:///{work / 'mlflow.db'}"},
    )
    seen = _Seen()
    result = fit(recipe, callbacks=[seen])
    return {"result": result, "seen": seen, "store": TrackingStore(f"sqlite:///{work / 'mlflow.db'}")}


def test_progressive_resizing_grows_the_training_images(modern: dict) -> None:
    assert modern["seen"].sides == {0: 24, 1: 32, 2: 48, 3: 48}


def test_ema_weights_are_the_ones_logged(modern: dict) -> None:
    from pathlib import Path

    from transfer.deploy.predict import classifier_of, load_pyfunc

    ckpt = torch.load(Path(modern["result"].run_dir) / "last.ckpt", map_location="cpu", weights_only=False)
    average = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    raw = {k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items() if k.startswith("model.")}
    logged = classifier_of(load_pyfunc(modern["result"].model_uri, modern["store"])).model.state_dict()
    key = "conv_head.weight" if "conv_head.weight" in logged else next(k for k in logged if k.endswith("weight"))
    assert torch.allclose(logged[key], average[key]) and not torch.allclose(logged[key], raw[key])


def test_the_logged_model_averages_an_image_with_its_mirror(modern: dict) -> None:
    import io

    from transfer.deploy.classifier import PROB_PREFIX
    from transfer.deploy.predict import classifier_of, load_pyfunc
    from transfer.job import dataset_index
    from transfer.recipe import load_recipe

    path = dataset_index(load_recipe(modern["result"].run_dir + "/recipe.yaml")).val[0][0]
    image = Image.open(path).convert("RGB")
    mirror = io.BytesIO()
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror, format="PNG")
    out = classifier_of(load_pyfunc(modern["result"].model_uri, modern["store"])).predict(
        [Path(path).read_bytes(), mirror.getvalue()]
    )
    probs = out[[c for c in out.columns if c.startswith(PROB_PREFIX)]].to_numpy(dtype=float)
    assert np.allclose(probs[0], probs[1], atol=1e-5)  # one view each would differ: digits are not symmetric


def test_checkpoint_best_keeps_the_best_epoch_and_says_so(workdir) -> None:
    recipe = write_recipe(
        workdir, data={"max_per_class": 6}, strategy={"name": "linear_probe"}, trainer={"max_epochs": 3}
    )
    kept = fit(recipe, ["optim.checkpoint=best"])
    metrics = TrackingStore(f"sqlite:///{workdir}/mlflow.db").client.get_run(kept.run_id).data.metrics
    assert "best_epoch" in metrics and metrics["final_val_acc"] == pytest.approx(metrics["best_val_acc"])


def test_lr_auto_runs_the_finder_and_trains_at_its_suggestion(workdir) -> None:
    recipe = write_recipe(workdir, data={"max_per_class": 10}, strategy={"name": "linear_probe"}, optim={"lr": "auto"})
    result = fit(recipe)
    client = TrackingStore(f"sqlite:///{workdir}/mlflow.db").client
    params = client.get_run(result.run_id).data.params
    assert float(params["lr_head"]) == pytest.approx(float(params["lr_found"]), rel=1e-3)
    assert "lr_find.png" in {a.path for a in client.list_artifacts(result.run_id)}


def test_transfer_lr_find_says_what_to_set(workdir, capsys) -> None:
    from transfer.cli import main

    recipe = write_recipe(workdir, data={"max_per_class": 10}, strategy={"name": "linear_probe"})
    assert main(["lr-find", str(recipe), "--plot", str(workdir / "lr.png")]) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate" in out and "optim.lr" in out and (workdir / "lr.png").is_file()
