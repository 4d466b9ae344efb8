"""The Model tab's settings become the recipe the fit runs: what a visitor types is checked before anything starts."""

from __future__ import annotations

import pytest

from app.page import Settings
from transfer.errors import UserError
from transfer.recipe import load_recipe

# backbone, strategy, epochs, image size, lr, pretrained, batch, augment, optimizer, val fraction, max per class
BASE = ["mobilenetv2_100", "linear_probe", 3, 32, "1e-3", True, 16, "none", "adamw", 0.25, 0]


def _settings(lr: object) -> Settings:
    return Settings.of(*BASE[:4], lr, *BASE[5:])


@pytest.mark.parametrize(("typed", "lr"), [("auto", "auto"), (" Auto ", "auto"), ("3e-3", 3e-3), (1e-4, 1e-4)])
def test_the_learning_rate_box_takes_a_number_or_auto(typed: object, lr: object) -> None:
    recipe = load_recipe({**_settings(typed).recipe(False, "sqlite:///m.db"), "data": {"source": "builtin:digits"}})
    assert recipe.optim.lr == lr


@pytest.mark.parametrize("typed", ["fast", "-1e-3", "0", "1e9"])
def test_a_bad_learning_rate_is_one_line_naming_what_to_type(typed: str) -> None:
    with pytest.raises(UserError, match="give a number such as 1e-3, or auto"):
        _settings(typed)
