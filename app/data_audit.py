"""The Data tab's audit and the Model tab's backbone recommendation, measured on the visitor's loaded data.

"Audit my data" runs :func:`transfer.audit.audit` on the loaded dataset as the Model tab would train it (backbone and
its weights, image size, split, images per class) and shows the verdicts, each finding with thumbnails and a
caption, and the learning curve with its forecast (:mod:`app.audit_html`). The findings are kept in the visitor's
work folder (``audit.json``): a reload shows them again, and nobody else can see them. "Drop these" writes a cleaned
copy (:func:`transfer.audit.clean.write_cleaned_copy`) into the visitor's ``uploads/`` and makes it the dataset: the
uploaded files are never touched, and the next training uses the copy with the audited train / validation split.
"Recommend a backbone" ranks the backbones this page offers whose weights are here (:mod:`transfer.recommend`) and
selects the first in the Model tab.

Where they run: in the page's own process, on the request's worker thread, one analysis at a time on the whole
server (Gradio's queue, concurrency id :data:`ANALYSIS`: a second visitor's audit waits, its place in the queue
shown). An audit of a few hundred images takes seconds; the child process a training gets would first spend ~10 s
importing torch and Lightning, and its result is a report the page renders anyway. Trainings (child processes) and
every other button go on meanwhile. The page's limits bound it: ``audit_max_images`` images per analysis,
``recommend_budget_s`` of measuring, backbones within ``max_backbone_mparams``; it takes no training slot.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from app.audit_html import findings_html, message_html, recommendation_md
from app.page import APP_EXPERIMENT, Page, Settings
from app.runs import scrub
from app.session import Session
from transfer.deploy.registry import OWNER_TAG
from transfer.errors import UserError
from transfer.jsonfile import read_json, write_json
from transfer.recommend import Candidate, log_recommendation, recommend

_log = logging.getLogger(__name__)

ANALYSIS = "analysis"  # Gradio's concurrency id of the audit and the recommendation: one at a time on the server
AUDIT_FILE = "audit.json"  # in the visitor's work folder: the last audit, its page and what "Drop these" drops


def candidates(page: Page, s: Session) -> list[Candidate]:
    """What the page can train with weights that are here: each offered backbone whose weights are on this machine
    (an offline package, a hub cache, the visitor's own file), smallest first, so a spent budget skips the big."""
    import zoo

    file = s.weights_file
    found = []
    for name in sorted(page.backbones.names(), key=lambda n: zoo.get_spec(n).num_params):
        status = page.backbones.status(name, file[0] if file and file[1] == name else None)
        if status.available:
            found.append(Candidate(name, status.pretrained))
    return found


class DataChecks:
    """The audit, "Drop these" and the recommendation, bound to the page (its visitors, limits and components)."""

    def __init__(self, page: Page) -> None:
        self.page = page

    @property
    def ui(self) -> Any:
        return self.page.ui

    # -- what an analysis reads ----------------------------------------------------------------------------------
    def _loaded(self, st: Any, values: tuple, request: gr.Request) -> tuple[Session, Settings]:
        """The visitor's session and Model-tab settings, checked against the page's limits.

        Raises:
            UserError: no dataset, a bad setting, or more images than an analysis may read here.
        """
        s = self.page.session(self.page.conn(st, request))
        settings = Settings.of(*values)
        dataset = s.dataset
        if dataset is None:
            raise UserError("no dataset loaded: load one on the Data tab first")
        limit = self.page.limits.audit_max_images
        per_class = settings.max_per_class
        used = min(dataset.images, per_class * len(dataset.classes)) if per_class else dataset.images
        if used > limit:
            raise UserError(
                f"{used} images is over the {limit}-image limit of an analysis here; set “At most this many images "
                f"per class” (Model tab → Advanced) to {max(1, limit // len(dataset.classes))} or fewer"
            )
        return s, settings

    def _recipe(self, s: Session, settings: Settings, pretrained: bool | str) -> dict[str, Any]:
        recipe = settings.recipe(pretrained, self.page.store.uri)
        return {**recipe, "data": {**recipe["data"], "source": s.dataset.source}}

    def _hide(self, s: Session) -> list[Path]:
        """Folders cut from the paths a visitor is shown: their dataset's, their work folder, the dataset cache."""
        from transfer.sources import cache_root

        source = s.dataset.source if s.dataset else ""
        return [*([Path(source)] if not source.startswith("builtin:") else []), s.root, cache_root()]

    # -- audit ---------------------------------------------------------------------------------------------------
    def on_audit(self, st, bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc, request: gr.Request) -> dict:
        """Audit the loaded data with the Model tab's backbone and weights; show and keep the findings."""
        ui = self.ui
        try:
            s, settings = self._loaded(st, (bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc), request)
            self.page.backbones.check_allowed(settings.backbone)
            weights = s.weights_file
            file = weights[0] if weights and weights[1] == settings.backbone else None
            pretrained = self.page.backbones.pretrained_for(settings.backbone, settings.use_pretrained, file)
            label = Candidate(settings.backbone, pretrained).label
            saved = self._audit(s, self._recipe(s, settings, pretrained), label)
        except UserError as exc:
            return {ui.data_audit: message_html(self.page.words(exc)), ui.drop_btn: gr.update(interactive=False)}
        return {ui.data_audit: saved["html"], ui.drop_btn: gr.update(interactive=bool(saved["drops"]))}

    def _audit(self, s: Session, recipe: dict[str, Any], backbone: str) -> dict[str, Any]:
        """Run the audit, render it, and keep it in the work folder (atomically: a reload sees all of it or none)."""
        from transfer.audit import audit
        from transfer.audit.clean import DEFAULT_DROP, page_findings, suggested_drops
        from transfer.job import check_model_keys, prepare
        from transfer.progress import Events
        from transfer.recipe import load_recipe

        started = time.monotonic()
        r = load_recipe(recipe)
        check_model_keys(r)
        job = prepare(r, Events(None))
        report = audit(job)
        report.backbone = backbone  # its weights by file name, not by a server path
        drops = suggested_drops(report)
        with tempfile.TemporaryDirectory(prefix=".audit-thumbs-", dir=s.root) as thumbs:
            page = findings_html(report, page_findings(report, thumbs), drops, self._hide(s))
        saved = {
            "source": s.dataset.source,
            "images": s.dataset.images,
            "recipe": recipe,
            "fingerprint": job.index.fingerprint(),
            "drops": drops,
            "kinds": {kind: len(suggested_drops(report, [kind])) for kind in DEFAULT_DROP},
            "html": page,
        }
        write_json(s.root / AUDIT_FILE, saved)
        _log.info("audit of %d images in %.1f s", sum(report.classes.values()), time.monotonic() - started)
        return saved

    def on_show(self, st, request: gr.Request) -> dict:
        """After a page load or a data load: the kept audit when it is of the loaded data, and which buttons act."""
        ui, s = self.ui, self.page.session(self.page.conn(st, request))
        dataset, saved = s.dataset, read_json(s.root / AUDIT_FILE)
        cleaned = saved.get("cleaned") or {}
        if dataset is not None and saved.get("source") == dataset.source:
            shown, drop = saved["html"], bool(saved["drops"])
        elif dataset is not None and cleaned.get("source") == dataset.source:
            shown, drop = message_html(cleaned["message"]), False
        else:
            shown, drop = "", False
        ready = gr.update(interactive=dataset is not None)
        out = {ui.data_audit: shown, ui.drop_btn: gr.update(interactive=drop)}
        return out | {ui.audit_btn: ready, ui.recommend_btn: ready}

    # -- drop these ------------------------------------------------------------------------------------------------
    def on_drop(self, st, request: gr.Request) -> dict:
        """Write the cleaned copy into the visitor's uploads and use it (the uploaded files stay as they were)."""
        ui = self.ui
        s = self.page.session(self.page.conn(st, request))
        try:
            dataset, message = self._drop(s)
        except UserError as exc:
            return {ui.data_audit: message_html(self.page.words(exc))}
        out = {ui.data_audit: message_html(message), ui.drop_btn: gr.update(interactive=False)}
        return self.page.dataset_outputs(dataset) | out

    def _drop(self, s: Session) -> tuple[Any, str]:
        from transfer.audit.clean import write_cleaned_copy
        from transfer.job import dataset_index
        from transfer.recipe import load_recipe

        dataset, saved = s.dataset, read_json(s.root / AUDIT_FILE)
        if dataset is None or saved.get("source") != dataset.source:
            raise UserError("no audit of the loaded data to act on: click “Audit my data” first")
        if not saved["drops"]:
            raise UserError("nothing to drop: the audit found no leak, duplicate, unreadable file or outlier")
        index = dataset_index(load_recipe(saved["recipe"]))
        if index.fingerprint() != saved["fingerprint"]:
            raise UserError("the data changed since its audit: click “Audit my data” again first")
        dest = s.root / "uploads" / f"cleaned-{int(time.time() * 1000)}"
        write_cleaned_copy(SimpleNamespace(index=index), dest, saved["drops"])
        try:
            cleaned = s.use_split(dest, f"{dataset.label}, cleaned")
        except UserError as exc:  # e.g. every validation image of a class dropped: keep the dataset as it was
            shutil.rmtree(dest, ignore_errors=True)
            raise UserError(f"the cleaned copy cannot be used: {exc}") from None
        kinds = ", ".join(f"{kind.replace('_', ' ')}: {n}" for kind, n in saved["kinds"].items() if n)
        per_class = saved["recipe"]["data"].get("max_per_class")
        subset = f" (the audit read at most {per_class} images per class; the copy holds those)" if per_class else ""
        message = (
            f"✅ Cleaned copy in use: {cleaned.images} images{subset}; {len(saved['drops'])} files left out "
            f"({kinds}). Your upload is unchanged; the next training uses the cleaned copy and its split."
        )
        write_json(s.root / AUDIT_FILE, {**saved, "cleaned": {"source": cleaned.source, "message": message}})
        return cleaned, message

    # -- recommend ---------------------------------------------------------------------------------------------------
    def on_recommend(self, st, bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc, request: gr.Request) -> dict:
        """Rank the backbones with weights here on the loaded data; select the first on the Model tab."""
        from transfer.recipe import load_recipe

        ui = self.ui
        try:
            s, settings = self._loaded(st, (bb, strat, ep, size, lr, pre, bs, aug, opt, vs, mpc), request)
            found = candidates(self.page, s)
            if not found:
                raise UserError("no backbone offered here has its weights on this server; upload a weights file")
            rec = recommend(load_recipe(self._recipe(s, settings, False)), found, self.page.limits.recommend_budget_s)
            # Logged as CLI recommendations are, in the page's experiment, under the dataset's name (not the
            # server's folder) and tagged with who asked, as the page's models are.
            rec = dataclasses.replace(rec, source=s.dataset.label)
            owner = self.page.conn(st, request).visitor.owner
            log_recommendation(self.page.store, rec, APP_EXPERIMENT, tags={OWNER_TAG: owner})
        except UserError as exc:
            return {ui.recommend_md: self.page.words(exc)}
        out = {ui.recommend_md: scrub(recommendation_md(rec), self._hide(s))}
        best = rec.best
        if best is not None:
            out |= {ui.backbone: best.candidate.backbone, ui.use_pretrained: best.candidate.pretrained is not False}
        return out


def wire(ui: Any, checks: DataChecks, settings: list[Any], plan: dict[str, Any], after_data: list[Any]) -> None:
    """Connect the buttons; ``after_data``: the events after which the loaded dataset may have changed."""
    hidden: dict[str, Any] = {"api_visibility": "undocumented", "show_progress": "hidden"}
    shown = [ui.data_audit, ui.drop_btn, ui.audit_btn, ui.recommend_btn]
    for event in after_data:
        event.then(checks.on_show, ui.state, shown, **hidden)
    one_at_a_time = {"concurrency_limit": 1, "concurrency_id": ANALYSIS}
    ui.audit_btn.click(
        checks.on_audit, [ui.state, *settings], [ui.data_audit, ui.drop_btn], api_name="audit", **one_at_a_time
    )
    ui.drop_btn.click(
        checks.on_drop, ui.state, [ui.data_summary, ui.data_gallery, ui.data_audit, ui.drop_btn], api_name="drop"
    ).then(**plan, **hidden)
    ui.recommend_btn.click(
        checks.on_recommend,
        [ui.state, *settings],
        [ui.recommend_md, ui.backbone, ui.use_pretrained],
        api_name="recommend",
        **one_at_a_time,
    )
