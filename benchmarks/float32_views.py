"""Exact IWD of analysis views resized in float32, per kind of pair: this tree against `--base`.

`iwdctl measure` resizes in float64; the Python API takes float32 images as they are at their native
size (a generator's output), and such views tie differently: nips17 photo 820 against its JPEG copy,
resized in float32 to 128 px, left the dual repair unable to prove the auction's assignment (730 tight
edges per row). Each pair's views are saved once, then `exact_iwd` runs on them in a fresh process per
pair and tree (in-process seconds, start-up excluded), the trees alternating pair by pair (the machine
is shared and noisy), after an untimed run per tree on each kind's first pair and on every pair of
the first kind (numba compiles and caches the kernels a tree uses: a cold tree's first pairs are
seconds slower). The pairs are measure_speed.py's (nips17 photos from `--first` on).

    python benchmarks/float32_views.py --base COMMIT [--pairs 4] [--first 600] [--kinds jpeg,shift]
        [--size 128] [--results float32_views.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, write_results  # noqa: E402
from compare_commits import export  # noqa: E402
from measure_speed import KINDS, make_pairs  # noqa: E402

from iwdctl.costs import cpu_threads  # noqa: E402
from iwdctl.images import load_image  # noqa: E402
from iwdctl.iwd import analysis_view  # noqa: E402

TIMED = (
    "import json, sys, time\n"
    "import numpy as np\n"
    "from iwdctl.iwd import exact_iwd\n"
    "pair = np.load(sys.argv[1])\n"
    "start = time.perf_counter()\n"
    "value = exact_iwd(pair[0], pair[1], threads=int(sys.argv[2]))\n"
    "print(json.dumps([time.perf_counter() - start, value]))\n"
)


def timed_run(tree: Path, views: Path, threads: int) -> tuple[float, float]:
    """Seconds of exact_iwd on the saved views in a fresh process from `tree`, and the value."""
    result = subprocess.run(
        [sys.executable, "-c", TIMED, str(views), str(threads)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    seconds, value = json.loads(result.stdout.strip().splitlines()[-1])
    return float(seconds), float(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit to compare with, run alternately")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--first", type=int, default=600, help="index of the first nips17 photo used")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--size", type=int, default=128, help="analysis size")
    parser.add_argument("--results", default="float32_views.md", help="results file name")
    arguments = parser.parse_args()
    threads = cpu_threads()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_pairs(folder, arguments.pairs, arguments.first)
        trees = {"head": ROOT, "base": folder / "base"}
        base_hash = export(arguments.base, trees["base"])
        first_kind = arguments.kinds.split(",")[0]
        for kind in arguments.kinds.split(","):
            seconds: dict[str, list[float]] = {name: [] for name in trees}
            values: dict[str, list[float]] = {name: [] for name in trees}
            for index, name in enumerate(sorted((folder / kind / "orig").glob("*.png"))):
                pair = torch.stack([load_image(name), load_image(folder / kind / "adv" / name.name)]).float()
                views = folder / f"{kind}-{name.stem}.npy"
                np.save(views, analysis_view(pair, arguments.size).numpy())
                if kind == first_kind or index == 0:
                    for tree in trees.values():
                        timed_run(tree, views, threads)
                for tree_name in sorted(trees, reverse=index % 2 == 1):
                    taken, value = timed_run(trees[tree_name], views, threads)
                    seconds[tree_name].append(taken)
                    values[tree_name].append(value)
                    print(f"{kind} {name.stem} {tree_name}: {taken:.2f} s, {value:.15f}", flush=True)
            head, base = seconds["head"], seconds["base"]
            slowest = int(np.argmax(head))
            difference = max(abs(a - b) / b for a, b in zip(values["head"], values["base"]))
            rows.append(
                f"| {kind} | {np.mean(head):.2f} | {head[slowest]:.2f} (photo {arguments.first + slowest}) | "
                f"{base[slowest]:.2f} | {np.mean(base):.2f} | {sum(base) / sum(head):.2f}x | {difference:.1e} |"
            )
    text = header(f"Exact IWD of float32-resized views at {arguments.size} px: this tree against base {base_hash}")
    text += (
        f"\n{arguments.pairs} pair(s) per kind (nips17 photos {arguments.first} on), {threads} threads; each pair's "
        f"views resized in float32 (analysis_view of float32 tensors), exact_iwd in a fresh process per pair and "
        f"tree, in-process seconds, the trees alternating pair by pair.\n\n"
        "| kind | this tree s / pair | slowest pair s | base on that pair s | base s / pair | base / this tree | "
        "values' difference |\n| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    write_results(arguments.results, text)
    print(text)


if __name__ == "__main__":
    main()
