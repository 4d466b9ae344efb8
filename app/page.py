"""The page's handlers: each reads the visitor's work folder and their runs from disk and says what to show.

Nothing here lives only in the browser tab or in a handler's loop: a visitor's dataset, runs and current run are
files (:mod:`app.session`, :mod:`app.runs`), and the training processes belong to the server
(:class:`app.supervisor.Supervisor`). So a reload, a second tab or a lost connection finds everything where it was;
the progress is polled by a timer that the page starts whenever the visitor's current run is alive.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from app import evaluate as ev
from app.backbones import Backbones
from app.layout import STRATEGY_HELP
from app.limits import Limits
from app.runs import FINISHED, STATUS_WORDS, RunFolder, scrub
from app.session import Dataset, Session, safe_name
from app.supervisor import Supervisor
from app.views import curves_html, message_html, progress_html, progress_words, thumb_grid
from app.visitors import Presence, Tokens, Visitor
from transfer.errors import UserError
from transfer.rundir import RESUMABLE, RUNNING
from transfer.tracking import TrackingStore

_log = logging.getLogger(__name__)


APP_EXPERIMENT = "app"  # the MLflow experiment of everything the page logs (runs are told apart by owner)


def handoff_dir(base: Path) -> Path:
    """Where a page hands files to Gradio: the system's temporary folder (Gradio takes files from there and serves
    its own copy, so no work-folder path is ever handed out), one folder per data folder."""
    import hashlib

    return Path(tempfile.gettempdir()) / f"transfer-app-{hashlib.sha256(str(base).encode()).hexdigest()[:12]}"


def sweep_handoff(folder: Path, max_age_s: float) -> None:
    """Delete the files handed to Gradio from ``folder`` more than ``max_age_s`` ago."""
    import time

    cutoff = time.time() - max_age_s
    for sub in folder.iterdir() if folder.is_dir() else ():
        if sub.stat().st_mtime < cutoff:
            shutil.rmtree(sub, ignore_errors=True)


@dataclass
class Conn:
    """One connection's state (a browser tab, or a ``gradio_client``): who it is, and what it was last sent."""

    visitor: Visitor
    sent: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """The Model tab's settings, in the order the Train button passes them."""

    backbone: str
    strategy: str
    epochs: int
    image_size: int
    lr: float | str
    use_pretrained: bool
    batch_size: int
    augment: str
    optimizer: str
    val_split: float
    max_per_class: int

    @classmethod
    def of(cls, *values: Any) -> Settings:
        bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc = values
        return cls(bb, strat, int(ep), int(size), _lr(lr), bool(pre), int(bs), aug, opt, float(vs), int(mpc or 0))

    def recipe(self, pretrained: bool | str, tracking_uri: str) -> dict[str, Any]:
        """The recipe these settings make (the data source is the session's)."""
        data = {"image_size": self.image_size, "augment": self.augment, "batch_size": self.batch_size}
        data |= {"val_split": self.val_split, "num_workers": 0}
        if self.max_per_class > 0:
            data["max_per_class"] = self.max_per_class
        return {
            "data": data,
            "model": {"backbone": self.backbone, "pretrained": pretrained},
            "strategy": {"name": self.strategy},
            "optim": {"name": self.optimizer, "lr": self.lr},
            "trainer": {"max_epochs": self.epochs, "accelerator": "auto", "enable_progress_bar": False},
            "tracking": {"experiment": APP_EXPERIMENT, "uri": tracking_uri},
        }


