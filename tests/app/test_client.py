"""The page's flow through gradio_client, two visitors at once, with no cross-talk."""

from __future__ import annotations

import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers import digits_folder


def _flow(url: str, zip_path: Path, sample: Path, name: str) -> dict:
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False)
    summary, _gallery = c.predict(handle_file(str(zip_path)), [], "", None, api_name="/on_load")
    job = c.submit(
        "mobilenetv2_100", "linear_probe", 1, 64, 1e-3, True, 16, "none", "adamw", 0.25, 0, api_name="/on_train"
    )
    outputs = job.result(timeout=600)
    updates = job.outputs()
    progress, run_info = outputs[0], outputs[3]
    evaluation = c.predict(api_name="/on_evaluate")
    deployed = c.predict(name, "champion", api_name="/on_deploy")
    label, source = c.predict(handle_file(str(sample)), name, "champion", api_name="/on_try")
    return {
        "summary": summary,
        "updates": updates,
        "progress": progress,
        "run_info": run_info,
        "evaluation": evaluation[0],
        "deployed": deployed,
        "label": label,
        "source": source,
    }


def test_two_sessions_at_once(app_server: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = app_server
    zips = {}
    for who, classes in (("alice", (0, 1)), ("bob", (3, 8, 9))):
        root = digits_folder(tmp_path / who / "data", classes=classes, per_class=12)
        zips[who] = tmp_path / f"{who}.zip"
        with zipfile.ZipFile(zips[who], "w") as zf:
            for f in sorted(root.rglob("*.png")):
                zf.write(f, f.relative_to(root.parent))
    samples = {who: next((tmp_path / who / "data").rglob("*.png")) for who in zips}

    with ThreadPoolExecutor(2) as ex:
        futures = {who: ex.submit(_flow, url, zips[who], samples[who], f"client-{who}") for who in zips}
        res = {who: f.result() for who, f in futures.items()}

    assert "24 images in 2 classes" in res["alice"]["summary"]
    assert "36 images in 3 classes" in res["bob"]["summary"]
    for who, expected in (("alice", {"digit_0", "digit_1"}), ("bob", {"digit_3", "digit_8", "digit_9"})):
        r = res[who]
        assert r["progress"] == "Training finished.", r["progress"]
        assert len(r["updates"]) >= 2  # live updates came before the end
        assert "val_acc" in r["evaluation"]
        assert f"client-{who}" in r["deployed"] and "Registered" in r["deployed"]
        # each visitor's deployed model knows exactly that visitor's classes
        labels = {c["label"] for c in r["label"]["confidences"]}
        assert labels == expected, (who, labels)
        assert f"models:/client-{who}@champion" in r["source"]
    # two session directories, each holding only its owner's upload
    sessions = sorted(p for p in (data_dir / "sessions").iterdir() if p.is_dir())
    assert len(sessions) >= 2
    owners = [{z.name for z in s.rglob("*.zip")} for s in sessions]
    assert all(len(o) <= 1 for o in owners)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_bad_uploads_get_a_message_on_the_page(app_server: tuple[str, Path], tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    url, data_dir = app_server
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("cats/1.png", b"x")
        zf.writestr("../../../escaped.txt", b"gotcha")
    c = Client(url, verbose=False)
    summary, gallery = c.predict(handle_file(str(evil)), [], "", None, api_name="/on_load")
    assert summary.startswith("❌") and "points outside the folder" in summary
    assert not gallery
    assert not list(data_dir.parent.rglob("escaped.txt"))

    root = digits_folder(tmp_path / "one" / "data", classes=(5,), per_class=4)
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    summary, _ = c.predict(handle_file(str(one)), [], "", None, api_name="/on_load")
    assert "at least 2 classes" in summary

    summary, _ = c.predict(None, [], "", None, api_name="/on_load")
    assert "upload a zip" in summary
