"""The backbone picker: only models within the page's limit, recommended ones first, where each one's weights come
from, and a refusal in the page's words when pretrained weights cannot be had here."""

from __future__ import annotations

import pytest

import zoo
from app.backbones import RECOMMENDED, Backbones
from tests.helpers import WEIGHTS
from transfer.errors import UserError


@pytest.fixture(scope="module")
def picker() -> Backbones:
    return Backbones(max_params=30e6)


def test_only_models_within_the_limit_are_offered(picker: Backbones) -> None:
    names = picker.names()
    assert names and all(zoo.get_spec(n).num_params <= 30e6 for n in names)
    assert "vgg19" not in names and "senet154" not in names
    with pytest.raises(UserError, match="not offered here"):
        picker.check_allowed("vgg19")


def test_recommended_starting_points_come_first(picker: Backbones) -> None:
    names = picker.names()
    assert names[: len(RECOMMENDED)] == list(RECOMMENDED)


def test_each_choice_says_where_its_weights_come_from(picker: Backbones) -> None:
    labels = dict((name, label) for label, name in picker.choices())
    assert labels["mobilenetv2_100"].endswith("weights here (offline package)")  # the package ships its checkpoint
    assert labels["lenet5"].endswith("no pretrained weights")
    assert all(("weights here" in x) or ("download needed" in x) or ("no pretrained" in x) for x in labels.values())


def test_no_weights_here_and_no_hub_is_refused_in_the_pages_words(picker: Backbones) -> None:
    """The tests run with HF_HUB_OFFLINE=1: resnet18's weights would need the hub."""
    assert not picker.hub_reachable()
    with pytest.raises(UserError) as caught:
        picker.pretrained_for("resnet18", True, None)
    message = str(caught.value)
    assert "Start from pretrained ImageNet weights" in message and "recipe" not in message
    assert picker.pretrained_for("resnet18", False, None) is False


def test_the_offline_package_and_an_uploaded_file_are_used_as_they_are(picker: Backbones) -> None:
    from transfer.recipe import resolve_package_path

    assert picker.pretrained_for("mobilenetv2_100", True, None) == WEIGHTS
    local = str(resolve_package_path(WEIGHTS))
    assert picker.pretrained_for("mobilenetv2_100", True, local) == local


def test_macs_are_counted_at_the_chosen_size(picker: Backbones) -> None:
    small, large = picker.macs("mobilenetv2_100", 96), picker.macs("mobilenetv2_100", 224)
    assert small and large and large / small == pytest.approx((224 / 96) ** 2, rel=0.15)
    assert "GMACs per 96px image" in picker.info("mobilenetv2_100", 96)
