"""A visitor's work folder: uploads become a dataset or a one-line refusal in the visitor's words, nothing is written
outside the folder, and a failed load leaves no dataset behind."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from app.limits import Limits
from app.session import Session
from app.visitors import Visitor
from tests.app.support import zip_tree
from tests.helpers import digits_folder
from transfer.errors import UserError


def _files_outside(base: Path, session: Session) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.resolve().is_relative_to(session.root)]


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session.open(tmp_path / "base", Visitor("session-visitor-1"), Limits())


def test_zip_of_class_folders_is_summarised(session: Session, digits_zip: Path) -> None:
    dataset = session.load_zip(digits_zip)
    assert dataset.classes == ["digit_0", "digit_1", "digit_7"] and dataset.images == 48
    assert "48 images in 3 classes" in dataset.summary and "| digit_7 | 16 |" in dataset.summary
    assert len(dataset.samples) == 18 and {c for _, c in dataset.samples} == set(dataset.classes)
    assert Path(dataset.source).resolve().is_relative_to(session.root)


def test_the_dataset_survives_a_new_session_object(session: Session, digits_zip: Path, tmp_path: Path) -> None:
    """A reload (or a restarted server) opens the same work folder and finds the dataset there."""
    session.load_zip(digits_zip)
    again = Session.open(tmp_path / "base", Visitor("session-visitor-1"), Limits())
    assert again.dataset is not None and again.dataset.label == "digits.zip" and again.dataset.images == 48


def test_a_failed_load_clears_the_dataset(session: Session, digits_zip: Path, one_class_zip: Path) -> None:
    session.load_zip(digits_zip)
    with pytest.raises(UserError, match="at least 2 classes"):
        session.load_zip(one_class_zip)
    assert session.dataset is None
    with pytest.raises(UserError, match="no dataset loaded"):
        session.new_run({"model": {"backbone": "mobilenetv2_100"}}, {})


def test_refusals_name_the_upload_not_server_folders(session: Session, one_class_zip: Path) -> None:
    with pytest.raises(UserError) as caught:
        session.load_zip(one_class_zip)
    message = str(caught.value)
    assert "one.zip" in message and str(session.root) not in message and "/" not in message.split("one.zip")[0]


def test_zip_slip_is_refused(session: Session, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("cats/1.png", b"x")
        zf.writestr("../../escaped.txt", b"gotcha")
    with pytest.raises(UserError, match="points outside the folder"):
        session.load_zip(evil)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert _files_outside(tmp_path / "base", session) == []


def test_zip_bomb_is_refused(session: Session, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/big.png", b"\0" * (300 * 1024 * 1024))  # 300 MB of zeros packs to ~300 kB
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(UserError, match="zip bomb"):
        session.load_zip(bomb)
    assert not any(p.stat().st_size > 1_000_000 for p in (tmp_path / "base").rglob("*") if p.is_file())


def test_a_zip_over_the_file_limit_is_refused(tmp_path: Path, digits_zip: Path) -> None:
    session = Session.open(tmp_path / "base", Visitor("session-x"), Limits(max_files=20))
    with pytest.raises(UserError, match="over the 20 limit"):
        session.load_zip(digits_zip)
    assert not list((tmp_path / "base").rglob("*.png"))


def test_non_images_are_listed_as_skipped(session: Session, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "d" / "data", classes=(3, 4), per_class=8)
    (root / "digit_3" / "notes.txt").write_text("not an image")
    (root / "digit_4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    dataset = session.load_zip(zip_tree(root, tmp_path / "mixed.zip"))
    assert dataset.images == 16
    assert "skipped 2 files" in dataset.summary and "notes.txt" in dataset.summary and "broken.png" in dataset.summary


def test_dropped_images_with_labels(session: Session, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "imgs", classes=(1, 2), per_class=3)
    files = sorted(str(p) for p in root.rglob("*.png"))
    labels = [Path(f).parent.name.replace("digit_", "d") for f in files]
    dataset = session.load_images(files, labels)
    assert dataset.classes == ["d1", "d2"] and dataset.images == 6
    with pytest.raises(UserError, match="one label per image"):
        session.load_images(files, labels[:-1])


def test_sessions_are_isolated(tmp_path: Path, digits_zip: Path) -> None:
    a = Session.open(tmp_path / "base", Visitor("alice"), Limits())
    b = Session.open(tmp_path / "base", Visitor("bob"), Limits())
    a.load_zip(digits_zip)
    assert a.root != b.root and b.dataset is None
    assert not list(b.root.rglob("*.png"))


def test_work_folder_names_reveal_nobody(tmp_path: Path) -> None:
    s = Session.open(tmp_path / "base", Visitor("../../etc"), Limits())
    assert s.root.parent == (tmp_path / "base" / "sessions").resolve() and "etc" not in s.root.name
