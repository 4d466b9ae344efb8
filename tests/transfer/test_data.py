"""Data sources, safe zip extraction, bad files, splits and transforms."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import strip_png
from transfer import imaging
from transfer import sources as tsources
from transfer.augment import PRESETS, build_transforms
from transfer.data import ImageDataModule, class_weights, resolve_balance
from transfer.errors import UserError
from transfer.sources import build_index, safe_extract_zip, stratified_split

CFG = {
    "input_size": (3, 32, 32),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


def _img(path: Path, value: int = 128, size: tuple[int, int] = (20, 16), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for c, n in classes.items():
        for i in range(n):
            _img(root / c / f"{i}.png", value=(i * 37) % 255)
    return root


def test_folder_with_stratified_split(tmp_path):
    root = _folder(tmp_path / "ds", {"cat": 10, "dog": 20})
    idx = build_index(str(root), val_split=0.2, cache_dir=str(tmp_path / "cache"))
    assert idx.classes == ["cat", "dog"]
    assert idx.class_counts("val") == [2, 4] and idx.class_counts("train") == [8, 16]
    assert not set(idx.train) & set(idx.val)
    again = build_index(str(root), val_split=0.2, cache_dir=str(tmp_path / "cache"))
    assert again.val == idx.val  # the split is fixed by the seed


def test_stratified_split_keeps_every_class_in_train():
    samples = [(f"a{i}", 0) for i in range(2)] + [("b0", 1)] + [(f"c{i}", 2) for i in range(50)]
    train, val = stratified_split(samples, 0.5, seed=0)
    assert {lab for _, lab in train} == {0, 1, 2}
    assert sum(1 for _, lab in val if lab == 2) == 25


def test_train_val_subfolders_are_used(tmp_path):
    _folder(tmp_path / "ds" / "train", {"a": 4, "b": 4})
    _folder(tmp_path / "ds" / "val", {"a": 2, "b": 1})
    idx = build_index(str(tmp_path / "ds"), cache_dir=str(tmp_path / "cache"))
    assert (len(idx.train), len(idx.val)) == (8, 3)


def test_zip_of_a_folder_is_extracted_once(tmp_path):
    root = _folder(tmp_path / "photos", {"a": 3, "b": 3})
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in root.rglob("*.png"):
            zf.write(p, Path("photos") / p.relative_to(root))
        zf.writestr("__MACOSX/._junk", b"x")
    idx = build_index(str(z), cache_dir=str(tmp_path / "cache"))
    assert idx.classes == ["a", "b"] and len(idx.train) + len(idx.val) == 6
    assert safe_extract_zip(z, tmp_path / "cache") == safe_extract_zip(z, tmp_path / "cache")


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_zip_members_escaping_the_folder_are_refused(tmp_path, member):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/1.png", b"x")
        zf.writestr(member, b"x")
    with pytest.raises(UserError, match="outside the folder"):
        build_index(str(z), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "evil.png").exists()
    assert not list((tmp_path / "cache").rglob("evil.png"))


def test_zip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tsources, "MAX_ZIP_SMALL", 1024 * 1024)  # the real limits, scaled down to keep the test fast
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * (8 * 1024 * 1024))
    with pytest.raises(UserError, match="zip bomb"):
        build_index(str(z), cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").rglob("zeros.png"))


def test_csv_with_relative_paths(tmp_path):
    d = tmp_path / "set"
    for i in range(4):
        _img(d / "img" / f"x{i}.png")
    (d / "labels.csv").write_text(
        "path,label\n" + "".join(f"img/x{i}.png,{'yes' if i % 2 else 'no'}\n" for i in range(4))
    )
    idx = build_index(str(d / "labels.csv"), val_split=0.5, cache_dir=str(tmp_path / "cache"))
    assert idx.classes == ["no", "yes"]
    assert all(Path(p).is_absolute() or Path(p).exists() for p, _ in idx.train + idx.val)


def test_corrupt_files_are_reported_by_path_and_skipped(tmp_path, caplog):
    root = _folder(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="transfer.sources"):
        idx = build_index(str(root), cache_dir=str(tmp_path / "cache"))
    assert len(idx.skipped) == 2
    assert str(root / "a" / "broken.jpg") in caplog.text and str(root / "b" / "notes.txt") in caplog.text
    assert all("broken" not in p for p, _ in idx.train + idx.val)


def test_truncated_png_is_caught_by_the_scan(tmp_path):
    root = _folder(tmp_path / "ds", {"a": 3, "b": 3})
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    idx = build_index(str(root), cache_dir=str(tmp_path / "cache"))
    assert [p for p, _ in idx.skipped] == [str(root / "a" / "cut.png")]


def test_mostly_bad_data_is_an_error(tmp_path):
    root = tmp_path / "ds"
    for c in ("a", "b"):
        _img(root / c / "ok.png")
        for i in range(3):
            (root / c / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"6 of 8 files .* are not usable images"):
        build_index(str(root), cache_dir=str(tmp_path / "cache"))


def test_one_class_and_empty_class_are_errors(tmp_path):
    with pytest.raises(UserError, match=r"found 1 class .*at least 2"):
        build_index(str(_folder(tmp_path / "one", {"a": 4})), cache_dir=str(tmp_path / "c"))
    root = _folder(tmp_path / "two", {"a": 4, "b": 4})
    (root / "empty").mkdir()
    (root / "empty" / "x.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"class 'empty' .* has no readable images"):
        build_index(str(root), cache_dir=str(tmp_path / "c"))


def test_missing_source(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_index(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="unknown builtin dataset"):
        build_index("builtin:nope", cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize(
    "make",
    [
        lambda path: Image.new("1", (9500, 9500)).save(path),  # 90 megapixels in a few kilobytes
        lambda path: path.write_bytes(strip_png(150_000)),  # 1 x 150,000: absurdly elongated
        lambda path: path.write_bytes(strip_png(1_000_000)),
    ],
    ids=["bomb", "strip-150k", "strip-1M"],
)
def test_decompression_bomb_is_refused_per_file(tmp_path, caplog, make):
    root = _folder(tmp_path / "ds", {"a": 3, "b": 3})
    make(root / "a" / "huge.png")
    with caplog.at_level(logging.WARNING, logger="transfer.sources"):
        idx = build_index(str(root), cache_dir=str(tmp_path / "cache"))
    assert [p for p, _ in idx.skipped] == [str(root / "a" / "huge.png")]
    assert "image too large" in caplog.text or "elongated" in caplog.text


def test_grayscale_palette_and_16bit_load_as_rgb(tmp_path):
    _img(tmp_path / "g.png", mode="L")
    _img(tmp_path / "p.png", mode="P")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("g.png", "p.png", "i16.png"):
        a = np.asarray(imaging.load_file(tmp_path / name))
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    # Scaled by the 16-bit range (40950 / 257), the same in training and serving: not clipped to white.
    assert np.asarray(imaging.load_file(tmp_path / "i16.png")).max() == round(40950 / 257)


def test_builtin_datasets_materialise_as_files(tmp_path):
    idx = build_index("builtin:lfw_faces", cache_dir=str(tmp_path))
    assert idx.classes == ["face", "non_face"] and len(idx.train) + len(idx.val) == 200
    assert all(Path(p).is_file() for p, _ in idx.train[:5])
    digits = build_index("builtin:digits", cache_dir=str(tmp_path), max_per_class=5)
    assert digits.classes == [str(i) for i in range(10)] and len(digits.train) + len(digits.val) == 50
    assert Image.open(digits.train[0][0]).size == (32, 32)


def test_hf_offline_is_a_clear_error(tmp_path):
    with pytest.raises(UserError) as e:
        build_index("hf:some-user/some-dataset-that-is-not-cached", cache_dir=str(tmp_path))
    assert "Hugging Face" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_augment_presets_give_normalised_tensors_of_the_backbone_size(preset):
    train_tf, eval_tf = build_transforms(CFG, preset)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for tf in (train_tf, eval_tf):
        x = tf(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert -3 < float(x.mean()) < 3
    assert torch.equal(eval_tf(img), eval_tf(img))


def test_eval_transform_matches_the_serving_preprocessing():
    # Validation metrics and cached features are only honest if they see what the deployed model sees.
    _, eval_tf = build_transforms(CFG, "light")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 60, 3), dtype=np.uint8))
    assert torch.equal(eval_tf(img), imaging.preprocess_image(img, CFG))


def test_imbalance_handling(tmp_path):
    assert resolve_balance("auto", [10, 10, 12]) == "none"
    assert resolve_balance("auto", [30, 10]) == "weights"
    w = class_weights([30, 10])
    assert w[1] / w[0] == pytest.approx(3.0)
    root = _folder(tmp_path / "ds", {"a": 30, "b": 6})
    idx = build_index(str(root), cache_dir=str(tmp_path / "c"))
    dm = ImageDataModule(idx, CFG, augment="none", batch_size=8, num_workers=0, balance="sampler", seed=0)
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert 0.3 < float(labels.float().mean()) < 0.7  # the minority class is drawn about as often as the majority


def test_datamodule_batches(tmp_path):
    idx = build_index(str(_folder(tmp_path / "ds", {"a": 5, "b": 5})), cache_dir=str(tmp_path / "c"))
    dm = ImageDataModule(idx, CFG, augment="light", batch_size=4, num_workers=0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    xs = [b[0] for b in dm.val_dataloader()]
    assert sum(len(b) for b in xs) == len(idx.val)


def test_a_file_that_breaks_after_the_scan_is_skipped_at_load(tmp_path, caplog):
    idx = build_index(str(_folder(tmp_path / "ds", {"a": 4, "b": 4})), cache_dir=str(tmp_path / "c"))
    dm = ImageDataModule(idx, CFG, augment="none", batch_size=16, num_workers=0)
    broken = idx.train[0][0]
    Path(broken).write_bytes(b"gone bad")
    with caplog.at_level(logging.WARNING, logger="transfer.data"):
        x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[0] == len(idx.train) and broken in caplog.text
