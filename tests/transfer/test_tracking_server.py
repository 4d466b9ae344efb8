"""A team's tracking server: `mlflow server` on PostgreSQL with a served artifact root; only tracking.uri changes.

One PostgreSQL cluster, one `mlflow server` on it and one real `transfer fit` per module: a two-epoch linear
probe of the offline ImageNet MobileNetV2 on scikit-learn's digits at 32x32 pixels, registered as
``digits-server@champion``. The tests then read it all back from the server, from the artifact root and from the
database's own tables.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import b64, write_recipe
from tests.servers import MlflowServer, PostgresCluster, require
from transfer.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAME = "digits-server"
EXPERIMENT = "server-tests"


@contextlib.contextmanager
def _mlflow_at(uri: str | None) -> Iterator[None]:
    """MLflow's process-wide URIs as in a fresh process with ``$MLFLOW_TRACKING_URI`` = ``uri``, put back after.

    fit() and predict set the tracking and registry URIs (and export them as environment variables); they must not
    leak out of these tests, nor leak in from earlier ones.
    """
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking, "_tracking_uri", None)
        mp.setattr(registry, "_registry_uri", None)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)  # set_*_uri() also export these for subprocesses
        if uri is None:
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        else:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """PostgreSQL, and `mlflow server` on it with its artifact root in a temporary folder."""
    try:
        import psycopg2  # noqa: F401  (the server's database driver)
    except ImportError:
        require("psycopg2 is not installed: pip install 'transfer-workbench[server]'")
    root = tmp_path_factory.mktemp("tracking-server")
    artifacts = root / "artifacts"
    with PostgresCluster() as pg, MlflowServer(pg.uri, artifacts, log=root / "mlflow-server.log") as server:
        yield SimpleNamespace(pg=pg, server=server, artifacts=artifacts, root=root)


@pytest.fixture(scope="module")
def fitted(stack: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> SimpleNamespace:
    """`transfer fit recipe.yaml` with tracking.uri = the server, in a scratch folder (runs/ and caches there)."""
    work = tmp_path_factory.mktemp("work")
    recipe = write_recipe(
        work,
        data={"max_per_class": 40},
        strategy={"name": "linear_probe"},
        trainer={"max_epochs": 2},
        tracking={"uri": stack.server.url, "experiment": EXPERIMENT, "register_as": NAME},
    )
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, _mlflow_at(None):
        mp.chdir(work)
        mp.setenv("TRANSFER_CACHE_DIR", str(data_cache))
        try:
            with contextlib.redirect_stdout(out):
                rc = main(["fit", str(recipe)])
        finally:
            import mlflow

            while mlflow.active_run():
                mlflow.end_run()
            signal.signal(signal.SIGINT, signal.default_int_handler)
    assert rc == 0, out.getvalue()
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines() if ": " in line)
    return SimpleNamespace(run_id=lines["run_id"], registered=lines.get("registered"), work=work)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six real handwritten digits (two each of 0, 1 and 7) as 32x32 PNG files."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for c in (0, 1, 7):
        for i in np.flatnonzero(d.target == c)[-2:]:  # the last ones: max_per_class=40 did not train on them
            img = Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8)).resize(
                (32, 32), Image.Resampling.BILINEAR
            )
            paths.append(folder / f"{i:04d}_{c}.png")
            img.convert("RGB").save(paths[-1])
    return paths


def test_fit_tracks_the_run_on_the_server(stack: SimpleNamespace, fitted: SimpleNamespace) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.server.url, registry_uri=stack.server.url)
    run = client.get_run(fitted.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    p = run.data.params
    assert p["backbone"] == "mobilenetv2_100" and p["strategy"] == "linear_probe"
    assert json.loads(p["classes"]) == [str(i) for i in range(10)]
    assert (p["num_classes"], p["dataset_size"], p["image_size"]) == ("10", "400", "32")
    for name in ("train_loss", "val_loss", "val_acc", "val_f1"):
        history = client.get_metric_history(fitted.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    assert 0.0 <= run.data.metrics["val_acc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(fitted.run_id)}
    assert {"recipe.yaml", "confusion_matrix.png", "per_class_report.json"} <= artifacts, artifacts

    assert fitted.registered == f"models:/{NAME}/1"
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.version == "1" and champion.run_id == fitted.run_id

    # The server really keeps it in PostgreSQL.
    pg = stack.pg
    assert pg.query("SELECT status FROM runs WHERE run_uuid = %s", [fitted.run_id]) == [("FINISHED",)]
    assert ("backbone", "mobilenetv2_100") in pg.query(
        "SELECT key, value FROM params WHERE run_uuid = %s", [fitted.run_id]
    )
    steps = pg.query("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_acc' ORDER BY step", [fitted.run_id])
    assert steps == [(0,), (1,)]


def test_registry_round_trip_through_the_server(
    stack: SimpleNamespace, fitted: SimpleNamespace, images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    classes = [str(i) for i in range(10)]
    with _mlflow_at(stack.server.url):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        out = model.predict(pd.DataFrame({"image": [b64(p.read_bytes()) for p in images]}))
        assert len(out) == len(images) and out["error"].isna().all(), out
        assert set(out["label"]) <= set(classes), out["label"].tolist()
        assert out["score"].between(0.0, 1.0).all()
        probs = out[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        np.testing.assert_allclose(probs.max(1), out["score"].to_numpy(dtype=float), atol=1e-6)

        # `transfer predict` with MLFLOW_TRACKING_URI pointing at the server, on the same images.
        capsys.readouterr()
        rc = main(["predict", f"models:/{NAME}@champion", *map(str, images), "--json"])
        stdout, stderr = capsys.readouterr()
        assert rc == 0, stderr
        records = json.loads(stdout)
        assert [r["path"] for r in records] == [str(p) for p in images]
        assert [r["label"] for r in records] == out["label"].tolist()

    # The artifacts went through the server to its artifact root: the run's files and the model's.
    files = [p for p in stack.artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "recipe.yaml" and fitted.run_id in p.parts for p in files), files
    models = [p.parent for p in files if p.name == "MLmodel"]
    assert models and any(p.suffix == ".safetensors" and m in p.parents for m in models for p in files), files

    # The registry lives in PostgreSQL's own tables.
    pg = stack.pg
    assert (NAME,) in pg.query("SELECT name FROM registered_models")
    assert pg.query("SELECT version, run_id FROM model_versions WHERE name = %s", [NAME]) == [(1, fitted.run_id)]
    assert pg.query("SELECT alias, version FROM registered_model_aliases WHERE name = %s", [NAME]) == [("champion", 1)]
