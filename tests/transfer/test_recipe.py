"""The recipe schema: defaults, overrides, and errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer.errors import UserError
from transfer.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))

MINIMAL = "data:\n  source: builtin:digits\nmodel:\n  backbone: mobilenetv2_100\n"


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_recipe_gets_the_documented_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, MINIMAL))
    assert r.seed == 42
    assert (r.data.val_split, r.data.augment, r.data.batch_size, r.data.num_workers) == (0.2, "none", 32, 2)
    assert r.data.image_size is None and r.data.val_source is None
    assert r.model.pretrained is True
    assert (r.strategy.name, r.strategy.stages, r.strategy.milestones) == ("auto", 2, [2, 4])
    # The defaults measured best in bench/results/defaults_study.md (issue 12).
    assert r.strategy.cache_features is True and r.strategy.layer_decay == 1.0
    assert (r.optim.name, r.optim.lr, r.optim.weight_decay, r.optim.warmup_epochs) == ("adamw", 1e-3, 0.05, 0.25)
    assert r.optim.scale_lr == "auto" and r.optim.backbone_lr_mult == 1.0 and r.optim.checkpoint == "last"
    assert r.trainer == {}  # each strategy's own number of epochs
    assert (r.tracking.uri, r.tracking.experiment, r.tracking.alias) == ("sqlite:///mlflow.db", "transfer", "champion")
    assert r.tracking.register_as is None and r.tracking.promote == "always"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    assert r.data.source and r.model.backbone
    if str(r.model.pretrained).startswith("pkg:"):
        assert Path(str(r.resolve_pretrained())).is_file()


def test_quickstart_weights_resolve_offline_from_the_package():
    r = load_recipe(Path(__file__).parents[2] / "recipes" / "quickstart.yaml")
    resolved = Path(str(r.resolve_pretrained()))
    assert resolved.name == "mobilenet_v2-b0353104.pth" and resolved.stat().st_size > 10_000_000


def test_typo_names_key_line_and_suggestion(tmp_path):
    p = _write(tmp_path, "seed: 1\ndata:\n  source: builtin:digits\n  batchsize: 16\nmodel:\n  backbone: resnet18\n")
    with pytest.raises(UserError) as e:
        load_recipe(p)
    assert str(e.value) == "recipe.yaml:4: data.batchsize: unknown key; did you mean batch_size?"


def test_wrong_type_names_key_and_line(tmp_path):
    p = _write(tmp_path, MINIMAL + "optim:\n  lr: fast\n")
    with pytest.raises(UserError, match=r"^recipe.yaml:6: optim.lr: expected a number or auto, got 'fast'$"):
        load_recipe(p)


def test_unknown_trainer_argument_is_checked_against_lightning(tmp_path):
    p = _write(tmp_path, MINIMAL + "trainer:\n  max_epoch: 3\n")
    with pytest.raises(UserError, match=r"^recipe.yaml:6: trainer.max_epoch: .*did you mean max_epochs\?$"):
        load_recipe(p)


def test_unknown_strategy_suggests(tmp_path):
    p = _write(tmp_path, MINIMAL + "strategy:\n  name: gradul\n")
    with pytest.raises(
        UserError, match=r"^recipe.yaml:6: strategy.name: 'gradul' is not one of .*did you mean gradual\?"
    ):
        load_recipe(p)


@pytest.mark.parametrize(
    ("extra", "key", "line"),
    [
        ("strategy:\n  name: gradual\n  milestones: [2, 5]\ntrainer:\n  max_epochs: 5\n", "strategy.milestones", 7),
        ("strategy:\n  milestones: [3, 2]\n", "strategy.milestones", 6),
        ("tracking:\n  promote: if_better\n", "tracking.promote", 6),
        ("data:\n  source: a\n", None, 1),  # duplicate section: YAML error with its line
        ("trainer:\n  max_epochs: 0\n", "trainer.max_epochs", 6),
    ],
)
def test_impossible_combinations_name_key_and_line(tmp_path, extra, key, line):
    p = _write(tmp_path, MINIMAL + extra)
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg
    if key:
        assert msg.startswith(f"recipe.yaml:{line}: {key}: "), msg
    else:
        assert msg.startswith("recipe.yaml:") and "duplicate key" in msg, msg


def test_missing_required_key(tmp_path):
    p = _write(tmp_path, "data:\n  source: x\n")
    with pytest.raises(UserError, match="model: required key is missing"):
        load_recipe(p)


def test_overrides_are_yaml_parsed_and_reported_as_set(tmp_path):
    p = _write(tmp_path, MINIMAL)
    r = load_recipe(p, ["optim.lr=3e-2", "model.pretrained=false", "strategy.milestones=[1, 2]", "trainer.devices=2"])
    assert r.optim.lr == 0.03 and r.model.pretrained is False and r.strategy.milestones == [1, 2]
    assert r.trainer == {"devices": 2}
    with pytest.raises(UserError, match=r"^--set data.batchsize: unknown key; did you mean batch_size\?$"):
        load_recipe(p, ["data.batchsize=4"])
    with pytest.raises(UserError, match=r"^--set data.batch_size: expected an integer"):
        load_recipe(p, ["data.batch_size=many"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_recipe(p, ["data.batch_size"])


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(_write(tmp_path, MINIMAL), ["optim.name=lars", "tracking.register_as=m"])
    again = load_recipe(_write(tmp_path, r.to_yaml(), "again.yaml"))
    assert again.to_dict() == r.to_dict()
    assert isinstance(again, Recipe)


def test_pkg_path_errors_are_clear(tmp_path):
    r = load_recipe(_write(tmp_path, MINIMAL + "  pretrained: pkg:no_such_package_xyz/w.pth\n"))
    with pytest.raises(UserError, match=r"^recipe.yaml:5: model.pretrained: .*not installed"):
        r.resolve_pretrained()


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"^recipe.yaml:3: invalid YAML"):
        load_recipe(_write(tmp_path, "data:\n  source: [x\nmodel: y\n"))
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


BARE_OFF = {
    "data.audit": "model: {backbone: resnet18}\ndata: {source: builtin:digits, audit: off}\n",
    "deploy.ood": "model: {backbone: resnet18}\ndata: {source: builtin:digits}\ndeploy: {ood: off}\n",
}


@pytest.mark.parametrize("key", list(BARE_OFF))
def test_a_bare_off_means_the_word_in_a_file_and_in_a_set(tmp_path, key: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "r.yaml"
    path.write_text(BARE_OFF[key])
    from_file = load_recipe(path)
    from_set = load_recipe({"data": {"source": "builtin:digits"}, "model": {"backbone": "resnet18"}}, [f"{key}=off"])
    assert getattr(getattr(from_file, section), name) == getattr(getattr(from_set, section), name) == "off"
