"""Bad uploads on the page's session layer: clear messages, nothing written outside the session directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from app.session import Session, summarize
from tests.helpers import digits_folder
from transfer.errors import UserError


def _files_outside(base: Path, session: Session) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.resolve().is_relative_to(session.root)]


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session.create(tmp_path / "base", "visitor-1", f"sqlite:///{tmp_path}/mlflow.db")


def test_zip_of_class_folders_is_summarised(session: Session, digits_zip: Path) -> None:
    result = session.load_zip(digits_zip)
    assert result.classes == ["digit_0", "digit_1", "digit_7"]
    md, gallery = summarize(result)
    assert "48 images in 3 classes" in md and "| digit_7 | 16 |" in md
    assert len(gallery) == 18 and {c for _, c in gallery} == set(result.classes)
    assert session.data_dir.resolve().is_relative_to(session.root)


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


def test_non_images_are_listed_as_skipped(session: Session, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "d" / "data", classes=(3, 4), per_class=8)
    (root / "digit_3" / "notes.txt").write_text("not an image")
    (root / "digit_4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(root.parent))
    result = session.load_zip(path)
    md, _ = summarize(result)
    assert len(result.samples) == 16
    assert "skipped 2 files" in md and "notes.txt" in md and "broken.png" in md


def test_single_class_is_refused(session: Session, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "one" / "data", classes=(5,), per_class=6)
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    with pytest.raises(UserError, match="at least 2 classes"):
        session.load_zip(path)


def test_dropped_images_with_labels(session: Session, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "imgs", classes=(1, 2), per_class=3)
    files = sorted(str(p) for p in root.rglob("*.png"))
    labels = [Path(f).parent.name.replace("digit_", "d") for f in files]
    result = session.load_images(files, labels)
    assert result.classes == ["d1", "d2"] and len(result.samples) == 6
    with pytest.raises(UserError, match="one label per image"):
        session.load_images(files, labels[:-1])


def test_sessions_are_isolated(tmp_path: Path, digits_zip: Path) -> None:
    a = Session.create(tmp_path / "base", "alice", "sqlite:///x.db")
    b = Session.create(tmp_path / "base", "bob", "sqlite:///x.db")
    a.load_zip(digits_zip)
    assert a.root != b.root and b.data_dir is None
    assert a.data_dir.resolve().is_relative_to(a.root)
    assert not list(b.root.rglob("*.png"))


def test_session_id_cannot_escape(tmp_path: Path) -> None:
    s = Session.create(tmp_path / "base", "../../etc", "sqlite:///x.db")
    assert s.root.is_relative_to((tmp_path / "base" / "sessions").resolve())


def test_cancel_stops_a_running_fit_cleanly(session: Session, digits_zip: Path) -> None:
    """Cancel = SIGINT to the `transfer fit` subprocess: it stops mid-training and marks its MLflow run KILLED."""
    import time

    import mlflow

    session.load_zip(digits_zip)
    recipe = {
        "data": {"image_size": 32, "batch_size": 4, "num_workers": 0, "augment": "none"},
        "model": {"backbone": "resnet18", "pretrained": False},
        "strategy": {"name": "full"},
        "trainer": {"max_epochs": 200, "enable_progress_bar": False},
        "tracking": {"register_as": "never-registered"},
    }
    session.start(session.write_recipe(recipe))
    deadline = time.monotonic() + 180
    while not any(e["event"] == "step" for e in session.events()):
        assert session.running, session.log_tail(20)
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    t0 = time.monotonic()
    session.cancel()
    assert not session.running and time.monotonic() - t0 < 30
    result = session.finish()
    assert result["returncode"] != 0 and "run_id" not in result
    client = mlflow.tracking.MlflowClient(tracking_uri=session.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("transfer").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert not client.search_registered_models()
