"""The page's components, one builder per tab, and its stylesheet; each builder returns its components by name (the
handlers live in :mod:`app.page`, the wiring in :mod:`app.main`).

Places are kept for what later fits will log: the reliability diagram (Evaluate) and the model card (Deploy) stay
hidden until a run has them; the data audit's findings (Data tab) and the backbone ranking (Model tab) are empty until
the visitor asks for them (:mod:`app.data_audit`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from app.backbones import DEFAULT_BACKBONE
from app.runs import RUN_COLUMNS
from transfer import strategies
from transfer.augment import PRESETS
from transfer.optim import OPTIMIZERS

STRATEGY_HELP = strategies.summaries()
BUILTIN_DATASETS = ["builtin:digits", "builtin:lfw_faces"]
TABS = ("1 Data", "2 Model", "3 Train", "4 Evaluate", "5 Deploy", "6 Try it")

# A dropdown's text stops before its arrow; thumbnails keep one size with their captions always shown; the try-it
# image keeps its aspect. (The tabs wrap on a phone rather than hide behind "…": Tabs(overflow_behavior="wrap").)
CSS = """
#backbone input { padding-right: 2.2em !important; text-overflow: ellipsis; }
.tw-progress { display: flex; flex-wrap: wrap; gap: .25em .75em; align-items: baseline; font-size: 1.05em; }
.tw-progress progress { flex: 1 1 100%; height: 1em; }
.tw-elapsed { color: var(--body-text-color-subdued); font-size: .9em; }
.tw-chart svg { max-width: 100%; height: auto; }
.tw-empty { color: var(--body-text-color-subdued); padding: 1em 0; }
.tw-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: .6em; }
.tw-grid figure { margin: 0; text-align: center; }
.tw-grid img { width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated;
  background: var(--background-fill-secondary); border-radius: 4px; }
.tw-grid figcaption { font-size: .85em; overflow-wrap: anywhere; }
#try-image img { object-fit: contain !important; max-height: 320px; }
.tw-findings figure { display: inline-flex; flex-direction: column; vertical-align: top; width: min-content;
  min-width: 200px; margin: 0 .6em .6em 0; }
.tw-findings figure > div { display: flex; gap: 4px; }
.tw-findings img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
  background: var(--background-fill-secondary); border-radius: 4px; }
