from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from iwdctl.cli import main

from .conftest import shared_data


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iwdctl", *args], capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_subcommand():
    result = run("--help")
    assert result.returncode == 0
    for name in ("attack", "defend", "measure", "eval"):
        assert name in result.stdout


def test_help_reflows_each_paragraph_to_the_terminal_width():
    # A docstring's line breaks would split "(cat_adv0.png pairs with cat.png)" wherever they fall.
    result = run("measure", "--help", env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    assert "(cat_adv0.png pairs with cat.png)" in result.stdout


def test_eval_on_nips17_subset_writes_json(tmp_path, capsys):
    root = shared_data("nips17")
    code = main(["eval", "--data", str(root), "--limit", "32", "--json", str(tmp_path / "r.json"), "-q"])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"] == "efficientnet_lite0" and result["n"] == 32
    assert 0.6 <= result["top1"] <= result["top5"] <= 1.0


def test_eval_default_image_shows_top5(capsys):
    assert main(["eval"]) == 0
    out = capsys.readouterr().out
    assert "grace_hopper" in out and out.count("(") >= 5


def _bad_inputs(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    (tmp_path / "labels.csv").write_text("file,label\na.png,barn\n")
    (tmp_path / "no_target.csv").write_text("file,label,target\na.png,barn,\n")
    (tmp_path / "ckpt.safetensors").write_bytes(b"garbage")
    return {
        "missing path": ["eval", "--data", str(tmp_path / "absent")],
        "empty folder": ["eval", "--data", str(tmp_path / "empty")],
        "unlabelled folder": ["eval", "--data", str(tmp_path / "flat")],
        "csv without columns": ["eval", "--data", str(tmp_path / "flat"), "--labels", str(tmp_path / "bad.csv")],
        "unknown model": ["eval", "--model", "nope"],
        "corrupt checkpoint": ["eval", "--model", str(tmp_path / "ckpt.safetensors")],
        "torchvision without weights": ["eval", "--model", "resnet101"],
        "defend without train/": ["defend", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "m.safetensors")],
        "defend unknown method": ["defend", "--data", str(tmp_path / "flat"), "--method", "magic"],
        "attack unknown method": ["attack", str(tmp_path / "flat"), "--method", "magic"],
        "attack unknown target": ["attack", str(tmp_path / "flat"), "--target", "barnn"],
        "attack negative refine": ["attack", str(tmp_path / "flat"), "--method", "iwda", "--refine", "-1"],
        "attack no candidates": ["attack", str(tmp_path / "flat"), "--method", "iwda", "--candidates", "0"],
        "attack unreadable image in a worker": [
            "attack",
            str(tmp_path / "text.png"),
            "--method",
            "fgsm",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        "attack image without a target": [
            "attack",
            str(tmp_path / "flat"),
            "--targets-from",
            str(tmp_path / "no_target.csv"),
            "--out",
            str(tmp_path / "deep" / "out"),
        ],
        "measure view smaller than a patch": ["measure", *[str(tmp_path / "flat" / "a.png")] * 2, "--size", "3"],
        "eval unknown attack": [
            "eval",
            "--model",
            "efficientnet_lite0",
            "--data",
            str(tmp_path / "flat"),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--attack",
            "pgdx",
        ],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "empty folder",
        "unlabelled folder",
        "csv without columns",
        "unknown model",
        "corrupt checkpoint",
        "torchvision without weights",
        "defend without train/",
        "defend unknown method",
        "attack unknown method",
        "attack unknown target",
        "attack negative refine",
        "attack no candidates",
        "attack unreadable image in a worker",
        "attack image without a target",
        "measure view smaller than a patch",
        "eval unknown attack",
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    args = _bad_inputs(tmp_path)[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwdctl: error:") and "\n" not in err and "Traceback" not in err
    assert main(["--debug", *args]) == 2
    assert "Traceback" in capsys.readouterr().err
    if "--out" in args:  # nothing half-written: not even an empty folder
        assert not (tmp_path / "out").exists() and not (tmp_path / "deep").exists()


def test_unknown_option_is_usage_error():
    result = run("eval", "--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
