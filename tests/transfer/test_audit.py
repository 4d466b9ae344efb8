"""``transfer audit`` on real data with planted problems, its CLI, the cleaned copy, the learning-curve forecast,
and the audit at the start of ``transfer fit`` (``data.audit``).

The planted dataset (tests.helpers.planted_digits): scikit-learn's 1,797 real digits in train/ and val/ folders with
5% of the labels flipped, 10 training images copied into validation, 5 near-duplicates (resized, re-encoded as
JPEG), 3 corrupt files and 2 photos from another domain; audited with ImageNet MobileNetV2 at 64 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import WEIGHTS, leaky_digits_folder, planted_digits, write_recipe
from transfer.cli import main

SIZE = ["data.image_size=64", "data.num_workers=0", "data.batch_size=64"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted dataset, what was planted, its audit report and the prepared job (made once for all xdist
    workers: the first to take the lock audits, the others read its report)."""
    from filelock import FileLock

    from transfer.audit import AuditReport, audit, recipe_for
    from transfer.job import prepare
    from transfer.progress import Events

    shared = tmp_path_factory.getbasetemp().parent / "planted-audit"
    shared.mkdir(exist_ok=True)
    root, done = shared / "digits", shared / "report.json"
    with FileLock(str(shared / ".lock")):
        if not (shared / "truth.json").is_file():
            (shared / "truth.json").write_text(json.dumps(planted_digits(root)))
        recipe = recipe_for(str(root), pretrained=WEIGHTS, overrides=[*SIZE, f"data.cache_dir={shared / 'cache'}"])
        job = prepare(recipe, Events(None))
        if not done.is_file():
            done.write_text(json.dumps(audit(job).to_dict()))
    return root, json.loads((shared / "truth.json").read_text()), AuditReport(**json.loads(done.read_text())), job


def _clean(truth: dict) -> set[str]:
    planted = {*truth["flipped"], *truth["ood"], *(p for pair in truth["near"] + truth["leaks"] for p in pair)}
    return set(truth["all"]) - planted


def test_finds_every_exact_duplicate_and_leak(planted):
    _, truth, report, _ = planted
    groups = {frozenset(g["paths"]) for g in report.exact_duplicates}
    assert {frozenset(pair) for pair in truth["leaks"]} <= groups
    assert sorted(map(tuple, report.leaks)) == sorted(map(tuple, truth["leaks"]))


def test_finds_near_duplicates(planted):
    _, truth, report, _ = planted
    found = [pair for pair in truth["near"] if any(set(pair) <= set(g["paths"]) for g in report.near_duplicates)]
    print(f"near-duplicates: {len(found)} of {len(truth['near'])} found; thresholds {report.thresholds}")
    assert len(found) >= 4  # at least 8 of 10, scaled to the 5 planted


def test_ranks_flipped_labels_among_the_top_suspects(planted):
    _, truth, report, _ = planted
    flipped = set(truth["flipped"])
    top = [i["path"] for i in report.label_issues[: 2 * len(flipped)]]
    recall = len(flipped & set(top)) / len(flipped)
    precision = len(flipped & set(top)) / max(1, len(top))
    print(f"label issues: {len(report.label_issues)} flagged; top-2N recall {recall:.2f}, precision {precision:.2f}")
    assert recall >= 0.7
    first = report.label_issues[0]
    assert set(first) >= {"path", "given", "suggested", "score"} and first["given"] != first["suggested"]


def test_finds_corrupt_files_and_out_of_domain_images(planted):
    _, truth, report, _ = planted
    assert set(truth["corrupt"]) <= set(report.unreadable)
    assert set(truth["ood"]) <= set(report.outliers)


def test_flags_few_clean_images(planted):
    _, truth, report, _ = planted
    clean = _clean(truth)
    wrongly = report.flagged() & clean
    planted_paths = set(truth["all"]) - clean | set(truth["corrupt"])
    hits = report.flagged() & planted_paths
    print(
        f"audit precision {len(hits) / len(report.flagged()):.3f}, recall {len(hits) / len(planted_paths):.3f}; "
        f"{len(wrongly)} of {len(clean)} clean images flagged ({len(wrongly) / len(clean):.2%})"
    )
    assert len(wrongly) < 0.02 * len(clean)


