"""What the page draws from a fit's events: the phase in words from the first second, curves with a marker per epoch,
thumbnails with their captions."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from app.views import START_TEXT, curves_html, progress_html, progress_words, thumb_grid
from transfer.progress import PHASES


def _epoch(n: int, acc: float, max_epochs: int = 3) -> dict:
    return {
        "event": "epoch",
        "time": 100.0 + n,
        "epoch": n,
        "max_epochs": max_epochs,
        "train_loss": 1.0 / n,
        "val_loss": 1.2 / n,
        "val_acc": acc,
        "val_f1": acc - 0.05,
    }


def test_before_any_event_the_start_is_said_in_words() -> None:
    text, done, _ = progress_words([])
    assert text == START_TEXT and done is None


@pytest.mark.parametrize("phase", sorted(set(PHASES) - {"train"}))
def test_every_phase_shows_in_words(phase: str) -> None:
    text, _, _ = progress_words([{"event": "phase", "time": 1.0, "phase": phase, "text": PHASES[phase]}])
    assert text == PHASES[phase] and text != phase


def test_a_counted_phase_shows_its_count_and_fraction() -> None:
    event = {"event": "phase", "time": 1.0, "phase": "features", "text": "Computing features: 120/600 images"}
    text, done, _ = progress_words([{**event, "done": 120, "total": 600}])
    assert text == "Computing features: 120/600 images" and done == pytest.approx(0.2)


def test_training_shows_epoch_and_batch_not_event_names() -> None:
    events = [
        {"event": "phase", "time": 1.0, "phase": "train", "text": PHASES["train"]},
        {"event": "start", "time": 1.0, "max_epochs": 5, "steps_per_epoch": 10, "epoch": 0},
        {"event": "step", "time": 2.0, "epoch": 1, "step": 5, "steps_per_epoch": 10, "max_epochs": 5},
    ]
    text, done, _ = progress_words(events)
    assert text == "Training: epoch 2/5, batch 5/10" and done == pytest.approx(0.3)
    assert progress_words(events[:2])[0] == "Training: epoch 1/5 starting"  # words, not the event's name "start"


def test_the_progress_block_escapes_and_counts_seconds() -> None:
    block = progress_html("running", [{"event": "phase", "time": 0.0, "phase": "data", "text": "<b>x</b>"}], 0.0)
    assert "&lt;b&gt;" in block and re.search(r'class="tw-elapsed">\d+ s<', block)


def test_a_failed_run_says_why() -> None:
    assert "Training failed: no backbone" in progress_html("failed", [], 0.0, "no backbone")


def _markers(svg: str, series: str) -> int:
    group = svg.split(f'id="curve-{series}"', 1)[1].split("</g>\n   </g>", 1)[0]
    return group.count("<use ")


def test_one_epoch_draws_a_visible_point_per_series() -> None:
    loss, acc = curves_html([_epoch(1, 0.64)])
    assert _markers(acc, "val_acc") == 1 and _markers(acc, "val_f1") == 1 and _markers(loss, "train_loss") == 1


def test_curves_have_a_marker_per_epoch_and_readable_legends() -> None:
    _, acc = curves_html([_epoch(1, 0.64), _epoch(2, 0.80), _epoch(3, 0.82)])
    assert _markers(acc, "val_acc") == 3
    assert "val accuracy" in acc and "NaN" not in acc and "Infinity" not in acc
    assert "0.80" in acc and "980" not in acc.replace("0.980", "")  # two decimals, nothing clipped to "980"


def test_no_epoch_yet_says_when_curves_come() -> None:
    loss, acc = curves_html([{"event": "phase", "time": 1.0, "phase": "data", "text": "Reading the data"}])
    assert "after the first epoch" in loss and "<svg" not in acc


def test_thumbnails_carry_their_captions() -> None:
    img = Image.new("RGB", (400, 40), "white")
    grid = thumb_grid([(img, "cat → dog (0.93)")], "none")
    assert grid.count("<figure>") == 1 and "<figcaption>cat → dog (0.93)</figcaption>" in grid
    assert 'src="data:image/png;base64,' in grid
