"""Exact IWD at analysis size 128 (14,884 patches): the float32-matrix route against the float64 one,
per kind of pair, and the whole `iwdctl measure` process on each pair alone.

The float64 route was checked against POT at 128 px (benchmarks/results/measure_speed.md: POT takes
6 minutes per pair there); the float32 route must give the same values. The pairs are
measure_speed.py's (nips17 photos from index `--first` on). In-process times exclude start-up; the
whole process (one per pair, so the goal's "per pair" holds for each) includes it (about 1 s).

    python benchmarks/big_iwd.py [--pairs 1] [--first 600] [--kinds noise,...] [--results big_iwd.md]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_results  # noqa: E402
from measure_speed import KINDS, make_pairs  # noqa: E402

from iwdctl.costs import cpu_threads  # noqa: E402
from iwdctl.images import load_image  # noqa: E402

engine = importlib.import_module("iwdctl.iwd")  # the module: `iwdctl.iwd` is the function


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--first", type=int, default=600, help="index of the first nips17 photo used")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--results", default="big_iwd.md", help="results file name")
    arguments = parser.parse_args()
    threads = cpu_threads()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_pairs(folder, arguments.pairs, arguments.first)
        for kind in arguments.kinds.split(","):
            names = sorted((folder / kind / "orig").glob("*.png"))
            seconds = {"float64": 0.0, "float32": 0.0}
            worst = 0.0
            for name in names:
                pair = torch.stack([load_image(name), load_image(folder / kind / "adv" / name.name)]).double()
                x, y = engine.analysis_view(pair, 128)
                values = {}
                for route, size in (("float64", 10**9), ("float32", engine.FLOAT32_ASSIGNMENT_SIZE)):
                    original, engine.FLOAT32_ASSIGNMENT_SIZE = engine.FLOAT32_ASSIGNMENT_SIZE, size
                    start = time.perf_counter()
                    values[route] = engine.exact_iwd(x, y, threads=threads)
                    seconds[route] += time.perf_counter() - start
                    engine.FLOAT32_ASSIGNMENT_SIZE = original
                worst = max(worst, abs(values["float32"] - values["float64"]) / values["float64"])
            wholes = []
            for name in names:
                report_path = folder / f"{kind}.json"
                pair = [str(folder / kind / "orig" / name.name), str(folder / kind / "adv" / name.name)]
                start = time.perf_counter()
                command = ["iwdctl", "measure", *pair, "--size", "128", "--json", str(report_path), "-q"]
                subprocess.run(command, check=True, capture_output=True)
                wholes.append(time.perf_counter() - start)
                assert all(entry["iwd_exact"] for entry in json.loads(report_path.read_text())["pairs"])
            count = len(names)
            rows.append(
                f"| {kind} | {seconds['float64'] / count:.2f} | {seconds['float32'] / count:.2f} | "
                f"{seconds['float64'] / seconds['float32']:.2f}x | {sum(wholes) / count:.2f} | {max(wholes):.2f} | "
                f"{worst:.1e} |"
            )
    text = header("Exact IWD at 128 px: float32-matrix route against float64")
    text += (
        f"\n{arguments.pairs} pair(s) per kind (nips17 photos {arguments.first} on), {threads} threads. In-process "
        "seconds per pair for each route (exact_iwd), then the whole `iwdctl measure --size 128` process on each "
        "pair alone (start-up included): mean and slowest pair.\n\n"
        "| kind | float64 route s | float32 route s | speed-up | whole process s / pair | slowest pair s | "
        "relative difference |\n| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    write_results(arguments.results, text)
    print(text)


if __name__ == "__main__":
    main()
