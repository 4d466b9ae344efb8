"""The ``transfer`` command line: ``fit``, ``predict``, ``export``, ``zoo``, ``app``, ``audit``, ``recommend``.

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from transfer.errors import UserError

_log = logging.getLogger("transfer")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _zoo_list(args: argparse.Namespace) -> int:
    import zoo

    names = zoo.list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; try `transfer zoo list` for all of them")
    rows = []
    for name in names:
        s = zoo.get_spec(name)
        rows.append((s.name, s.family, _fmt_params(s.num_params), str(s.year), s.paper, ", ".join(s.weight_sources)))
    if args.json:
        keys = ("name", "family", "params", "year", "paper", "weights")
        print(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))
        return 0
    header = ("name", "family", "params", "year", "paper", "weights")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[4] = min(widths[4], 60)
    for r in [header, *rows]:
        cells = [c if len(c) <= w else c[: w - 1] + "~" for c, w in zip(r, widths)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return 0


def _zoo_info(args: argparse.Namespace) -> int:
    import zoo

    try:
        spec = zoo.get_spec(args.name)
    except zoo.UnknownModelError as exc:
        raise UserError(str(exc)) from exc
    info = {
        "name": spec.name,
        "family": spec.family,
        "paper": spec.paper,
        "arxiv": spec.arxiv,
        "year": spec.year,
        "params": spec.num_params,
        "weights": {"timm": spec.timm, "torchvision": spec.torchvision},
        "input_size": list(spec.input_size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "paper_params": spec.paper_params,
        "paper_macs": spec.paper_macs,
        "aliases": list(spec.aliases),
    }
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a service manager's (or the web page's) SIGTERM stops a fit as Ctrl+C does


def _fit(args: argparse.Namespace) -> int:
    import signal

    from transfer.train import fit

    if args.resume and args.restart:
        raise UserError("--resume continues the interrupted run, --restart replaces it: give one of them")
    # Handled whatever the parent's signal mask: a fit started under nohup (SIGINT ignored) still stops cleanly.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    result = fit(args.recipe, overrides=args.set, resume=args.resume, restart=args.restart)
    if result.rank:  # under DDP, rank zero reports for every rank
        return 0
    print("\n".join(f"{key}: {value}" for key, value in summary(result)))
    return 0


def summary(result: Any) -> list[tuple[str, str]]:
    """What a fit says at its end, as ``key: value`` lines a person reads (and a script can parse)."""
    m = result.metrics
    lines = [("run_id", result.run_id), ("model_uri", result.model_uri)]
    if result.registered_uri:
        lines.append(("registered", result.registered_uri))
        lines.append(("alias", "moved to this version" if result.promoted else "left where it was"))
    lines.append(("strategy", f"{result.strategy} ({result.strategy_reason})"))
    if "val_acc" in m:
        interval = f"95% interval {m.get('val_acc_low', 0):.3f}-{m.get('val_acc_high', 1):.3f}"
        lines.append(("val_acc", f"{m['val_acc']:.3f} ({interval}, {result.params.get('val_size', '?')} images)"))
    if "val_f1" in m:
        lines.append(("val_f1", f"{m['val_f1']:.3f}"))
    if result.seconds:
        lines.append(("time", f"{result.seconds:.0f} s ({result.seconds_to_first_epoch:.0f} s before the first epoch)"))
    return lines


def _lr_find(args: argparse.Namespace) -> int:
    from transfer.lr_find import run

    finding, run_id = run(args.recipe, overrides=args.set, plot_path=args.plot)
    print(f"suggested learning rate: {finding.suggestion:.3g} for the head (optim.lr: {finding.base_lr:.3g})")
    print(f"set optim.lr: {finding.base_lr:.3g} in the recipe, or optim.lr: auto to find it at every fit")
    print(f"plot: runs:/{run_id}/lr_find.png" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from transfer.audit import audit_target
    from transfer.audit.report import table, write

    report, _ = audit_target(
        args.target,
        val_source=args.val_source,
        backbone=args.backbone,
        pretrained=args.pretrained,
        overrides=args.set,
        curves=not args.no_curves,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    if args.report:
        write(report, args.report)
    print(table(report))
    return report.exit_code  # 1: problems found


def _recommend(args: argparse.Namespace) -> int:
    from transfer.audit import recipe_for
    from transfer.recommend import BUDGET_S, log_recommendation, parse_candidate, recommend, table
    from transfer.tracking import TrackingStore

    if args.budget is not None and not args.budget > 0:  # NaN too; inf is "no limit"
        raise UserError(f"--budget {args.budget:g}: give the seconds of measuring, a number above 0")
    recipe = recipe_for(args.source, overrides=args.set)
    candidates = [parse_candidate(c) for c in args.candidate] or None
    rec = recommend(recipe, candidates, budget_s=BUDGET_S if args.budget is None else args.budget)
    store = TrackingStore(args.tracking_uri) if args.tracking_uri else TrackingStore.for_recipe(recipe)
    run_id = log_recommendation(store.check(), rec, recipe.tracking.experiment)
    if args.json:
        Path(args.json).write_text(json.dumps(rec.to_dict(), indent=1))
    print(table(rec))
    print(f"logged: MLflow run {run_id} in {store.uri}")
    return 0 if rec.best else 1


def _data_commands(sub: Any) -> None:
    """``transfer audit`` and ``transfer recommend``."""
    au = sub.add_parser("audit", help="check a dataset: duplicates, leaks, label errors, outliers, balance")
    au.add_argument("target", help="a recipe YAML, or a data source (folder, .zip, .csv, hf:NAME, builtin:NAME)")
    au.add_argument("--val-source", default=None, help="a separate validation source (with a data source)")
    au.add_argument("--backbone", default=None, help="the backbone whose features are used (default mobilenetv2_100)")
    au.add_argument("--pretrained", default=None, help="its weights: true, false, timm, torchvision or a file")
    au.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    au.add_argument("--json", default=None, metavar="PATH", help="write the findings as JSON")
    au.add_argument("--report", default=None, metavar="PATH", help="write an .html or .md report with thumbnails")
    au.add_argument("--no-curves", action="store_true", help="skip the learning curves (faster)")
    au.set_defaults(func=_audit)
    rc = sub.add_parser("recommend", help="rank backbones on your data by how well their features fit it")
    rc.add_argument("source", help="a data source or a recipe YAML")
    rc.add_argument(
        "--candidate", action="append", default=[], metavar="NAME[=WEIGHTS]", help="a candidate (default: all cached)"
    )
    rc.add_argument("--budget", type=float, default=None, help="seconds of measuring (default 900)")
    rc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    rc.add_argument("--json", default=None, metavar="PATH", help="write the ranking as JSON")
    rc.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for the ranking's run")
    rc.set_defaults(func=_recommend)


def _predict(args: argparse.Namespace) -> int:
    from transfer.deploy.predict import predict_paths
    from transfer.tracking import TrackingStore

    df = predict_paths(args.model_uri, args.images, TrackingStore(args.tracking_uri))
    if args.json:
        print(df.to_json(orient="records", indent=1))
    else:
        cols = [c for c in ("path", "label", "score", "unknown", "ood_score", "error") if c in df.columns]
        print(df[cols].to_string(index=False))
    return 0


def _export(args: argparse.Namespace) -> int:
    from transfer.deploy.export import export_model
    from transfer.tracking import TrackingStore

    out = export_model(args.model_uri, args.format, args.output, TrackingStore(args.tracking_uri), int8=args.int8)
    print(f"exported: {out}")
    return 0


def _app(args: argparse.Namespace) -> int:
    import os
    import signal

    from app.limits import Limits
    from app.visitors import check_exposure, check_port

    # Bad limits, an exposed host without auth, a port in use: exit 2 at once, before Gradio and MLflow are imported.
    limits = Limits.from_settings(args.limit)
    check_exposure(args.host, args.share, args.auth or os.environ.get("TRANSFER_APP_AUTH"), args.no_auth)
    check_port(args.host, args.port)
    from app.main import launch

    # A service manager's SIGTERM stops the page as Ctrl+C does: its trainings are cancelled and stay resumable.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    launch(
        host=args.host,
        port=args.port,
        share=args.share,
        auth=args.auth,
        no_auth=args.no_auth,
        base=args.data_dir,
        limits=limits,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``transfer`` command."""
    p = argparse.ArgumentParser(prog="transfer", description="Transfer learning for image classification.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fine-tune from a YAML recipe")
    f.add_argument("recipe", help="path to a recipe YAML (see recipes/)")
    f.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.backbone=resnet50"
    )
    f.add_argument("--resume", action="store_true", help="continue the last unfinished run of this recipe")
    f.add_argument(
        "--restart", action="store_true", help="start over an unfinished run (its files are kept in previous/)"
    )
    f.set_defaults(func=_fit)

    lf = sub.add_parser("lr-find", help="find a learning rate for a recipe (Lightning's LR finder)")
    lf.add_argument("recipe", help="path to a recipe YAML")
    lf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.batch_size=64")
    lf.add_argument("--plot", default=None, help="also write the loss-vs-rate plot to this PNG file")
    lf.set_defaults(func=_lr_find)

    _data_commands(sub)
    pr = sub.add_parser("predict", help="classify images with a logged or registered model")
    pr.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a local model dir")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--json", action="store_true", help="print JSON records")
    pr.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    pr.set_defaults(func=_predict)

    ex = sub.add_parser("export", help="export a model to ONNX or TorchScript")
    ex.add_argument("model_uri")
    ex.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    ex.add_argument("--output", "-o", default=None, help="output file")
    ex.add_argument("--tracking-uri", default=None)
    ex.add_argument(
        "--int8", action="store_true", help="onnx: int8 (static quantisation calibrated on the run's training images)"
    )
    ex.set_defaults(func=_export)

    z = sub.add_parser("zoo", help="the model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="list architectures")
    zl.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    zl.add_argument("--json", action="store_true")
    zl.set_defaults(func=_zoo_list)
    zi = zsub.add_parser("info", help="details of one architecture")
    zi.add_argument("name")
    zi.add_argument("--json", action="store_true")
    zi.set_defaults(func=_zoo_info)

    a = sub.add_parser("app", help="serve the web page")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=7860)
    a.add_argument("--share", action="store_true")
    a.add_argument("--auth", default=None, help="user:password (or set TRANSFER_APP_AUTH)")
    a.add_argument(
        "--no-auth", action="store_true", help="serve beyond loopback without a password (a private network only)"
    )
    a.add_argument("--data-dir", default=None, help="work folders and the default MLflow store (default: app-data)")
    a.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE", help="change a limit, e.g. trainings_total=4"
    )
    a.set_defaults(func=_app)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``transfer`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from zoo.errors import ZooError

    try:
        return args.func(args)
    except (UserError, ZooError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def console() -> NoReturn:
    """The ``transfer`` command (and ``python -m transfer``): :func:`main`, then a quick exit.

    With Lightning and MLflow imported, the interpreter's last garbage collection took 1.3 s of every command's
    exit on this machine (1.59 s from the last statement to the exit, 0.25 s with the collector's objects frozen):
    memory the OS takes back anyway. Exit handlers still run (logging's flush, temporary folders); only the
    command does this, never :func:`main`, which tests and other programs call.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
