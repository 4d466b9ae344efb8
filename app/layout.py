"""The page's components, one builder per tab; each returns its components by name (the handlers live in
:mod:`app.main`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

import zoo
from transfer import strategies
from transfer.augment import PRESETS
from transfer.optim import OPTIMIZERS

STRATEGY_HELP = strategies.summaries()
BUILTIN_DATASETS = ["builtin:digits", "builtin:lfw_faces"]
DEFAULT_BACKBONE = "mobilenetv2_100"


def backbone_choices() -> list[tuple[str, str]]:
    out = []
    for name in zoo.list_models():
        s = zoo.get_spec(name)
        weights = "+".join(s.weight_sources) or "no weights"
        out.append((f"{name}  ({s.num_params / 1e6:.1f}M params, {weights})", name))
    return out


def backbone_info(name: str) -> str:
    s = zoo.get_spec(name)
    macs = f"{s.paper_macs / 1e9:.2f} GMACs (paper)" if s.paper_macs else "MACs: see `transfer zoo info`"
    weights = ", ".join(s.weight_sources) or "none: trains from scratch"
    offline = " An ImageNet checkpoint ships offline for this model." if name == DEFAULT_BACKBONE else ""
    return (
        f"**{s.name}** — {s.paper} ({s.year}). {s.num_params / 1e6:.1f}M parameters, {macs}, input "
        f"{s.input_size[1]}px. Pretrained weights: {weights}.{offline}"
    )


def data_tab() -> dict[str, Any]:
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
    return locals()


def model_tab() -> dict[str, Any]:
    with gr.Tab("2. Model"):
        backbone = gr.Dropdown(backbone_choices(), value=DEFAULT_BACKBONE, label="Backbone", elem_id="backbone")
        backbone_md = gr.Markdown(backbone_info(DEFAULT_BACKBONE))
        strategy = gr.Radio(list(STRATEGY_HELP), value="auto", label="Strategy", elem_id="strategy")
        strategy_md = gr.Markdown(STRATEGY_HELP["auto"])
        with gr.Row():
            epochs = gr.Slider(1, 50, value=3, step=1, label="Epochs", elem_id="epochs")
            image_size = gr.Slider(32, 384, value=96, step=16, label="Image size (px)")
            lr = gr.Number(value=1e-3, label="Learning rate (at batch 256)")
        with gr.Accordion("Advanced", open=False):
            use_pretrained = gr.Checkbox(value=True, label="Start from pretrained ImageNet weights")
            batch_size = gr.Slider(4, 256, value=32, step=4, label="Batch size")
            augment = gr.Radio(list(PRESETS), value="light", label="Augmentation")
            optimizer = gr.Radio(list(OPTIMIZERS), value="adamw", label="Optimizer")
            val_split = gr.Slider(0.1, 0.5, value=0.2, step=0.05, label="Validation fraction")
            max_per_class = gr.Number(value=0, precision=0, label="At most this many images per class (0: all)")
    return locals()


def train_tab() -> dict[str, Any]:
    with gr.Tab("3. Train"):
        with gr.Row():
            train_btn = gr.Button("Train", variant="primary", elem_id="train")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
        progress_md = gr.Markdown(elem_id="train-progress")
        with gr.Row():
            loss_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss", height=240)
            acc_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Validation accuracy / F1", height=240)
        run_md = gr.Markdown(elem_id="run-info")
    return locals()


def evaluate_tab() -> dict[str, Any]:
    with gr.Tab("4. Evaluate"):
        eval_md = gr.Markdown(elem_id="eval-summary")
        confusion = gr.Image(label="Confusion matrix", type="filepath", elem_id="confusion")
        per_class = gr.Dataframe(label="Per-class accuracy")
        mistakes = gr.Gallery(label="Worst mistakes (true → predicted, score)", columns=6, height=260)
    return locals()


def deploy_tab() -> dict[str, Any]:
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
    return locals()


def try_tab() -> dict[str, Any]:
    with gr.Tab("6. Try it"):
        try_img = gr.Image(type="filepath", label="An image", elem_id="try-image")
        try_btn = gr.Button("Classify with the deployed model", variant="primary", elem_id="try")
        try_label = gr.Label(num_top_classes=5, label="Deployed model says", elem_id="try-label")
        try_md = gr.Markdown()
    return locals()


def page() -> SimpleNamespace:
    """Every tab's components, by name."""
    gr.Markdown("# Transfer workbench\nFine-tune a classic CNN on your images, then deploy it to the MLflow registry.")
    parts: dict[str, Any] = {}
    for tab in (data_tab, model_tab, train_tab, evaluate_tab, deploy_tab, try_tab):
        parts.update(tab())
    return SimpleNamespace(**parts)
