"""Time before the first epoch of ``transfer fit`` on a cached-feature run, against a plain script's.

A linear probe whose frozen features are already in the feature cache (the second fit of the same data) should start
training within seconds. Measured from the command's launch to its first ``start`` progress event (imports, recipe,
data index, the cached features, the MLflow run and the audit included), against a plain PyTorch script launched
the same way that imports torch and torchvision, loads the same cached features from a file and starts its first
epoch. Runs alternate; the median of ``--repeats`` is reported with the ratio. Goal: ours under 5 s.

Then the floor: the libraries a fit imports, one after another in a fresh interpreter (what each adds on top of
those before it), and the sum of those a fit cannot start training without (the loop is Lightning's, which imports
torchmetrics, which imports scipy.signal and torchvision).

    python bench/fit_startup.py [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import benchdata
from peers import WEIGHTS_URI, first_start, timed, transfer_command

_log = logging.getLogger("bench.fit_startup")

# In the order a fit imports them; True: needed before the first epoch of a cached-feature linear probe.
IMPORTS = {
    "torch": True,
    "torchvision": True,
    "timm": True,
    "scipy.signal": True,  # torchmetrics' audio metrics import it; Lightning imports torchmetrics to read its version
    "torchmetrics": True,
    "lightning": True,
    "mlflow": False,
    "mlflow.store.tracking.sqlalchemy_store": False,
    "albumentations": False,
}
IMPORT_TIMES = textwrap.dedent(
    """
    import importlib, json, sys, time
    times = {}
    for name in sys.argv[1:]:
        t = time.perf_counter(); importlib.import_module(name); times[name] = time.perf_counter() - t
    print(json.dumps(times))
    """
)

PLAIN = textwrap.dedent(
    """
    import json, os, sys, time
    import torch, torchvision  # what any PyTorch script imports
    feats = torch.load(sys.argv[1])
    head = torch.nn.Linear(feats["x"].shape[1], 10)
    opt = torch.optim.AdamW(head.parameters(), 1e-3)
    print(json.dumps({"t_first_epoch": time.time() - float(os.environ["BENCH_T0"])}), flush=True)
    for x, y in zip(feats["x"].split(32), feats["y"].split(32)):
        opt.zero_grad(); torch.nn.functional.cross_entropy(head(x), y).backward(); opt.step()
    """
)


def _ours(recipe: Path, scratch: Path, n: int, env: dict) -> float:
    progress = scratch / f"progress-{n}.jsonl"
    cmd = [*transfer_command(), "fit", str(recipe), "--set", f"tracking.run_name=startup-{n}"]
    _, t0, _ = timed(cmd, {**env, "TRANSFER_PROGRESS_FILE": str(progress)}, cwd=scratch)
    start = first_start(progress, scratch / "runs", t0)
    assert start is not None, "the fit wrote no start event"
    return start - t0


def _plain(features: Path, scratch: Path, env: dict) -> float:
    script = scratch / "plain_probe_startup.py"
    script.write_text(PLAIN)
    _, _, out = timed([sys.executable, str(script), str(features)], env, cwd=scratch)
    return json.loads(out.strip().splitlines()[-1])["t_first_epoch"]


def _import_times(scratch: Path, env: dict) -> dict[str, float]:
    script = scratch / "import_times.py"
    script.write_text(IMPORT_TIMES)
    _, _, out = timed([sys.executable, str(script), *IMPORTS], env, cwd=scratch)
    return json.loads(out.strip().splitlines()[-1])


def _print_floor(times: list[dict[str, float]]) -> None:
    med = {name: statistics.median(t[name] for t in times) for name in IMPORTS}
    print("\n| import, in a fresh interpreter (in this order) | median s | needed before training starts |")
    print("|---|---|---|")
    for name, needed in IMPORTS.items():
        print(f"| {name} | {med[name]:.2f} | {'yes' if needed else 'no'} |")
    floor = sum(med[n] for n, needed in IMPORTS.items() if needed)
    total = sum(med.values())
    print(f"\nimports a Lightning loop cannot start without: {floor:.1f} s; all of the above: {total:.1f} s")


def _recipe(scratch: Path, train: Path, val: Path, size: int) -> Path:
    path = scratch / "recipe.yaml"
    path.write_text(
        f"data: {{source: {train}, val_source: {val}, image_size: {size}, cache_dir: {scratch / 'cache'}}}\n"
        f"model: {{backbone: mobilenetv2_100, pretrained: '{WEIGHTS_URI}'}}\n"
        "strategy: {name: linear_probe}\n"
        f"trainer: {{max_epochs: 1, default_root_dir: {scratch / 'runs'}}}\n"
        f"tracking: {{uri: 'sqlite:///{scratch / 'mlflow.db'}'}}\n"
    )
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import os

    import torch

    train, val = benchdata.dataset_dirs("digits", 100, 70, args.size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="fit-startup-") as tmp:
        scratch = Path(tmp)
        recipe = _recipe(scratch, train, val, args.size)
        cold = _ours(recipe, scratch, 0, env)  # fills the feature cache
        features = scratch / "features.pt"
        torch.save({"x": torch.randn(1000, 1280), "y": torch.randint(0, 10, (1000,))}, features)
        ours, plain, imports = [], [], []
        for n in range(1, args.repeats + 1):
            ours.append(_ours(recipe, scratch, n, env))
            plain.append(_plain(features, scratch, env))
            imports.append(_import_times(scratch, env))
    o, b = statistics.median(ours), statistics.median(plain)
    print("| launch to first epoch | median s | runs |\n|---|---|---|")
    print(f"| ours, features not cached yet | {cold:.1f} | 1 |")
    print(f"| ours, cached features | {o:.1f} | {', '.join(f'{t:.1f}' for t in ours)} |")
    print(
        f"| plain script (torch + torchvision imports, features from a file) | {b:.1f} | "
        f"{', '.join(f'{t:.1f}' for t in plain)} |"
    )
    print(f"\nours / plain: x{o / b:.2f}; goal: ours under 5 s ({'met' if o < 5 else 'not met'})")
    _print_floor(imports)


if __name__ == "__main__":
    main()