def _lr(value: Any) -> float | str:
    """The learning-rate box: a positive number, or ``auto`` (the fit runs Lightning's LR finder first)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        lr = float(text)
    except ValueError:
        lr = -1.0
    if not 0 < lr < 10:
        raise UserError(f"learning rate {value!r}: give a number such as 1e-3, or auto to let the fit find one")
    return lr


class Page:
    """The handlers, bound to the page's data folder, tracking store and limits.

    Args:
        base: holds the work folders (``sessions/``) and the visitor-token secret.
        store: where runs and models go.
        limits: the page's limits.
        mlflow_ui: a link to an MLflow UI for the runs, if any.
    """

    def __init__(self, base: Path, store: TrackingStore, limits: Limits, mlflow_ui: str | None = None) -> None:
        self.base, self.store, self.limits, self.mlflow_ui = base, store, limits, mlflow_ui
        self.tokens = Tokens(base)
        self.presence = Presence()
        self.backbones = Backbones(limits.max_backbone_params)
        self.supervisor = Supervisor(limits, store)
        self.ui = SimpleNamespace()

    # -- who and where -----------------------------------------------------------------------------------------
    def conn(self, st: Conn | None, request: gr.Request | None, token: object = None) -> Conn:
        """The connection's visitor: the ``--auth`` user, the browser's token, or a fresh visitor."""
        username = getattr(request, "username", None) if request is not None else None
        if st is not None and (not username or st.visitor.owner == username):
            conn = st
        else:
            conn = Conn(self.tokens.visitor(username, token))
        self.presence.seen(conn.visitor.owner)
        return conn

    def session(self, conn: Conn) -> Session:
        return Session.open(self.base, conn.visitor, self.limits)

    def words(self, exc: Exception) -> str:
        """An error as the visitor reads it: one line, with no server path in it."""
        return f"❌ {scrub(str(exc), [self.base])}"

    # -- page load and unload -----------------------------------------------------------------------------------
    def on_page_load(self, token: object, request: gr.Request) -> dict:
        conn = self.conn(None, request, token)
        self.presence.seen(conn.visitor.owner, request.session_hash)
        s = self.session(conn)
        s.touch()
        ui = self.ui
        out = {
            ui.state: conn,
            ui.token: conn.visitor.token,
            ui.limits_md: self.limits.describe(),
            ui.backbone: gr.update(choices=self.backbones.choices()),
            ui.reg_name: conn.visitor.suggested_model_name,
        }
        out |= self.dataset_outputs(s.dataset)
        out |= self._settings_outputs(s)
        out |= self._run_outputs(conn, s, full=True)
        out |= self._model_outputs(conn)
        return out

    def _settings_outputs(self, s: Session) -> dict:
        """The Model tab as the visitor last trained with (a reload keeps their choices)."""
        saved = s.settings
        if not saved:
            return {}
        ui = self.ui
        names = ("backbone", "strategy", "epochs", "image_size", "lr", "use_pretrained", "batch_size", "augment")
        names += ("optimizer", "val_split", "max_per_class")
        return {getattr(ui, n): saved[n] for n in names if n in saved}

    def on_page_unload(self, request: gr.Request) -> None:
        if request is not None and request.session_hash:
            self.presence.closed(request.session_hash)

    # -- data --------------------------------------------------------------------------------------------------
    def on_load_data(self, zip_file, image_files, label_text, builtin_name, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        try:
            if zip_file:
                dataset = s.load_zip(zip_file, Path(zip_file).name)
            elif image_files:
                names = [x.strip() for x in (label_text or "").split(",") if x.strip()]
                dataset = s.load_images(list(image_files), names)
            elif builtin_name:
                dataset = s.use_builtin(builtin_name)
            else:
                s.clear_dataset()
                raise UserError("upload a zip, drop images with labels, or pick a built-in dataset")
        except UserError as exc:
            out = self.dataset_outputs(None, self.words(exc))
        else:
            out = self.dataset_outputs(dataset)
        return {self.ui.state: conn, **out}

    def dataset_outputs(self, dataset: Dataset | None, message: str | None = None) -> dict:
        """The Data tab's summary, samples and the Train button for ``dataset`` (None: nothing loaded)."""
        ui = self.ui
        if dataset is None:
            text = message or "No dataset loaded yet."
            return {ui.data_summary: text, ui.data_gallery: thumb_grid([], "")}
        items = [(img, cls) for p, cls in dataset.samples if (img := ev.open_image(p)) is not None]
        return {ui.data_summary: dataset.summary, ui.data_gallery: thumb_grid(items, "")}

    # -- model settings and the training plan ----------------------------------------------------------------
    def on_backbone(self, name: str, size: int, st, request: gr.Request) -> str:
        s = self.session(self.conn(st, request))
        weights = s.weights_file
        return self.backbones.info(name, int(size), weights[0] if weights and weights[1] == name else None)

    def on_weights_file(self, path: str | None, backbone: str, st, request: gr.Request) -> str:
        """Check an uploaded weights file against the chosen backbone, and keep it for training."""
        import zoo

        s = self.session(self.conn(st, request))
        if not path:
            s.set_weights_file(None)
            return "No weights file: the backbone's own pretrained weights are used (or none)."
        try:
            self.backbones.check_allowed(backbone)
            zoo.create_model(backbone, pretrained=path)
        except Exception as exc:  # the zoo's errors say what does not fit; anything else is a broken file
            s.set_weights_file(None)
            return f"❌ this file does not load into {backbone}: {scrub(str(exc).splitlines()[0], [Path(path).parent])}"
        kept = s.root / "weights" / safe_name(Path(path).name, "weights.pth")
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, kept)
        s.set_weights_file(str(kept), backbone)
        return f"✅ {Path(path).name} loads into {backbone}; training will start from it."

    def on_plan(self, st, bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        try:
            settings = Settings.of(bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc)
        except UserError as exc:
            return {self.ui.train_plan: f"⚠️ {self.words(exc)}", self.ui.train_btn: gr.update(interactive=False)}
        return self._plan_outputs(conn, self.session(conn), settings)

    def _plan_outputs(self, conn: Conn, s: Session, settings: Settings) -> dict:
        ui = self.ui
        dataset = s.dataset
        busy = bool(self.supervisor.running_for(conn.visitor.owner))
        if dataset is None:
            text = "⚠️ **No dataset loaded** — load one on the Data tab; Train needs it."
        else:
            weights = self._pretrained_words(s, settings)
            text = (
                f"Train will fit **{settings.backbone}** ({weights}) with strategy **{settings.strategy}**, "
                f"{settings.epochs} epoch{'s' * (settings.epochs != 1)} at {settings.image_size} px, on "
                f"**{dataset.label}**: {dataset.images} images in {len(dataset.classes)} classes."
            )
            if settings.lr == "auto":
                text += " The learning rate is found first (Lightning's LR finder; its plot goes to the run)."
        return {ui.train_plan: text, ui.train_btn: gr.update(interactive=dataset is not None and not busy)}

    def _pretrained_words(self, s: Session, settings: Settings) -> str:
        if not settings.use_pretrained:
            return "from scratch"
        weights = s.weights_file
        file = weights[0] if weights and weights[1] == settings.backbone else None
        status = self.backbones.status(settings.backbone, file)
        if status.available:
            return f"pretrained weights: {status.where}"
        return "⚠️ pretrained weights need a download" if status.where == "download" else "⚠️ no pretrained weights"

    # -- training ----------------------------------------------------------------------------------------------
    def on_train(self, st, bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        try:
            settings = Settings.of(bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc)
            if s.dataset is None:
                raise UserError("no dataset loaded: load one on the Data tab first (a failed load clears the last one)")
            self.backbones.check_allowed(settings.backbone)
            if settings.strategy not in STRATEGY_HELP:
                raise UserError(f"unknown strategy {settings.strategy!r}; pick one on the Model tab")
            weights = s.weights_file
            file = weights[0] if weights and weights[1] == settings.backbone else None
            pretrained = self.backbones.pretrained_for(settings.backbone, settings.use_pretrained, file)
            self.supervisor.check_capacity(conn.visitor.owner)  # before anything is written
            note = {"backbone": settings.backbone, "strategy": settings.strategy, "dataset": s.dataset.label}
            run = s.new_run(settings.recipe(pretrained, self.store.uri), note)
            s.save_settings(asdict(settings))
            try:
                self.supervisor.start(conn.visitor.owner, run)
            except UserError:  # another tab took the last slot in between: leave no trace of this one
                shutil.rmtree(run.path, ignore_errors=True)
                raise
            s.open_run(run.name)
        except UserError as exc:
            return {self.ui.state: conn, self.ui.progress: message_html(self.words(exc))}
        conn.sent.clear()
        out = {self.ui.state: conn, **self._run_outputs(conn, s, full=True), **self._plan_outputs(conn, s, settings)}
        return out | self._eval_placeholder(f"Run `{run.name}` is training; its evaluation appears here when it ends.")

    def _eval_placeholder(self, text: str) -> dict:
        ui = self.ui
        return {
            ui.eval_md: text,
            ui.confusion: None,
            ui.per_class: [],
            ui.mistakes: "",
            ui.reliability: gr.update(visible=False),
            ui.deploy_for: "",
        }

    def on_tick(self, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        return self._run_outputs(conn, self.session(conn), full=False)

    def on_watch(self, st, request: gr.Request):
        """For API clients: the current run's progress every half second until it ends, then its outcome."""
        import time

        conn = self.conn(st, request)
        s = self.session(conn)
        run = s.current_run
        while run is not None and self.supervisor.alive(run):
            self.presence.seen(conn.visitor.owner)
            yield self._watch_values(run, alive=True)
            time.sleep(0.5)
        if run is not None:
            self.supervisor.wait(run, 30)
        yield self._watch_values(run, alive=False) if run else ("No run yet.", "")

    def _watch_values(self, run: RunFolder, alive: bool) -> tuple[str, str]:
        status = run.status(alive)
        text = progress_words(run.events())[0] if alive else status
        return text, self._run_md(run, status)

    def on_resume(self, st, request: gr.Request) -> dict:
        """Continue the current run, stopped before it finished, from its last checkpoint (same MLflow run)."""
        conn = self.conn(st, request)
        s = self.session(conn)
        run = s.current_run
        try:
            if run is None or not self._resumable(run):
                raise UserError("nothing to resume: the current run has no interrupted training with a checkpoint")
            self.supervisor.start(conn.visitor.owner, run, resume=True)
        except UserError as exc:
            return {self.ui.progress: message_html(self.words(exc))}
        return self._run_outputs(conn, s, full=True)

    def _resumable(self, run: RunFolder) -> bool:
        alive = self.supervisor.alive(run)
        return not alive and run.status(alive) in RESUMABLE and run.fit_dir.last_ckpt.is_file()

    def on_cancel(self, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        run = s.current_run
        if run is not None and self.supervisor.alive(run):
            self.supervisor.cancel(run)
        return self._run_outputs(conn, s, full=False)

    def on_open_run(self, name: str, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        try:
            s.open_run(name or "")
        except UserError as exc:
            return {self.ui.run_md: self.words(exc)}
        conn.sent.clear()
        return self._run_outputs(conn, s, full=True)

    def _run_outputs(self, conn: Conn, s: Session, full: bool) -> dict:
        """Progress, curves, buttons, the timer and (on ``full`` or a run's end) the runs table of the current run."""
        ui = self.ui
        run = s.current_run
        alive = run is not None and self.supervisor.alive(run)
        status = run.status(alive) if run else ""
        out: dict = {
            ui.timer: gr.Timer(active=alive),
            ui.cancel_btn: gr.update(interactive=status in (RUNNING, "starting")),
        }
        if run is None:
            return out | {ui.progress: "", ui.loss_plot: "", ui.acc_plot: "", ui.run_md: "", **self._runs_table(s)}
        events = run.events()
        error = run.error([self.base]) if status == "failed" else ""
        out[ui.progress] = progress_html(status, events, run.note().get("started", 0.0), error)
        curves = curves_html(events)
        if full or conn.sent.get("curves") != curves:
            conn.sent["curves"] = curves
            out |= {ui.loss_plot: curves[0], ui.acc_plot: curves[1]}
        changed = full or conn.sent.get("status") != status
        conn.sent["status"] = status
        if changed:
            out |= self._runs_table(s) | self._ended_outputs(conn, s, run, status)
        if full:
            out[ui.recipe_file] = self._handoff(run.recipe_path)
        return out

    def _ended_outputs(self, conn: Conn, s: Session, run: RunFolder, status: str) -> dict:
        """What changes with a run's state: its line, what can be done with it, and (finished) its evaluation."""
        ui, done = self.ui, status == FINISHED
        return {
            ui.run_md: self._run_md(run, status),
            ui.finished_run: run.name if done else gr.skip(),  # its change evaluates the run (cached after once)
            ui.deploy_btn: gr.update(interactive=done),
            ui.export_btn: gr.update(interactive=done),
            ui.resume_btn: gr.update(interactive=self._resumable(run)),
            ui.train_btn: gr.update(interactive=s.dataset is not None and not self._busy(conn)),
        }

    def _busy(self, conn: Conn) -> bool:
        return bool(self.supervisor.running_for(conn.visitor.owner))

    def _run_md(self, run: RunFolder, status: str) -> str:
        result = run.result()
        if status == FINISHED and result.get("run_id"):
            link = f" — [open in MLflow]({self.mlflow_ui}/#/runs/{result['run_id']})" if self.mlflow_ui else ""
            acc = (result.get("metrics") or {}).get("val_acc")
            acc_text = f", val_acc {acc:.3f}" if acc is not None else ""
            return f"✅ Run `{run.name}` done{acc_text}. MLflow run `{result['run_id']}`{link}."
        return f"Run `{run.name}`: {STATUS_WORDS[status]}." if status else ""

    def _runs_table(self, s: Session) -> dict:
        runs = s.runs()
        rows = []
        for r in runs:
            alive = self.supervisor.alive(r)
            if not alive and r.fit_state().get("status") == RUNNING:
                r.fit_dir.recover(self.store)  # its process is gone: mark its MLflow run KILLED
            rows.append(r.row(alive))
        names = [r.name for r in runs]
        current = s.current_run
        pick = gr.update(choices=names, value=current.name if current else None)
        return {self.ui.runs_table: rows, self.ui.run_pick: pick, self.ui.open_btn: gr.update(interactive=bool(names))}

    def _handoff(self, path: Path) -> str | None:
        """A copy of a file the visitor may download, where Gradio takes it from (:func:`handoff_dir`)."""
        if not path.is_file():
            return None
        root = handoff_dir(self.base)
        root.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="h-", dir=root))
        return str(shutil.copy(path, folder / path.name))

    # -- evaluate, deploy, export, try ---------------------------------------------------------------------------
    def on_evaluate(self, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        ui, run = self.ui, s.current_run
        if run is None or run.status(self.supervisor.alive(run)) != FINISHED:
            return self._eval_placeholder("Train a model, or open a finished run, to see its evaluation.")
        try:
            e = ev.evaluate_run(run, self.store)
        except UserError as exc:
            return self._eval_placeholder(self.words(exc))
        thumbs = [(img, caption) for p, caption in e.mistakes if (img := ev.open_image(p)) is not None]
        card = ev.model_card(run, self.store)
        return {
            ui.state: conn,
            ui.eval_md: e.summary,
            ui.confusion: ev.open_image(e.confusion) if e.confusion else None,
            ui.reliability: gr.update(value=ev.open_image(e.reliability), visible=True) if e.reliability else None,
            ui.per_class: e.per_class,
            ui.mistakes: thumb_grid(thumbs, "No mistakes on the validation images."),
            ui.deploy_for: f"Deploying run `{run.name}` — {e.summary.splitlines()[0]}",
            ui.card_md: gr.update(value=card, visible=True) if card else gr.update(visible=False),
        }

    def on_deploy(self, name: str, alias: str, if_better: bool, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        s = self.session(conn)
        run = s.current_run
        try:
            if run is None or run.status(self.supervisor.alive(run)) != FINISHED:
                raise UserError("no finished run to deploy: train one, or open a finished run on the Train tab")
            owner = conn.visitor.owner
            text = ev.deploy(
                run, self.store, safe_name(name, "my-classifier"), safe_name(alias, "champion"), owner, if_better
            )
        except UserError as exc:
            text = self.words(exc)
        return {self.ui.state: conn, self.ui.deploy_md: text, **self._model_outputs(conn)}

    def _model_outputs(self, conn: Conn) -> dict:
        models = ev.my_models(self.store, conn.visitor.owner)
        value = models[0] if models else None
        return {
            self.ui.try_model: gr.update(choices=models, value=value),
            self.ui.try_btn: gr.update(interactive=bool(models)),
        }

    def on_export(self, st, request: gr.Request) -> str:
        from transfer.deploy.export import export_model

        s = self.session(self.conn(st, request))
        run = s.current_run
        result = run.result() if run else {}
        if not result.get("model_uri"):
            raise gr.Error("No finished run to export: train one, or open a finished run on the Train tab.")
        try:
            out = export_model(result["model_uri"], "onnx", str(run.path / "model.onnx"), self.store)
        except UserError as exc:
            raise gr.Error(self.words(exc)) from exc
        return self._handoff(Path(out))

    def on_try(self, image_path: str | None, choice: str | None, st, request: gr.Request) -> dict:
        conn = self.conn(st, request)
        ui = self.ui
        if not image_path:
            return {ui.state: conn, ui.try_label: None, ui.try_md: "Upload an image first."}
        try:
            scores, note = ev.classify(self.store, conn.visitor.owner, image_path, choice or "")
        except UserError as exc:
            return {ui.state: conn, ui.try_label: None, ui.try_md: self.words(exc)}
        return {ui.state: conn, ui.try_label: scores, ui.try_md: note}
