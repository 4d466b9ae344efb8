"""One decoder, one preprocessing: training, the served model and `transfer predict` see the same pixels.

Real image files that decoders disagree on (16-bit grey PNG, RGBA with a transparent half, palette GIF, CMYK JPEG,
EXIF-rotated JPEG, progressive JPEG), at the model's real input size.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.helpers import awkward_images, b64, encode, huge_png, photo, strip_png, truncated_jpeg
from transfer import imaging
from transfer.data import ImageDataModule
from transfer.deploy.classifier import REFUSED_STRING, ImageClassifier
from transfer.imaging import ImageInputError
from transfer.sources import build_index

SIZE = 224


def _data_config(crop_mode: str = "center") -> dict:
    dc = dict(zoo.get_spec("mobilenetv2_100").data_config)
    dc["input_size"] = (3, SIZE, SIZE)
    dc["crop_mode"] = crop_mode
    return dc


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The awkward files as a two-class ImageFolder (each file in both classes, so the split keeps one of each)."""
    root = tmp_path_factory.mktemp("awkward")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for name, data in awkward_images().items():
            (root / cls / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def served() -> ImageClassifier:
    model = zoo.create_model("lenet5", num_classes=2)
    config = {"class_names": ["a", "b"], "data_config": imaging.normalize_data_config(_data_config())}
    return ImageClassifier(model, config, device="cpu", channels_last=False)


def test_train_eval_transform_equals_served_preprocessing_from_the_same_file(awkward_folder, served) -> None:
    index = build_index(str(awkward_folder), val_split=0.5, seed=0)
    dm = ImageDataModule(index, _data_config(), augment="none", batch_size=4, num_workers=0)
    samples = index.train + index.val
    loader = dm.loader_of(samples, batch_size=len(samples))
    trained, _ = next(iter(loader))
    assert len(samples) == 2 * len(awkward_images())
    for (path, _), want in zip(samples, trained):
        data = Path(path).read_bytes()
        for form in (data, b64(data), "data:image/png;base64," + b64(data)):
            torch.testing.assert_close(served.load(form), want, atol=1e-6, rtol=0, msg=path)
        # transfer predict: a local caller that opts in to paths reads the file the same way.
        torch.testing.assert_close(served.load(path, allow_paths=True), want, atol=1e-6, rtol=0, msg=path)


def test_sixteen_bit_grey_is_scaled_by_its_range_not_clipped() -> None:
    data = awkward_images()["grey16.png"]
    with Image.open(__import__("io").BytesIO(data)) as raw:
        want = np.asarray(raw, dtype=np.float64) / 257.0
    got = np.asarray(imaging.decode(data), dtype=np.float64)[..., 0]
    assert abs(got.mean() - want.mean()) < 0.6 and got.max() < 255  # not the saturated white of a plain convert


def test_transparent_pixels_are_composited_on_white() -> None:
    got = np.asarray(imaging.decode(awkward_images()["rgba_half_transparent.png"]))
    left, right = got[:, : got.shape[1] // 2 - 1], got[:, got.shape[1] // 2 + 1 :]
    assert (left == 255).all()
    assert right.mean() < 200  # the cat, as it is


def test_exif_orientation_is_applied() -> None:
    assert imaging.decode(awkward_images()["exif_rotated.jpg"]).size == (200, 300)  # stored 300x200, shown upright


def test_cmyk_palette_and_progressive_decode_close_to_the_photo() -> None:
    cat = np.asarray(photo(), dtype=np.float64)
    images = awkward_images()
    for name in ("cmyk.jpg", "palette.gif"):
        got = np.asarray(imaging.decode(images[name]), dtype=np.float64)
        assert np.abs(got - cat).mean() < 12, name
    assert imaging.decode(images["progressive.jpg"]).size == (900, 600)


@pytest.mark.parametrize("crop_mode", imaging.CROP_MODES)
@pytest.mark.parametrize("name", sorted(awkward_images()))
def test_preprocess_matches_timm_eval_transform_on_real_files(crop_mode: str, name: str) -> None:
    from timm.data import create_transform

    dc = _data_config(crop_mode)
    img = imaging.decode(awkward_images()[name])
    tf = create_transform(
        input_size=dc["input_size"],
        mean=dc["mean"],
        std=dc["std"],
        interpolation=dc["interpolation"],
        crop_pct=dc["crop_pct"],
        crop_mode=crop_mode,
        is_training=False,
    )
    want = tf(img)
    got = imaging.preprocess_image(img, dc)
    assert got.shape == want.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("size", "interpolation", "crop_pct", "image_hw"),
    [
        ((3, 64, 64), "bicubic", 0.875, (50, 90)),
        ((3, 48, 64), "bilinear", 0.9, (100, 100)),
        ((1, 32, 32), "bilinear", 1.0, (20, 30)),
    ],
)
def test_preprocess_matches_timm_for_odd_configs(size, interpolation, crop_pct, image_hw) -> None:
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (*image_hw, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406)[: size[0]], (0.229, 0.224, 0.225)[: size[0]]
    dc = {"input_size": size, "mean": mean, "std": std, "interpolation": interpolation, "crop_pct": crop_pct}
    want = create_transform(**dc, is_training=False)(img.convert("L") if size[0] == 1 else img)
    torch.testing.assert_close(imaging.preprocess([img], dc)[0], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("width", [150_000, 1_000_000])
def test_absurd_strips_are_refused_from_the_header_without_allocating(width: int) -> None:
    data = strip_png(width, 1)
    assert len(data) < 4096
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError, match=r"elongated|too large"):
            imaging.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def test_bombs_and_broken_files_are_one_line_errors() -> None:
    for data, match in (
        (huge_png(20000), "400000000 pixels"),
        (truncated_jpeg(), "truncated"),
        (b"not an image", "not an image"),
        (b"", "empty"),
    ):
        with pytest.raises(ImageInputError, match=match) as info:
            imaging.decode(data)
        assert "\n" not in str(info.value)


def test_served_inputs_never_read_paths(served, tmp_path: Path) -> None:
    real = tmp_path / "cat.png"
    real.write_bytes(encode(photo(), "PNG"))
    (tmp_path / "folder").mkdir()
    answers = set()
    for cell in (str(real), str(tmp_path / "missing.png"), str(tmp_path / "folder"), "/etc/passwd", real):
        with pytest.raises(ImageInputError) as info:
            served.load(cell)
        answers.add(str(info.value))
    assert answers == {REFUSED_STRING}  # the same line whether the file exists or not: nothing leaks
