"""Each strategy trains exactly the parameters it says it does, and frozen BatchNorm statistics never move."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import zoo
from tests.helpers import quiet_trainer
from transfer import features
from transfer.features import FeatureCache, extract_features, weights_digest
from transfer.module import ClassifierModule, StageProbeModule
from transfer.recipe import OptimConfig, StrategyConfig
from transfer.strategies import create

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")

NUM_CLASSES = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return zoo.create_model("resnet18", num_classes=NUM_CLASSES)


def _loader(n: int = 16, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _fit(module: L.LightningModule, epochs: int = 1, callbacks: list | None = None, loader: DataLoader | None = None):
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0, callbacks=callbacks or [])
    trainer.fit(module, loader or _loader())
    return trainer


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def _unit_keys(model: nn.Module) -> dict[str, set[str]]:
    """State-dict keys per unit: stage{i}, head (classifier)."""
    ids = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
    out = {}
    for i, stage in enumerate(model.stages()):
        out[f"stage{i}"] = {ids[id(t)] for t in stage.state_dict(keep_vars=True).values()}
    out["classifier"] = {ids[id(t)] for t in model.get_classifier().state_dict(keep_vars=True).values()}
    return out


def _expect(model: nn.Module, units: set[str]) -> set[str]:
    keys = _unit_keys(model)
    wanted = set().union(*(keys[u] for u in units))
    return {k for k in wanted if not k.endswith("num_batches_tracked")}


OPTIM = OptimConfig(lr=0.5, warmup_epochs=0, weight_decay=0.0)


@pytest.mark.parametrize(
    ("strategy", "trainable_units"),
    [
        (create("linear_probe", StrategyConfig(cache_features=False)), {"classifier"}),
        (create("partial", StrategyConfig(stages=2)), {"stage3", "stage4", "classifier"}),
        (
            create("full", StrategyConfig(layer_decay=0.5)),
            {"stage0", "stage1", "stage2", "stage3", "stage4", "classifier"},
        ),
    ],
    ids=["linear_probe", "partial", "full"],
)
def test_exactly_the_intended_parameters_train(strategy, trainable_units):
    model = _model()
    strategy.setup(model)
    module = ClassifierModule(model, strategy, NUM_CLASSES, optim=OPTIM, batch_size=8)
    expected = _expect(model, trainable_units)
    grad_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grad_names == {k for k in expected if k in dict(model.named_parameters())}
    before = _snapshot(model)
    _fit(module)
    changed = {k for k in _changed(before, model) if not k.endswith("num_batches_tracked")}
    # Every parameter and BatchNorm statistic of a trainable unit moves; nothing of a frozen unit does.
    assert changed == expected
    frozen_bn = [
        m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and f"{n}.running_mean" not in expected
    ]
    for bn in frozen_bn:
        assert not bn.training, "a frozen BatchNorm went back to train mode"


def test_full_uses_layer_wise_lr_decay():
    model = _model()
    strategy = create("full", StrategyConfig(layer_decay=0.5))
    strategy.setup(model)
    lrs = {g["name"].split(".")[0]: g["lr"] for g in strategy.param_groups(1.0, 0.01)}
    assert lrs["classifier"] == 1.0
    # Decay by depth: each stage at 0.5 ** (weight layers above its middle), not by its index among the stages.
    depth = strategy.units.depth_above()
    assert [lrs[f"stage{i}"] for i in range(5)] == pytest.approx([0.5**d for d in depth])
    assert depth[-1] == 2.5 and depth[0] > 15  # resnet18: 5 weight layers in layer4 (a downsample), 21 in all
    # no weight decay on biases and BatchNorm parameters
    for g in strategy.param_groups(1.0, 0.01):
        assert (g["weight_decay"] == 0.0) == all(p.ndim <= 1 for p in g["params"])


def test_partial_refuses_more_stages_than_the_backbone_has():
    with pytest.raises(ValueError, match="more than the backbone's 5 stages"):
        create("partial", StrategyConfig(stages=6)).setup(_model())


class _Recorder(L.Callback):
    """Which state-dict entries change during each epoch, and the BatchNorm modes seen in training steps."""

    def __init__(self) -> None:
        self.per_epoch: list[set[str]] = []
        self.bn_training: list[dict[str, bool]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._before = _snapshot(pl_module.model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.bn_training.append(
                {n: m.training for n, m in pl_module.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.per_epoch.append(
            {k for k in _changed(self._before, pl_module.model) if not k.endswith("num_batches_tracked")}
        )


def test_gradual_unfreezes_one_stage_per_milestone_with_fixed_param_groups():
    model = _model()
    strategy = create("gradual", StrategyConfig(milestones=[1, 2]))
    strategy.setup(model)
    module = ClassifierModule(model, strategy, NUM_CLASSES, optim=OPTIM, batch_size=8)
    rec = _Recorder()
    trainer = _fit(module, epochs=3, callbacks=[rec])
    assert rec.per_epoch[0] == _expect(model, {"classifier"})
    assert rec.per_epoch[1] == _expect(model, {"classifier", "stage4"})
    assert rec.per_epoch[2] == _expect(model, {"classifier", "stage4", "stage3"})
    # Param groups for every stage that will ever train exist from the first step.
    names = {g["name"].split(".")[0] for g in trainer.optimizers[0].param_groups}
    assert names == {"classifier", "stage3", "stage4"}
    # BatchNorm of a frozen stage is in eval mode during training steps, also after validation's model.train().
    stage2 = {n for n in rec.bn_training[0] if n.startswith("layer2")}
    assert stage2 and not any(rec.bn_training[e][n] for e in range(3) for n in stage2)
    assert all(rec.bn_training[2][n] for n in rec.bn_training[2] if n.startswith("layer3"))
    assert not any(rec.bn_training[0][n] for n in rec.bn_training[0] if n.startswith("layer4"))


class _LayoutAtSetup(L.pytorch.strategies.SingleDeviceStrategy):
    """Records whether the convolutions are channels-last when the strategy sets the model up (where DDP wraps it)."""

    def setup(self, trainer: L.Trainer) -> None:
        convs = [m.weight for m in self.lightning_module.model.modules() if isinstance(m, nn.Conv2d)]
        self.channels_last = all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        super().setup(trainer)


def test_a_channels_last_model_is_converted_before_the_strategy_wraps_it():
    model = _model()
    strategy = create("full", StrategyConfig())
    strategy.setup(model)
    module = ClassifierModule(model, strategy, NUM_CLASSES, optim=OPTIM, batch_size=8, channels_last=True)
    recorder = _LayoutAtSetup(device="cpu")
    quiet_trainer(max_epochs=1, limit_val_batches=0, strategy=recorder).fit(module, _loader())
    assert recorder.channels_last


def test_frozen_units_return_to_eval_after_model_train():
    model = _model()
    strategy = create("partial", StrategyConfig(stages=1))
    strategy.setup(model)
    module = ClassifierModule(model, strategy, NUM_CLASSES, optim=OPTIM, batch_size=8)
    module.eval()
    module.train()  # what Lightning does after every validation
    stages = model.stages()

    def bn_modes(stage: nn.Module) -> set[bool]:  # stages() may wrap top-level modules in a fresh container
        return {m.training for m in stage.modules() if isinstance(m, nn.BatchNorm2d)}

    assert bn_modes(stages[0]) == bn_modes(stages[3]) == {False}
    assert bn_modes(stages[4]) == {True}


def test_stage_probe_trains_probes_only():
    model = _model()
    strategy = create("stage_probe", StrategyConfig())
    strategy.setup(model)
    assert not any(p.requires_grad for p in model.parameters())
    feats = extract_features(model, _loader(), per_stage=True)
    dims = [feats[f"stage{i}"].shape[1] for i in range(5)]
    assert dims == [f.num_chs for f in model.feature_info]
    module = StageProbeModule(dims, NUM_CLASSES, optim=OPTIM, batch_size=8)
    before = copy.deepcopy(module.probes.state_dict())
    loader = DataLoader(TensorDataset(*[feats[f"stage{i}"] for i in range(5)], feats["labels"]), batch_size=8)
    _fit(module, loader=loader)
    assert all(not torch.equal(before[k], v) for k, v in module.probes.state_dict().items())
    trainable, total = strategy.count_params(model)
    assert trainable == 0 and total == sum(p.numel() for p in model.parameters())


def test_feature_cache_reuses_and_invalidates(tmp_path):
    model = _model()
    cache = FeatureCache(tmp_path)
    loaders = {"train": _loader(8), "val": _loader(8)}
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    a = cache.get_or_compute(model, loaders, backbone="resnet18", data_config=cfg, files="f1", per_stage=False)
    b = cache.get_or_compute(model, loaders, backbone="resnet18", data_config=cfg, files="f1", per_stage=False)
    assert (cache.misses, cache.hits) == (1, 1)
    assert torch.equal(a["train"]["pre_logits"], b["train"]["pre_logits"])
    # Changing the classifier does not change the key; changing trunk weights, files or preprocessing does.
    digest = weights_digest(model, exclude=model.get_classifier())
    model.get_classifier().weight.data.add_(1.0)
    assert weights_digest(model, exclude=model.get_classifier()) == digest
    cache.get_or_compute(model, loaders, backbone="resnet18", data_config=cfg, files="f1", per_stage=False)
    assert cache.hits == 2
    model.stages()[0][0].weight.data.add_(0.1)
    cache.get_or_compute(model, loaders, backbone="resnet18", data_config=cfg, files="f1", per_stage=False)
    cache.get_or_compute(model, loaders, backbone="resnet18", data_config=cfg, files="f2", per_stage=False)
    cache.get_or_compute(
        model, loaders, backbone="resnet18", data_config={**cfg, "mean": (0.4,) * 3}, files="f2", per_stage=False
    )
    assert cache.misses == 4


def test_feature_cache_computes_once_when_ranks_ask_together(tmp_path, monkeypatch):
    # DDP ranks (or two runs) asking for the same features at once: one computes, the other waits and reads.
    import threading
    import time

    real = features.extract_features
    calls = []

    def slow_extract(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other caller to arrive while this one computes
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", slow_extract)
    model = _model()
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    caches = [FeatureCache(tmp_path), FeatureCache(tmp_path)]
    out: list[dict] = [{}, {}]

    def ask(i: int) -> None:
        loaders = {"train": _loader(8), "val": _loader(8)}
        out[i] = caches[i].get_or_compute(
            model, loaders, backbone="resnet18", data_config=cfg, files="f", per_stage=False
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(calls)) == 1  # one caller extracted (train and val), the other did not
    assert sorted((c.misses, c.hits) for c in caches) == [(0, 1), (1, 0)]
    assert torch.equal(out[0]["train"]["pre_logits"], out[1]["train"]["pre_logits"])
