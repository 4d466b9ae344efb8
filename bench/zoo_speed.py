"""Forward speed of native zoo models vs timm's with the same weights, measured alternately in one run.

    python bench/zoo_speed.py                  # one model per family that timm has
    python bench/zoo_speed.py --all --batch 4  # every model with a timm counterpart

Prints, per model, the median forward time of each and the ratio native/timm (goal: <= 1.05).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo
from zoo._weights import load_into

_log = logging.getLogger("bench.zoo_speed")


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    spec = zoo.get_spec(name)
    ref = timm.create_model(spec.timm.split(".")[0], pretrained=False, **spec.timm_kwargs).eval()
    native = zoo.create_model(name).eval()
    load_into(native, spec, zoo.convert_state_dict(name, ref.state_dict(), "timm"))
    return native, ref


def _time_once(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def bench(name: str, batch: int, size: int | None, reps: int) -> tuple[float, float, float]:
    """Median native and timm forward seconds (alternating runs) and the largest output difference."""
    spec = zoo.get_spec(name)
    native, ref = _pair(name)
    side = size or spec.input_size[1]
    x = torch.randn(batch, 3, side, side)
    with torch.inference_mode():
        diff = float((native(x) - ref(x)).abs().max())  # also the warm-up
        t_native, t_ref = [], []
        for i in range(reps):
            # alternate which goes first so neither profits from the other's cache state
            first, second = ((native, t_native), (ref, t_ref)) if i % 2 == 0 else ((ref, t_ref), (native, t_native))
            first[1].append(_time_once(first[0], x))
            second[1].append(_time_once(second[0], x))
    return statistics.median(t_native), statistics.median(t_ref), diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="every model with a timm counterpart, not one per family")
    p.add_argument("--models", nargs="*", help="explicit model names")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="input side (default: the model's input size)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    candidates = [n for n in zoo.list_models() if zoo.get_spec(n).timm]
    if args.models:
        names = [zoo.resolve_name(n) for n in args.models]
    elif args.all:
        names = candidates
    else:
        by_family: dict[str, str] = {}
        for n in candidates:
            by_family.setdefault(zoo.get_spec(n).family, n)
        names = list(by_family.values())

    _log.info("torch %s, %d threads, batch %d", torch.__version__, torch.get_num_threads(), args.batch)
    _log.info(f"{'model':<22} {'family':<12} {'native ms':>10} {'timm ms':>10} {'ratio':>7} {'max |diff|':>11}")
    ratios = []
    for name in names:
        t_n, t_r, diff = bench(name, args.batch, args.size, args.reps)
        ratios.append(t_n / t_r)
        family = zoo.get_spec(name).family
        _log.info(f"{name:<22} {family:<12} {t_n * 1e3:>10.1f} {t_r * 1e3:>10.1f} {t_n / t_r:>7.3f} {diff:>11.2e}")
    _log.info("geometric mean native/timm: %.3f (goal <= 1.05)", statistics.geometric_mean(ratios))


if __name__ == "__main__":
    main()
