"""The paper's Table 2 at tiny6 scale: natural, free, PGD and IWDD training of one architecture with
one schedule, then clean and PGD-10 accuracy on tiny6/val, and seconds per epoch of each method.

Trains through `iwdctl defend` itself and writes the checkpoints to weights/ (the shipped weights),
their description to weights/README.md and the table to benchmarks/results/defense_benchmark.md.

    python benchmarks/defense_benchmark.py [--epochs 12] [--batch-size 32] [--lr 0.05] [--arch preact_resnet18_w16]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, header, write_results  # noqa: E402

METHODS = ("natural", "free", "pgd", "iwdd")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--arch", default="preact_resnet18_w16")
    parser.add_argument("--methods", default=",".join(METHODS))
    arguments = parser.parse_args()
    data = SHARED / "tiny6"
    weights = ROOT / "weights"
    rows, commands, descriptions = [], [], []
    for method in arguments.methods.split(","):
        out = weights / f"tiny6-{arguments.arch}-{method}.safetensors"
        train = ["iwdctl", "defend", "--data", str(data), "--method", method, "--arch", arguments.arch]
        train += [
            "--epochs",
            str(arguments.epochs),
            "--batch-size",
            str(arguments.batch_size),
            "--lr",
            str(arguments.lr),
        ]
        train += ["--out", str(out), "-q"]
        start = time.perf_counter()
        subprocess.run(train, check=True)
        train_seconds = time.perf_counter() - start
        with open(out.with_suffix(".metrics.csv")) as handle:
            epochs = list(csv.DictReader(handle))
        per_epoch = sum(float(row["seconds"]) for row in epochs) / len(epochs)
        with tempfile.TemporaryDirectory() as temporary:
            result_path = Path(temporary) / "eval.json"
            evaluate = [
                "iwdctl",
                "eval",
                "--model",
                str(out),
                "--data",
                str(data / "val"),
                "--attack",
                "pgd10",
                "--json",
                str(result_path),
                "-q",
            ]
            subprocess.run(evaluate, check=True, capture_output=True)
            result = json.loads(result_path.read_text())
        shown = [
            " ".join(command).replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", "")
            for command in (train, evaluate)
        ]
        commands += shown
        size_mb = out.stat().st_size / 1e6
        rows.append(
            f"| {method} | {100 * result['top1']:.1f} | {100 * result['robust']['pgd10']:.1f} | {len(epochs)} | {per_epoch:.1f} | {train_seconds:.0f} | {size_mb:.1f} |"
        )
        descriptions.append(
            f"### `{out.name}`\n\n- trained with: `{shown[0]}`\n- evaluated with: `{shown[1]}`\n"
            f"- training time: {train_seconds:.0f} s ({len(epochs)} passes, {per_epoch:.1f} s each)\n"
            f"- tiny6/val: clean {100 * result['top1']:.1f}%, PGD-10 (eps 8/255, step 2/255, random start) {100 * result['robust']['pgd10']:.1f}%\n"
        )
        print(rows[-1], flush=True)
    table = [
        "| method | clean % | PGD-10 % | passes | s / pass | training s | MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    text = header(f"Defenses on tiny6 ({arguments.arch}, {arguments.epochs} epochs)")
    text += "\nClean and PGD-10 accuracy on tiny6/val (300 images, 6 classes). Free training runs epochs/m passes of m = 4 replays.\n\n"
    text += "\n".join(table) + "\n\nCommands:\n\n" + "\n".join(f"    {command}" for command in commands) + "\n"
    write_results("defense_benchmark.md", text)
    readme = "# Shipped weights\n\n" + text.split("\n", 1)[1].split("Commands:")[0]
    readme += "\nLoad with `iwdctl.load_classifier('weights/<file>')`; inputs are 32x32 RGB in [0, 1].\n\n" + "\n".join(
        descriptions
    )
    (weights / "README.md").write_text(readme)
    print(text)


if __name__ == "__main__":
    main()
