"""`transfer zoo list|info`: what a user sees, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import zoo
from transfer.cli import main


def test_zoo_list_table(capsys) -> None:
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "params", "year"]
    assert len(lines) == 1 + len(zoo.list_models())
    row = next(line for line in lines if line.startswith("resnet50 "))
    assert "25.6M" in row and "2015" in row and "timm, torchvision" in row


def test_zoo_list_pattern_and_json(capsys) -> None:
    assert main(["zoo", "list", "mobilenet*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(zoo.list_models("mobilenet*"))


def test_zoo_info(capsys) -> None:
    assert main(["zoo", "info", "mobilenet_v2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "mobilenetv2_100" and info["weights"]["torchvision"] == "mobilenet_v2"
    assert info["arxiv"] == "1801.04381"


def test_zoo_info_unknown_is_one_line_exit_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "transfer", "zoo", "info", "resnet5O"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "unknown model 'resnet5O'" in out.stderr and "resnet50" in out.stderr
