"""One `iwdctl attack` command on two commits of this repository, interleaved, in one run.

Each commit is exported (`git archive`) to a scratch folder and run from there, so the two trees
differ only in their code; runs alternate (A B A B ...) because this machine is shared and noisy.
Reported per run: the whole process, and the sum of the report's per-image attack seconds.

    python benchmarks/compare_commits.py --base dda7725 [--head HEAD] [--method iwda-fast] [--images 48]
        [--repeats 2] [--results NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, header, write_results  # noqa: E402


def export(commit: str, folder: Path) -> str:
    """The commit's tree in `folder`; returns its short hash."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", commit], check=True, capture_output=True, text=True
    ).stdout.strip()


def run(tree: Path, out: Path, arguments: argparse.Namespace) -> tuple[float, float, dict[str, float]]:
    command = [sys.executable, "-m", "iwdctl", "attack", str(SHARED / "nips17"), "--model", "efficientnet_lite0"]
    command += ["--method", arguments.method, "--iwd", arguments.iwd, "--limit", str(arguments.images)]
    command += ["--batch-size", "16", "--device", "cpu", "-q", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    attack_seconds = sum(image.get("seconds", 0.0) for image in report["images"])
    summary = report["summary"]
    return seconds, attack_seconds, {key: summary[key] for key in ("asr", "mean_l2", "mean_iwd")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--method", default="iwda-fast")
    parser.add_argument("--iwd", default="exact")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", default="compare_commits.md")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        trees = {name: Path(scratch) / name for name in ("base", "head")}
        hashes = {name: export(getattr(arguments, name), tree) for name, tree in trees.items()}
        for repeat in range(arguments.repeats):
            for name, tree in trees.items():
                seconds, attack, summary = run(tree, Path(scratch) / f"out-{name}-{repeat}", arguments)
                rows.append((name, repeat, seconds, attack, summary))
    best = {name: min(row[2] for row in rows if row[0] == name) for name in trees}
    best_attack = {name: min(row[3] for row in rows if row[0] == name) for name in trees}
    lines = [
        header("One attack command on two commits"),
        f"\n`iwdctl attack --method {arguments.method} --iwd {arguments.iwd}`, {arguments.images} nips17 "
        f"images, efficientnet_lite0, batch 16, CPU; base {hashes['base']}, head {hashes['head']}; runs "
        "interleaved. Attack seconds: the sum of the report's per-image seconds.\n",
        "| commit | repeat | whole process s | attack s | ASR | mean l2 | mean IWD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, repeat, seconds, attack, summary in rows:
        iwd = "-" if summary["mean_iwd"] is None else f"{summary['mean_iwd']:.6f}"
        lines.append(
            f"| {name} ({hashes[name]}) | {repeat + 1} | {seconds:.1f} | {attack:.1f} | "
            f"{100 * summary['asr']:.1f}% | {summary['mean_l2']:.4f} | {iwd} |"
        )
    lines.append(
        f"\nFastest runs: whole process {best['base'] / best['head']:.2f}x faster at head, "
        f"attack {best_attack['base'] / best_attack['head']:.2f}x "
        f"({best_attack['head'] / arguments.images:.2f} s/image at head, "
        f"{best_attack['base'] / arguments.images:.2f} at base)."
    )
    print(write_results(arguments.results, "\n".join(lines) + "\n").read_text())


if __name__ == "__main__":
    main()
