"""The Backbone contract's stage machinery: stages held once, views that keep timm's keys and follow the model."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch import nn

import zoo
from zoo._backbone import StageGroup


@pytest.fixture
def resnet18() -> zoo.Backbone:
    with torch.device("meta"):
        return zoo.create_model("resnet18")


def test_views_keep_timm_state_dict_keys(resnet18: zoo.Backbone) -> None:
    """The stem view is no child of the model: state dict and named_parameters() are timm's, in timm's order."""
    import timm

    with torch.device("meta"):
        ref = timm.create_model("resnet18")
    assert isinstance(resnet18.stages()[0], StageGroup)
    assert list(resnet18.state_dict()) == list(ref.state_dict())
    names = [n for n, _ in resnet18.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()] and len(names) == len(set(names))
    assert not any(isinstance(m, StageGroup) for m in resnet18.modules())


def test_stage_group_is_the_models_modules(resnet18: zoo.Backbone) -> None:
    stem = resnet18.stages()[0]
    assert list(stem) == [resnet18.conv1, resnet18.bn1, resnet18.act1, resnet18.maxpool]
    assert stem[0] is resnet18.conv1 and stem[-1] is resnet18.maxpool and len(stem) == 4
    own = [*resnet18.conv1.parameters(), *resnet18.bn1.parameters()]
    assert {id(p) for p in stem.parameters()} == {id(p) for p in own}
    stem.requires_grad_(False)
    assert not resnet18.conv1.weight.requires_grad and resnet18.layer1[0].conv1.weight.requires_grad
    with pytest.raises(IndexError):
        stem[4]


def test_replaced_module_is_what_the_stage_runs(resnet18: zoo.Backbone) -> None:
    """A module replaced after construction (the small-image trick ``maxpool = Identity``) is the one that runs."""
    x = torch.zeros(1, 3, 64, 64, device="meta")
    assert resnet18.eval().forward_stages(x)[0].shape[-1] == 16
    resnet18.maxpool = nn.Identity()
    resnet18.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False, device="meta")
    assert [o.shape[-1] for o in resnet18.forward_stages(x)] == [64, 64, 32, 16, 8]
    stem = resnet18.stages()[0]
    assert stem[0] is resnet18.conv1 and stem[3] is resnet18.maxpool
    assert resnet18.conv1.weight in set(stem.parameters())  # parameters() follows the replacement too


def test_train_eval_and_deepcopy_reach_the_views(resnet18: zoo.Backbone) -> None:
    resnet18.eval()
    assert not resnet18.stages()[0].training and not resnet18.bn1.training
    resnet18.train()
    assert resnet18.stages()[0].training
    clone = copy.deepcopy(resnet18)
    stem = clone.stages()[0]
    assert stem is not resnet18.stages()[0] and stem[0] is clone.conv1 and stem[1] is clone.bn1


@pytest.mark.parametrize("name", zoo.list_models())
def test_a_dropped_model_is_freed_at_once(name: str) -> None:
    """No reference cycle: a model goes when its last name does, without waiting for the cyclic collector (a loop
    over candidate backbones would otherwise hold every one of them)."""
    with torch.device("meta"):
        zoo.create_model(name)  # a first build may leave frames in torch's one-time caches (meta decompositions)
    gc.disable()
    try:
        with torch.device("meta"):
            model = zoo.create_model(name)
        model.stages()
        gone = weakref.ref(model)
        del model
        assert gone() is None
    finally:
        gc.enable()


def test_pickle_round_trip_keeps_the_views_on_the_new_model(resnet18: zoo.Backbone) -> None:
    with torch.device("cpu"):
        model = zoo.create_model("resnet18")
    clone = pickle.loads(pickle.dumps(model))
    stem = clone.stages()[0]
    assert stem[0] is clone.conv1 and stem[0] is not model.conv1
    assert {id(p) for p in stem.parameters()} == {id(p) for p in [*clone.conv1.parameters(), *clone.bn1.parameters()]}


def test_a_stage_kept_after_its_model_is_dropped_still_runs() -> None:
    model = zoo.create_model("resnet18").eval()
    stem = model.stages()[0]
    conv1 = model.conv1
    del model
    assert stem[0] is conv1 and stem(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8, 8)


def test_cell_stages_map_the_pair_and_fire_hooks() -> None:
    """NAS cell stages take and return (x, x_prev), so a hook on one sees the stage run."""
    with torch.device("meta"):
        model = zoo.create_model("pnasnet5large").eval()
        stage = model.stages()[-1]
        seen = []
        stage.register_forward_hook(lambda _m, args, out: seen.append((len(args), len(out))))
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    assert seen == [(2, 2)]
    assert model.act in list(stage.children())  # the final ReLU belongs to the last stage (no parameters)
