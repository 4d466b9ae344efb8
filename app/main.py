"""The web page: upload a small dataset, pick a backbone, train, evaluate, deploy and try the classifier.

``transfer app`` (or ``python -m app``) serves it on http://127.0.0.1:7860 and prints that URL. The page holds no
training logic: it writes an ordinary recipe into the visitor's work folder and runs ``transfer fit`` on it in a
process of its own; results are read back from the run's files and from MLflow.

Safe to share, by default:

- **Who**: with ``--auth user:password`` each user is a visitor; without it each browser is one (a random id the
  server signs, kept in localStorage, so a reload or a restart keeps it). A visitor's work folder, runs and
  registered models are theirs alone: deploying under a name someone else owns is refused, and "Try it" lists and
  loads only the visitor's own models. Listening beyond loopback (``--host 0.0.0.0``, ``--share``) is refused
  without ``--auth`` unless ``--no-auth`` says the network is private.
- **Limits** (:mod:`app.limits`; ``--limit NAME=VALUE``): uploads up to 200 MB, a zip expanding to at most 1 GB and
  20,000 files; 1 training at a time per visitor and 2 on the server; backbones up to 30M parameters; a training
  stops 15 minutes after its visitor's last page closed (a reload reattaches before that), Cancel stops it within
  seconds (killed after 20 s); work folders are deleted after 24 h without a visit; Gradio's file cache is swept
  hourly of files older than a day.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from app import data_audit, layout
from app.layout import STRATEGY_HELP
from app.limits import Limits
from app.page import Page, handoff_dir, sweep_handoff
from app.visitors import check_exposure, check_port, credentials_of
from transfer.tracking import TrackingStore, quiet_mlflow

_log = logging.getLogger(__name__)

STORAGE_KEY = "transfer-workbench-visitor"
TICK_S = 1.0


def _settings(ui: Any) -> list[Any]:
    return [
        ui.backbone,
        ui.strategy,
        ui.epochs,
        ui.image_size,
        ui.lr,
        ui.use_pretrained,
        ui.batch_size,
        ui.augment,
        ui.optimizer,
        ui.val_split,
        ui.max_per_class,
    ]


def _run_outputs(ui: Any) -> list[Any]:
    """Everything :meth:`Page._run_outputs` may update."""
    return [
        ui.timer,
        ui.cancel_btn,
        ui.progress,
        ui.loss_plot,
        ui.acc_plot,
        ui.run_md,
        ui.runs_table,
        ui.run_pick,
        ui.open_btn,
        ui.finished_run,
        ui.deploy_btn,
        ui.export_btn,
        ui.recipe_file,
        ui.train_btn,
        ui.resume_btn,
    ]


def _wire(ui: Any, page: Page, demo: gr.Blocks) -> None:
    settings, runs = _settings(ui), _run_outputs(ui)
    plan = {"fn": page.on_plan, "inputs": [ui.state, *settings], "outputs": [ui.train_plan, ui.train_btn]}
    hidden: dict[str, Any] = {"api_visibility": "undocumented", "show_progress": "hidden"}
    load_outputs = [ui.state, ui.token, ui.limits_md, ui.backbone, ui.reg_name, ui.data_summary, ui.data_gallery]
    load_outputs += [*runs, ui.try_model, ui.try_btn, *settings]
    loaded = demo.load(page.on_page_load, [ui.token], load_outputs, api_visibility="private")
    loaded.then(**plan, api_visibility="private").then(
        page.on_backbone, [ui.backbone, ui.image_size, ui.state], ui.backbone_md, api_visibility="private"
    )
    demo.unload(page.on_page_unload)

    # One source at a time: choosing one clears the others, so Load never picks a source the visitor left behind.
    ui.data_zip.upload(lambda: (None, None), None, [ui.images, ui.builtin], **hidden)
    ui.images.upload(lambda: (None, None), None, [ui.data_zip, ui.builtin], **hidden)
    ui.builtin.input(lambda: (None, None), None, [ui.data_zip, ui.images], **hidden)
    data_in = [ui.data_zip, ui.images, ui.labels, ui.builtin, ui.state]
    data_loaded = ui.load_btn.click(
        page.on_load_data, data_in, [ui.state, ui.data_summary, ui.data_gallery], api_name="load_data"
    )
    data_loaded.then(**plan, **hidden)
    data_audit.wire(ui, data_audit.DataChecks(page), settings, plan, [loaded, data_loaded])
    gr.on(
        [ui.strategy.change, ui.epochs.change, ui.image_size.change, ui.use_pretrained.change],
        **plan,
        **hidden,
    )
    gr.on(
        [ui.backbone.change, ui.image_size.change],
        page.on_backbone,
        [ui.backbone, ui.image_size, ui.state],
        ui.backbone_md,
        **hidden,
    ).then(**plan, **hidden)
    ui.strategy.change(lambda k: STRATEGY_HELP.get(k, ""), ui.strategy, ui.strategy_md, **hidden)
    ui.weights_file.change(
        page.on_weights_file, [ui.weights_file, ui.backbone, ui.state], ui.weights_md, **hidden
    ).then(**plan, **hidden)

    eval_outputs = [ui.state, ui.eval_md, ui.confusion, ui.reliability, ui.per_class, ui.mistakes, ui.deploy_for]
    train_outputs = [ui.train_plan, *runs, *eval_outputs]
    ui.train_btn.click(page.on_train, [ui.state, *settings], train_outputs, api_name="train")
    ui.timer.tick(page.on_tick, ui.state, runs, concurrency_limit=None, **hidden)
    ui.cancel_btn.click(page.on_cancel, ui.state, runs, api_name="cancel")
    ui.resume_btn.click(page.on_resume, ui.state, runs, api_name="resume")
    ui.open_btn.click(page.on_open_run, [ui.run_pick, ui.state], runs, api_name="open_run")
    ui.watch_btn.click(page.on_watch, ui.state, [ui.api_progress, ui.run_md], api_name="watch")
    ui.finished_run.change(page.on_evaluate, ui.state, [*eval_outputs, ui.card_md], api_name="evaluate")
    ui.deploy_btn.click(
        page.on_deploy,
        [ui.reg_name, ui.reg_alias, ui.if_better, ui.state],
        [ui.state, ui.deploy_md, ui.try_model, ui.try_btn],
        api_name="deploy",
    )
    ui.export_btn.click(page.on_export, ui.state, ui.export_file, api_name="export")
    ui.try_btn.click(
        page.on_try, [ui.try_img, ui.try_model, ui.state], [ui.state, ui.try_label, ui.try_md], api_name="try"
    )


def build_page(
    base: str | Path = "app-data",
    tracking_uri: str | None = None,
    mlflow_ui: str | None = None,
    limits: Limits | None = None,
) -> tuple[gr.Blocks, Page]:
    """The Gradio Blocks page and its handlers. ``base`` holds the work folders and, by default, the MLflow store."""
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    limits = limits or Limits.from_settings()
    store = TrackingStore(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}")
    # Create (or migrate) the store once, now: runs started by two visitors at once would otherwise race to
    # create the same SQLite schema.
    with quiet_mlflow():
        store.check().client.search_experiments(max_results=1)
    page = Page(base, store, limits, mlflow_ui or os.environ.get("TRANSFER_MLFLOW_UI"))
    secret = page.tokens.derived("browser-state")  # stable across restarts: a reload after one keeps the visitor
    with gr.Blocks(title="Transfer workbench", delete_cache=limits.delete_cache) as demo:
        ui = layout.page(page.backbones.choices())
        ui.state = gr.State(None)
        ui.token = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=secret)
        ui.timer = gr.Timer(TICK_S, active=False)
        ui.api_progress = gr.Textbox(visible=False)
        ui.watch_btn = gr.Button(visible=False)
        page.ui = ui
        _wire(ui, page, demo)
    return demo, page


def build_app(
    base: str | Path = "app-data",
    tracking_uri: str | None = None,
    mlflow_ui: str | None = None,
    limits: Limits | None = None,
) -> gr.Blocks:
    """The Gradio Blocks page (see :func:`build_page`)."""
    return build_page(base, tracking_uri, mlflow_ui, limits)[0]


def _where(host: str, port: int, share_url: str | None, credentials: tuple[str, str] | None) -> str:
    """The page's address, as a person types it."""
    url = f"http://{'127.0.0.1' if host == 'localhost' else host}:{port}/"
    if host in ("0.0.0.0", "::"):
        url += f" (all interfaces; on this machine http://127.0.0.1:{port}/)"
    if share_url:
        url += f" and {share_url}"
    return url + (", password required" if credentials else "")


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    auth: str | None = None,
    base: str | Path | None = None,
    no_auth: bool = False,
    limits: Limits | None = None,
) -> None:
    """Serve the page (blocking) and print its URL; on exit, stop the trainings it started (they stay resumable).

    Args:
        host: the interface to listen on; beyond loopback needs ``auth`` or ``no_auth``.
        port: the port.
        share: a public Gradio share link (needs ``auth`` or ``no_auth``).
        auth: ``user:password`` (or the ``TRANSFER_APP_AUTH`` variable).
        base: the data folder (or ``TRANSFER_APP_DIR``; default ``app-data``).
        no_auth: serve beyond loopback without a password, on purpose.
        limits: the page's limits (default: :meth:`Limits.from_settings`).

    Raises:
        UserError: an exposed host without auth, a malformed ``auth``, or an address it cannot listen on.
    """
    auth = auth or os.environ.get("TRANSFER_APP_AUTH")
    check_exposure(host, share, auth, no_auth)
    check_port(host, port)
    credentials = credentials_of(auth)
    base = Path(base or os.environ.get("TRANSFER_APP_DIR", "app-data"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str((base / "gradio-tmp").resolve()))
    limits = limits or Limits.from_settings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests are not news
    demo, page = build_page(base, limits=limits)
    handoff = handoff_dir(page.base)
    sweep_also = lambda: sweep_handoff(handoff, limits.cache_ttl_s)  # noqa: E731
    page.supervisor.start_sweeping(page.presence.gone_for, page.base / "sessions", also=sweep_also)
    demo.queue(default_concurrency_limit=8).launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=credentials,
        max_file_size=f"{limits.upload_mb}mb",
        quiet=True,
        prevent_thread_lock=True,
        css=layout.CSS,
        footer_links=["api", "gradio", "settings", "runs"],
    )
    print(f"transfer app: serving on {_where(host, demo.server_port, demo.share_url, credentials)}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.supervisor.close()
        page.supervisor.stop_all()
        shutil.rmtree(handoff, ignore_errors=True)
        demo.close()
