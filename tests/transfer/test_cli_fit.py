"""`transfer fit` with bad input: exit code 2, exactly one line on stderr, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_recipe
from transfer.cli import main


def _folder(root: Path, classes: dict[str, int], corrupt: bool = False) -> Path:
    from PIL import Image

    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if corrupt:
                (root / c / f"{i}.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
            else:
                Image.new("RGB", (16, 16), (i * 40 % 255, 0, 0)).save(root / c / f"{i}.png")
    return root


def _case(workdir: Path, name: str) -> tuple[Path, str]:
    """(recipe, text the error must contain) for each kind of bad input."""
    if name == "missing data path":
        return write_recipe(workdir, data={"source": "no/such/folder"}), "'no/such/folder' does not exist"
    if name == "one class":
        src = _folder(workdir / "one", {"cats": 4})
        return write_recipe(workdir, data={"source": str(src)}), "at least 2 classes"
    if name == "all files corrupt":
        src = _folder(workdir / "bad", {"a": 3, "b": 3}, corrupt=True)
        return write_recipe(workdir, data={"source": str(src)}), "6 of 6 files"
    if name == "unknown backbone":
        return write_recipe(workdir, model={"backbone": "resnet5O"}), "recipe.yaml:7: model.backbone: unknown model"
    if name == "unknown strategy":
        return write_recipe(workdir, strategy={"name": "linear"}), "strategy.name: 'linear' is not one of"
    if name == "typo key":
        p = workdir / "recipe.yaml"
        p.write_text("data:\n  source: builtin:digits\n  batchsize: 8\nmodel:\n  backbone: resnet18\n")
        return p, "recipe.yaml:3: data.batchsize: unknown key; did you mean batch_size?"
    if name == "wrong type":
        p = workdir / "recipe.yaml"
        p.write_text(
            "data:\n  source: builtin:digits\nmodel:\n  backbone: resnet18\n"
            "trainer:\n  max_epochs: 3\noptim:\n  lr: [1]\n"
        )
        return p, "recipe.yaml:8: optim.lr: expected a number or auto"
    raise AssertionError(name)


CASES = [
    "missing data path",
    "one class",
    "all files corrupt",
    "unknown backbone",
    "unknown strategy",
    "typo key",
    "wrong type",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_code_2(name, workdir, capsys, stderr_logging):
    recipe, expected = _case(workdir, name)
    rc = main(["fit", str(recipe)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()  # nothing half-written


def test_bad_override_via_cli(workdir, capsys, stderr_logging):
    recipe = write_recipe(workdir)
    rc = main(["fit", str(recipe), "--set", "optim.lr=fast"])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == ["error: --set optim.lr: expected a number or auto, got 'fast'"]


def test_unreachable_tracking_server_fails_before_training(workdir, capsys, stderr_logging):
    recipe = write_recipe(workdir, tracking={"uri": "http://127.0.0.1:9"})
    rc = main(["fit", str(recipe)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "unreachable" in err
    assert not (workdir / "runs").exists()


def test_server_that_refuses_this_host_fails_before_training(workdir, capsys, stderr_logging):
    # MLflow's host check: /health answers anyone, the API only --allowed-hosts (HTTP 403 otherwise).
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 403)
            self.end_headers()
            self.wfile.write(b"OK" if self.path == "/health" else b"Invalid Host header")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        rc = main(["fit", str(write_recipe(workdir, tracking={"uri": url}))])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "--allowed-hosts" in err
    assert not (workdir / "runs").exists()


BAD_VALUES = {  # --set value -> what the one line must say
    "trainer.precision=banana": "trainer.precision",
    "trainer.devices=0": "trainer.devices",
    "trainer.accelerator=tpu": "trainer.accelerator",
    "trainer.max_time=banana": "trainer.max_time",
    "optim.lr=.inf": "optim.lr",
    "data.batch_size=1": "batch",
}


@pytest.mark.parametrize("setting", list(BAD_VALUES))
def test_a_bad_value_is_one_line_before_anything_trains(setting, workdir, capsys, stderr_logging):
    recipe = write_recipe(workdir, strategy={"name": "full"})
    rc = main(["fit", str(recipe), "--set", setting])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and BAD_VALUES[setting] in err and "Traceback" not in err
    assert not (workdir / "runs").exists()


def test_a_diverging_fit_fails_its_run_and_registers_nothing(workdir, capsys, stderr_logging):
    from mlflow.tracking import MlflowClient

    recipe = write_recipe(
        workdir,
        data={"max_per_class": 8},
        strategy={"name": "full"},
        optim={"lr": 1e30, "warmup_epochs": 0},
        tracking={"register_as": "diverged"},
    )
    rc = main(["fit", str(recipe)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "became nan" in err and "nothing was registered" in err, err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_model_versions("name='diverged'") == []