def test_verdicts_say_what_to_do(planted):
    _, _, report, _ = planted
    text = "\n".join(report.verdicts)
    assert "leakage: 10 validation images" in text and "remove them from validation" in text
    assert "check these" in text and "unreadable: fix or remove these 3 files" in text


def test_html_report_shows_thumbnails_of_findings(planted, tmp_path):
    from transfer.audit.report import write

    _, truth, report, _ = planted
    html = write(report, tmp_path / "audit.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 * len(truth["leaks"])  # both sides of every leak
    assert truth["leaks"][0][1] in html and "How many more images would help?" in html


def test_cleaned_copy_leaves_the_original_alone(planted, tmp_path):
    from transfer.audit.clean import suggested_drops, write_cleaned_copy
    from transfer.sources import build_index

    root, truth, report, job = planted
    before = sorted(p.name for p in root.rglob("*"))
    drop = suggested_drops(report)
    copy = write_cleaned_copy(job, tmp_path / "clean", drop)
    assert sorted(p.name for p in root.rglob("*")) == before
    index = build_index(str(copy))
    kept = {Path(p).name for p, _ in index.val}
    assert not {Path(v).name for _, v in truth["leaks"]} & kept
    assert len(index.train) + len(index.val) == len(job.index.train) + len(job.index.val) - len(
        set(drop) - set(report.unreadable)
    )


def test_pages_rows_carry_thumbnail_files(planted, tmp_path):
    from transfer.audit.clean import page_findings

    _, _, report, _ = planted
    rows = page_findings(report, tmp_path / "thumbs")
    leaks = [r for r in rows if r["section"].startswith("Leaks")]
    assert len(leaks) == 10 and all(len(r["thumbnails"]) == 2 and Path(r["thumbnails"][0]).is_file() for r in leaks)


def test_learning_curve_forecast_from_a_quarter_predicts_half(planted):
    """Forecast from 25% of the clean training images, checked against probes trained on 50% of them."""
    from transfer.audit.curves import measure
    from transfer.audit.probe import fit_probe

    _, truth, _, job = planted
    feats = job.features(per_stage=False)
    clean = _clean(truth)
    keep = {s: [i for i, (p, _) in enumerate(getattr(job.index, s)) if p in clean] for s in ("train", "val")}
    x = {s: feats[s]["pre_logits"][keep[s]] for s in keep}
    y = {s: np.array([getattr(job.index, s)[i][1] for i in keep[s]]) for s in keep}
    rng = np.random.default_rng(0)
    quarter = rng.permutation(len(y["train"]))[: len(y["train"]) // 4]
    curve = measure(x["train"][quarter], y["train"][quarter], x["val"], y["val"], job.index.classes, seed=0)
    halves = [np.random.default_rng(s).permutation(len(y["train"]))[: len(y["train"]) // 2] for s in range(3)]
    at_half = np.mean(
        [(fit_probe(x["train"][h], y["train"][h], 10)(x["val"]).argmax(1).numpy() == y["val"]).mean() for h in halves]
    )
    predicted = curve.forecast["forecast_accuracy"]
    print(f"learning curve {curve.accuracy} -> forecast at 2x {predicted:.3f}, measured {at_half:.3f}")
    assert abs(predicted - at_half) <= 0.03


def test_the_full_audit_forecasts_and_says_so(planted):
    _, _, report, _ = planted
    assert report.learning_curve["forecast_accuracy"] > report.learning_curve["accuracy"][0]
    assert any(v.startswith("more data: twice the images") for v in report.verdicts)


def test_no_forecast_from_a_few_validation_images(planted):
    """30 validation images: every point of the curve is +-15 points; the audit says why it gives no forecast."""
    from transfer.audit.curves import measure
    from transfer.audit.findings import AuditReport, verdicts

    _, _, _, job = planted
    feats = job.features(per_stage=False)
    y = {s: np.array([lab for _, lab in getattr(job.index, s)]) for s in ("train", "val")}
    x = {s: feats[s]["pre_logits"] for s in y}
    curve = measure(x["train"], y["train"], x["val"][:30], y["val"][:30], job.index.classes, seed=0).to_dict()
    assert curve["forecast_accuracy"] is None and "too few validation images (30" in curve["no_forecast"]
    lines = verdicts(AuditReport("x", "y", classes={}, split_counts={}, learning_curve=curve))
    assert lines == ["more data: no forecast: " + curve["no_forecast"]]


# ---------------------------------------------------------------------------------------------------------------
# The command line and the fit


def test_cli_writes_json_and_exits_1_on_problems(workdir, capsys):
    root = leaky_digits_folder(workdir / "data")
    out = workdir / "audit.json"
    code = main(
        ["audit", str(root), "--pretrained", WEIGHTS, "--set", "data.image_size=32", "--json", str(out), "--no-curves"]
    )
    assert code == 1
    found = json.loads(out.read_text())
    assert {
        "classes",
        "exact_duplicates",
        "near_duplicates",
        "leaks",
        "label_issues",
        "outliers",
        "unreadable",
        "verdicts",
    } <= set(found)
    assert len(found["leaks"]) == 12 and found["classes"] == {"digit_0": 24, "digit_1": 24, "digit_7": 24}
    assert "leakage: 12 validation images" in capsys.readouterr().out


def test_cli_bad_source_exits_2_with_one_line(workdir, capsys):
    code = main(["audit", str(workdir / "missing"), "--pretrained", WEIGHTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]


def test_block_stops_a_fit_with_leakage(workdir, capsys):
    root = leaky_digits_folder(workdir / "data")
    recipe = write_recipe(workdir, data={"source": str(root), "audit": "block"}, strategy={"name": "linear_probe"})
    code = main(["fit", str(recipe)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "12 validation images are copies of training images" in err[0]
    assert not list(workdir.glob("runs/*/*.ckpt"))


def test_warn_logs_the_findings_and_trains(workdir):
    import mlflow

    from transfer.train import fit

    root = leaky_digits_folder(workdir / "data")
    result = fit(write_recipe(workdir, data={"source": str(root)}, strategy={"name": "linear_probe"}))
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(result.run_id, "audit")}
    assert {"audit/report.html", "audit/audit.json"} <= names
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["audit_leaks"] == 12 and "val_acc" in result.metrics


def test_a_second_fit_of_the_same_data_logs_the_audit_without_redoing_it(workdir, monkeypatch):
    import mlflow

    import transfer.audit
    from transfer.train import fit

    root = leaky_digits_folder(workdir / "data")
    fit(write_recipe(workdir, data={"source": str(root)}, strategy={"name": "linear_probe"}))

    def audit_again(*args, **kwargs):
        raise AssertionError("the same data was audited twice")

    monkeypatch.setattr(transfer.audit, "audit", audit_again)
    again = fit(write_recipe(workdir, "again.yaml", data={"source": str(root)}, strategy={"name": "linear_probe"}))
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(again.run_id).data.metrics["audit_leaks"] == 12
    assert "audit/report.html" in {a.path for a in client.list_artifacts(again.run_id, "audit")}


# ---------------------------------------------------------------------------------------------------------------
# Class sizes and pictures (no model needed)


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"a": 8, "b": 8, "c": 8}, ["few images: every class has fewer than 20 training images"]),
        ({"a": 60, "b": 60, "c": 60}, []),
        ({"a": 60, "b": 60, "c": 25}, ["imbalance: 'c' (25) have under half the training images of 'a' (60)"]),
    ],
    ids=["small-balanced", "balanced", "imbalanced"],
)
def test_class_size_verdicts_name_the_real_problem(train, expected):
    from transfer.audit.findings import AuditReport, verdicts

    report = AuditReport("src", "b", classes=train, split_counts={"train": train, "val": {}})
    lines = verdicts(report)
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected))
    assert report.exit_code == (1 if expected else 0)


def test_scan_finds_tiny_and_elongated_pictures(tmp_path):
    from PIL import Image

    from transfer.audit.scan import scan_files

    sizes = {"tiny.png": (20, 20), "strip.png": (400, 40), "fine.png": (64, 48)}
    for name, size in sizes.items():
        Image.new("RGB", size, (120, 60, 30)).save(tmp_path / name)
    facts = scan_files([(str(tmp_path / n), 0, "train") for n in sizes])
    assert [(f.problem or "").split(":")[0] for f in facts] == ["tiny", "extreme aspect ratio", ""]
