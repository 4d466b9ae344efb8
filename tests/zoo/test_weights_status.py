"""zoo's read-only look at where pretrained weights are available (no download ever): a torch hub cache filled
offline, a local file, a download, none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import zoo
from tests.helpers import WEIGHTS
from zoo._weights import weights_status


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _offline_checkpoint() -> Path:
    from transfer.recipe import resolve_package_path

    return resolve_package_path(WEIGHTS)


def test_an_empty_cache_means_a_download(torch_home: Path) -> None:
    status = weights_status("mobilenetv2_100", "torchvision:IMAGENET1K_V1")
    assert not status.available and status.where == "download" and status.detail.endswith("mobilenet_v2-b0353104.pth")


def test_a_filled_torch_hub_cache_is_found_and_loads_offline(torch_home: Path) -> None:
    dest = torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    dest.parent.mkdir(parents=True)
    shutil.copy(_offline_checkpoint(), dest)
    status = weights_status("mobilenetv2_100", "torchvision:IMAGENET1K_V1")
    assert status.available and status.where == "torch hub cache" and status.detail == str(dest)
    model = zoo.create_model("mobilenetv2_100", pretrained=status.pretrained, num_classes=3)
    assert model.num_features == 1280


def test_true_reports_the_first_cached_source(torch_home: Path) -> None:
    dest = torch_home / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth"  # torchvision's DEFAULT weights
    dest.parent.mkdir(parents=True)
    shutil.copy(_offline_checkpoint(), dest)
    status = weights_status("mobilenetv2_100", True)  # timm comes first, but only torchvision's file is here
    assert status.available and status.pretrained == "torchvision"


def test_a_local_file_and_no_weights_at_all() -> None:
    local = weights_status("mobilenetv2_100", str(_offline_checkpoint()))
    assert local.available and local.where == "local file"
    assert weights_status("lenet5", True).where == "none" and not weights_status("lenet5", True).available
    assert not weights_status("mobilenetv2_100", "/no/such/file.pth").available