.tw-findings figcaption { font-size: .85em; overflow-wrap: anywhere; }
"""


def data_tab() -> dict[str, Any]:
    with gr.Tab(TABS[0], id="tab-data"):
        with gr.Row():
            data_zip = gr.File(
                label="A .zip of class folders (cat/1.jpg, dog/2.jpg, …)", file_types=[".zip"], elem_id="data-zip"
            )
            with gr.Column():
                images = gr.File(label="…or drop images", file_count="multiple", file_types=["image"])
                labels = gr.Textbox(label="Their labels, comma-separated, in upload order", placeholder="cat, dog")
            builtin = gr.Dropdown(BUILTIN_DATASETS, label="…or a built-in dataset", value=None, elem_id="builtin")
        load_btn = gr.Button("Load data", variant="primary", elem_id="load-data")
        data_summary = gr.Markdown("No dataset loaded yet.", elem_id="data-summary")
        data_gallery = gr.HTML(elem_id="data-samples")
        with gr.Row():
            audit_btn = gr.Button("Audit my data", elem_id="audit", interactive=False)
            drop_btn = gr.Button("Drop these and use the cleaned copy", elem_id="drop-findings", interactive=False)
        data_audit = gr.HTML(elem_id="data-audit")  # the data audit's findings (app.data_audit), once it has run
        limits_md = gr.Markdown(elem_id="limits")
    return locals()


def model_tab(choices: list[tuple[str, str]]) -> dict[str, Any]:
    with gr.Tab(TABS[1], id="tab-model"):
        backbone = gr.Dropdown(
            choices, value=DEFAULT_BACKBONE, label="Backbone (★ recommended to start)", elem_id="backbone"
        )
        backbone_md = gr.Markdown(elem_id="backbone-info")
        recommend_btn = gr.Button("Recommend a backbone (measured on my data)", elem_id="recommend", interactive=False)
        recommend_md = gr.Markdown(elem_id="recommend-table")
        strategy = gr.Radio(list(STRATEGY_HELP), value="auto", label="Strategy", elem_id="strategy")
        strategy_md = gr.Markdown(STRATEGY_HELP["auto"])
        with gr.Row():
            epochs = gr.Slider(1, 50, value=3, step=1, label="Epochs", elem_id="epochs")
            image_size = gr.Slider(32, 384, value=96, step=16, label="Image size (px)", elem_id="image-size")
            lr = gr.Dropdown(
                ["auto", "1e-3", "3e-3", "3e-4", "1e-4"],
                value="1e-3",
                allow_custom_value=True,
                label="Learning rate (the head's; auto: Lightning's LR finder picks it)",
                elem_id="lr",
            )
        with gr.Accordion("Advanced", open=False, elem_id="advanced"):
            use_pretrained = gr.Checkbox(
                value=True, label="Start from pretrained ImageNet weights", elem_id="pretrained"
            )
            weights_file = gr.File(
                label="…or your own weights file for this backbone (.pth, .safetensors)",
                file_types=[".pth", ".pt", ".safetensors", ".bin"],
                elem_id="weights-file",
            )
            weights_md = gr.Markdown(elem_id="weights-info")
            batch_size = gr.Slider(4, 256, value=32, step=4, label="Batch size", elem_id="batch-size")
            augment = gr.Radio(list(PRESETS), value="light", label="Augmentation")
            optimizer = gr.Radio(list(OPTIMIZERS), value="adamw", label="Optimizer")
            val_split = gr.Slider(0.1, 0.5, value=0.2, step=0.05, label="Validation fraction")
            max_per_class = gr.Number(
                value=0, precision=0, label="At most this many images per class (0: all)", elem_id="max-per-class"
            )
    return locals()


def train_tab() -> dict[str, Any]:
    with gr.Tab(TABS[2], id="tab-train"):
        train_plan = gr.Markdown(elem_id="train-plan")
        with gr.Row():
            train_btn = gr.Button("Train", variant="primary", elem_id="train", interactive=False)
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", interactive=False)
            resume_btn = gr.Button("Resume", elem_id="resume", interactive=False)
        progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            loss_plot = gr.HTML(elem_id="loss-chart")
            acc_plot = gr.HTML(elem_id="acc-chart")
        run_md = gr.Markdown(elem_id="run-info")
        with gr.Accordion("Your runs", open=True):
            runs_table = gr.Dataframe(
                headers=RUN_COLUMNS, value=[], interactive=False, elem_id="runs", label="Your runs, newest first"
            )
            with gr.Row():
                run_pick = gr.Dropdown([], label="Open a run in Evaluate and Deploy", elem_id="run-pick", scale=3)
                open_btn = gr.Button("Open", elem_id="open-run", interactive=False, scale=1)
        finished_run = gr.Textbox(visible=False, elem_id="finished-run")  # changes when a run ends: evaluate it
    return locals()


def evaluate_tab() -> dict[str, Any]:
    with gr.Tab(TABS[3], id="tab-evaluate"):
        eval_md = gr.Markdown("Train a model, or open a finished run, to see its evaluation.", elem_id="eval-summary")
        with gr.Row():
            confusion = gr.Image(label="Confusion matrix", type="pil", elem_id="confusion", interactive=False)
            reliability = gr.Image(label="Reliability diagram", type="pil", visible=False, interactive=False)
        per_class = gr.Dataframe(
            headers=["class", "accuracy", "images"], value=[], label="Per-class accuracy", elem_id="per-class"
        )
        gr.Markdown("**Worst mistakes** — true → predicted (score), most confident first")
        mistakes = gr.HTML(elem_id="mistakes")
    return locals()


def deploy_tab() -> dict[str, Any]:
    with gr.Tab(TABS[4], id="tab-deploy"):
        deploy_for = gr.Markdown(elem_id="deploy-for")
        with gr.Row():
            reg_name = gr.Textbox(label="Registered model name (yours alone)", elem_id="reg-name")
            reg_alias = gr.Textbox(value="champion", label="Alias", elem_id="reg-alias")
        if_better = gr.Checkbox(value=True, label="Move the alias only if this model's val_acc is better")
        deploy_btn = gr.Button("Register in MLflow", variant="primary", elem_id="deploy", interactive=False)
        deploy_md = gr.Markdown(elem_id="deploy-info")
        card_md = gr.Markdown(visible=False, elem_id="model-card")  # the fit's model card, when it logs one
        with gr.Row():
            recipe_file = gr.File(label="Recipe (repeat with `transfer fit`)", elem_id="recipe-file")
            export_btn = gr.Button("Export ONNX", interactive=False, elem_id="export")
            export_file = gr.File(label="Exported model")
    return locals()


def try_tab() -> dict[str, Any]:
    with gr.Tab(TABS[5], id="tab-try"):
        try_model = gr.Dropdown([], label="Your deployed model", elem_id="try-model", allow_custom_value=True)
        with gr.Row():
            try_img = gr.Image(type="filepath", label="An image", elem_id="try-image", height=320)
            with gr.Column():
                try_btn = gr.Button("Classify", variant="primary", elem_id="try", interactive=False)
                try_label = gr.Label(num_top_classes=5, label="The deployed model says", elem_id="try-label")
                try_md = gr.Markdown(elem_id="try-info")
    return locals()


def page(choices: list[tuple[str, str]]) -> SimpleNamespace:
    """Every tab's components, by name."""
    gr.Markdown(
        "# Transfer workbench\nFine-tune a classic CNN on your images, then deploy it to the MLflow registry.",
        elem_id="title",
    )
    parts: dict[str, Any] = {}
    with gr.Tabs(elem_id="tabs", overflow_behavior="wrap"):
        parts.update(data_tab())
        parts.update(model_tab(choices))
        parts.update(train_tab())
        parts.update(evaluate_tab())
        parts.update(deploy_tab())
        parts.update(try_tab())
    return SimpleNamespace(**parts)
