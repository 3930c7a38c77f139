"""The paper's Table 2 at tiny6 scale: natural, free, PGD and IWDD training of one architecture with
one schedule, then clean and PGD-10 accuracy on tiny6/val, and seconds per epoch of each method.

Trains through `iwdctl defend` itself and writes the checkpoints to weights/ (the shipped weights),
their description to weights/README.md and the table to benchmarks/results/defense_benchmark.md.
Methods left out of --methods are not retrained: their shipped checkpoint is evaluated again and
described from its metadata, so the table always has all four rows. The hand-written notes in
benchmarks/defense_notes.md (what was changed and tried, and why) follow the table in both files.

    python benchmarks/defense_benchmark.py [--epochs 12] [--batch-size 32] [--lr 0.05] [--beta 0.1] [--methods ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, header, write_results  # noqa: E402

from iwdctl.files import write_text_atomic  # noqa: E402
from iwdctl.models import load_classifier  # noqa: E402

METHODS = ("natural", "free", "pgd", "iwdd")
DATA = SHARED / "tiny6"


def train_command(out: Path, method: str, arch: str, settings: dict[str, Any]) -> list[str]:
    command = ["iwdctl", "defend", "--data", str(DATA), "--method", method, "--arch", arch]
    command += ["--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"])]
    command += ["--lr", str(settings["lr"])]
    if method == "iwdd":
        command += ["--beta", str(settings["beta"])]
    return [*command, "--out", str(out), "-q"]


def shown(command: list[str]) -> str:
    return " ".join(command).replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.1, help="IWDD's weight of the clean loss")
    parser.add_argument("--arch", default="preact_resnet18_w16")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods to (re)train")
    arguments = parser.parse_args()
    retrain = arguments.methods.split(",")
    weights = ROOT / "weights"
    rows, commands, descriptions = [], [], []
    for method in METHODS:
        out = weights / f"tiny6-{arguments.arch}-{method}.safetensors"
        if method in retrain:
            subprocess.run(train_command(out, method, arguments.arch, vars(arguments)), check=True)
        model = load_classifier(out, device="cpu")
        train = train_command(out, method, arguments.arch, model.metadata["hyperparameters"])
        train_seconds = model.metadata["seconds"]
        with open(out.with_suffix(".metrics.csv")) as handle:
            passes = len(list(csv.DictReader(handle)))
        with tempfile.TemporaryDirectory() as temporary:
            result_path = Path(temporary) / "eval.json"
            evaluate = ["iwdctl", "eval", "--model", str(out), "--data", str(DATA / "val"), "--attack", "pgd10"]
            subprocess.run([*evaluate, "--json", str(result_path), "-q"], check=True, capture_output=True)
            result = json.loads(result_path.read_text())
        commands += [shown(train), shown(evaluate)]
        clean, robust = 100 * result["top1"], 100 * result["robust"]["pgd10"]
        per_pass = train_seconds / passes
        rows.append(
            f"| {method} | {clean:.1f} | {robust:.1f} | {passes} | {per_pass:.1f} | {train_seconds:.0f} | {out.stat().st_size / 1e6:.1f} |"
        )
        descriptions.append(
            f"### `{out.name}`\n\n- trained with: `{shown(train)}`\n- evaluated with: `{shown(evaluate)}`\n"
            f"- training time: {train_seconds:.0f} s ({passes} passes, {per_pass:.1f} s each)\n"
            f"- tiny6/val: clean {clean:.1f}%, PGD-10 (eps 8/255, step 2/255, random start) {robust:.1f}%\n"
        )
        print(rows[-1], flush=True)
    table = [
        "| method | clean % | PGD-10 % | passes | s / pass | training s | MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    text = header(f"Defenses on tiny6 ({arguments.arch}, {arguments.epochs} epochs)")
    text += (
        "\nClean and PGD-10 accuracy on tiny6/val (300 images, 6 classes). Free training runs epochs/m passes "
        "of m = 4 replays. Training seconds are the sum of the epochs' own timings (metadata `seconds`).\n\n"
    )
    notes = Path(__file__).with_name("defense_notes.md")
    if notes.exists():
        table.append("\n" + notes.read_text().strip())
    text += "\n".join(table) + "\n\nCommands:\n\n" + "\n".join(f"    {command}" for command in commands) + "\n"
    write_results("defense_benchmark.md", text)
    readme = "# Shipped weights\n\n" + text.split("\n", 1)[1].split("Commands:")[0]
    readme += "\nLoad with `iwdctl.load_classifier('weights/<file>')`; inputs are 32x32 RGB in [0, 1].\n\n" + "\n".join(
        descriptions
    )
    write_text_atomic(weights / "README.md", readme)
    print(text)


if __name__ == "__main__":
    main()
