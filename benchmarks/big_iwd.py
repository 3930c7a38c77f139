"""Exact IWD at analysis size 128 (14,884 patches; `--size` another): the float32-matrix route against the
float64 one, per kind of pair, and the whole `iwdctl measure` process on each pair alone.

The float64 route was checked against POT at 128 px (benchmarks/results/measure_speed.md: POT takes
6 minutes per pair there); the float32 route must give the same values. The pairs are
measure_speed.py's (nips17 photos from index `--first` on). In-process times exclude start-up; the
whole process (one per pair, so the goal's "per pair" holds for each) includes it (about 1 s).
With `--base COMMIT` the whole process also runs from that commit's tree (compare_commits.export),
alternating with this one pair by pair, each pair once with each tree first (the machine is shared and
noisy), after an untimed run of each tree on every pair (numba compiles kernels once per tree): the
ratio of a change.

    python benchmarks/big_iwd.py [--pairs 1] [--first 600] [--kinds noise,...] [--results big_iwd.md]
        [--base COMMIT] [--size 128] [--pick darkest|whitest]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, each_first_once, header, write_results  # noqa: E402
from compare_commits import export  # noqa: E402
from measure_speed import KINDS, PICKS, make_pairs  # noqa: E402

from iwdctl.costs import cpu_threads  # noqa: E402
from iwdctl.images import load_image  # noqa: E402

engine = importlib.import_module("iwdctl.iwd")  # the module: `iwdctl.iwd` is the function


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--first", type=int, default=600, help="index of the first nips17 photo used")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--results", default="big_iwd.md", help="results file name")
    parser.add_argument("--base", help="also time the whole process at this commit, alternating with this tree")
    parser.add_argument("--size", type=int, default=128, help="analysis size")
    parser.add_argument("--pick", choices=PICKS, default="first", help="which photos from --first on")
    arguments = parser.parse_args()
    threads = cpu_threads()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_pairs(folder, arguments.pairs, arguments.first, arguments.pick)
        trees = {"head": ROOT}
        if arguments.base:
            trees["base"] = folder / "base"
            base_hash = export(arguments.base, trees["base"])
        for kind in arguments.kinds.split(","):
            names = sorted((folder / kind / "orig").glob("*.png"))
            seconds = {"float64": 0.0, "float32": 0.0}
            worst = 0.0
            for name in names:
                pair = torch.stack([load_image(name), load_image(folder / kind / "adv" / name.name)]).double()
                x, y = engine.analysis_view(pair, arguments.size)
                values = {}
                for route, size in (("float64", 10**9), ("float32", engine.FLOAT32_ASSIGNMENT_SIZE)):
                    original, engine.FLOAT32_ASSIGNMENT_SIZE = engine.FLOAT32_ASSIGNMENT_SIZE, size
                    start = time.perf_counter()
                    values[route] = engine.exact_iwd(x, y, threads=threads)
                    seconds[route] += time.perf_counter() - start
                    engine.FLOAT32_ASSIGNMENT_SIZE = original
                worst = max(worst, abs(values["float32"] - values["float64"]) / values["float64"])
            if arguments.base:
                # Untimed, every pair: each tree compiles (and caches) the kernels its pairs need. A warm-up
                # on the kind's first pair alone left the base tree compiling in timed runs where a later
                # pair took another route (64 px noise pairs of photos 860-863: 6.0 and 8.4 s, then 1.3-1.4 s).
                for name in names:
                    for tree in trees.values():
                        whole_process(
                            tree, name, folder / kind / "adv" / name.name, folder / "warm.json", arguments.size
                        )
            wholes: dict[str, list[float]] = {name: [] for name in trees}
            values: dict[str, list[float]] = {name: [] for name in trees}
            for name in names:
                mean_seconds, value_of = {tree_name: 0.0 for tree_name in trees}, {}
                for order in each_first_once(trees):
                    for tree_name in order:
                        report_path = folder / f"{kind}-{tree_name}.json"
                        seconds_taken, value_of[tree_name] = whole_process(
                            trees[tree_name], name, folder / kind / "adv" / name.name, report_path, arguments.size
                        )
                        mean_seconds[tree_name] += seconds_taken / len(trees)
                for tree_name in trees:
                    wholes[tree_name].append(mean_seconds[tree_name])
                    values[tree_name].append(value_of[tree_name])
            count = len(names)
            head = wholes["head"]
            # make_pairs names pair k of a kind k.png, made from nips17 photo first + k (with --pick,
            # the k-th in that order from there).
            stem = int(names[head.index(max(head))].stem)
            slowest = f"photo {arguments.first + stem}" if arguments.pick == "first" else f"{arguments.pick} {stem + 1}"
            row = (
                f"| {kind} | {seconds['float64'] / count:.2f} | {seconds['float32'] / count:.2f} | "
                f"{seconds['float64'] / seconds['float32']:.2f}x | {sum(head) / count:.2f} | {max(head):.2f} ({slowest}) | "
                f"{worst:.1e} |"
            )
            if arguments.base:
                base = wholes["base"]
                differences = [abs(a - b) / b for a, b in zip(values["head"], values["base"])]
                row += f" {sum(base) / count:.2f} | {sum(base) / sum(head):.2f}x | {max(differences):.1e} |"
            rows.append(row)
    text = header(f"Exact IWD at {arguments.size} px: float32-matrix route against float64")
    text += (
        f"\n{arguments.pairs} pair(s) per kind (nips17 photos {arguments.first} on), {threads} threads. In-process "
        f"seconds per pair for each route (exact_iwd), then the whole `iwdctl measure --size {arguments.size}` process on each "
        "pair alone (start-up included): mean and slowest pair.\n\n"
        "| kind | float64 route s | float32 route s | speed-up | whole process s / pair | slowest pair s | "
        "relative difference |"
    )
    if arguments.base:
        text = text.replace(
            "alone (start-up included): mean and slowest pair.",
            f"alone (start-up included): mean and slowest pair; then the same at base {base_hash} (run "
            "alternately with this tree, pair by pair, each pair once with each tree first: the mean of the two), "
            "the ratio base / this tree, and the largest relative difference of their values.",
        )
        text += " base whole process s / pair | base / this tree | values' difference |"
    columns = text.rsplit("\n", 1)[-1].count("|") - 1
    text += "\n" + "| --- " * columns + "|\n" + "\n".join(rows) + "\n"
    write_results(arguments.results, text)
    print(text)


def whole_process(tree: Path, original: Path, adversarial: Path, report: Path, size: int) -> tuple[float, float]:
    """Seconds of one `iwdctl measure --size SIZE` process run from `tree`, and the IWD it reports."""
    command = [sys.executable, "-m", "iwdctl", "measure", str(original), str(adversarial), "--size", str(size)]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--json", str(report), "-q"],
        check=True,
        capture_output=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    seconds = time.perf_counter() - start
    (entry,) = json.loads(report.read_text())["pairs"]
    assert entry["iwd_exact"]
    return seconds, entry["iwd"]


if __name__ == "__main__":
    main()
