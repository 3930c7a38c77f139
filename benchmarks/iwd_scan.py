"""Exact IWD over many photos at one analysis size, in process: this tree against a base commit, pair by pair.

An outsider's view of the time per pair: every kind of measure_speed.py's pairs (make_pairs) for each
of `--photos` nips17 photos from `--first` on, read from their 8-bit files as `iwdctl measure` reads
them (read_image, then the analysis resize in float64). Each tree runs in its own worker process
(start-up excluded), which first measures every pair once untimed (its kernels compiled or loaded),
then the two alternate pair by pair, each pair twice, each tree first once (the machine is shared and
noisy). Reported per kind: mean and slowest seconds per pair for both trees, their ratio, the pairs
above `--limit` seconds, and the largest relative difference of values.

    python benchmarks/iwd_scan.py --base COMMIT [--first 458] [--photos 20] [--kinds noise,...]
        [--size 128] [--limit 5] [--results iwd_scan.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, each_first_once, header, write_results  # noqa: E402
from compare_commits import export  # noqa: E402
from measure_speed import KINDS, make_pairs  # noqa: E402

# Reads pairs (original, adversarial, size) from stdin, one JSON list per line; answers [value, seconds].
WORKER = """
import importlib, json, sys, time
import numpy as np
from iwdctl.images import read_image
engine = importlib.import_module("iwdctl.iwd")
for line in sys.stdin:
    original, adversarial, size = json.loads(line)
    pair = np.stack([read_image(original), read_image(adversarial)]).astype(np.float64)
    x, y = engine.analysis_array(pair, size)
    start = time.perf_counter()
    value = engine.exact_iwd(x, y, threads=2)
    print(json.dumps([value, time.perf_counter() - start]), flush=True)
"""


class Worker:
    """One tree's worker process."""

    def __init__(self, tree: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(self, original: Path, adversarial: Path, size: int) -> tuple[float, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps([str(original), str(adversarial), size]) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise SystemExit("a worker died (see its stderr above)")
        value, seconds = json.loads(answer)
        return value, seconds

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit this tree is compared with")
    parser.add_argument("--first", type=int, default=458, help="index of the first nips17 photo used")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--kinds", default="noise,gaussian,blur,jpeg,shift,rotation")
    parser.add_argument("--size", type=int, default=128, help="analysis size")
    parser.add_argument("--limit", type=float, default=5.0, help="seconds per pair counted as slow")
    parser.add_argument("--results", default="iwd_scan.md", help="results file name")
    arguments = parser.parse_args()
    kinds = arguments.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        raise SystemExit(f"unknown kinds: {', '.join(sorted(unknown))}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_pairs(folder, arguments.photos, arguments.first)
        base_hash = export(arguments.base, folder / "base")
        workers = {"base": Worker(folder / "base"), "head": Worker(ROOT)}
        pairs = {
            kind: [(name, folder / kind / "adv" / name.name) for name in sorted((folder / kind / "orig").glob("*.png"))]
            for kind in kinds
        }
        # Untimed, every pair: the exported base tree has no numba cache, and a kernel compiled inside a
        # timed pair (a route its warm-up did not take) would count seconds of compilation against it.
        for kind_pairs in pairs.values():
            for original, adversarial in kind_pairs:
                for worker in workers.values():
                    worker.measure(original, adversarial, arguments.size)
        for kind in kinds:
            seconds: dict[str, list[float]] = {"base": [], "head": []}
            worst = 0.0
            for original, adversarial in pairs[kind]:
                values, mean_seconds = {}, {name: 0.0 for name in workers}
                for order in each_first_once(workers):
                    for name in order:
                        values[name], pair_seconds = workers[name].measure(original, adversarial, arguments.size)
                        mean_seconds[name] += pair_seconds / len(workers)
                for name in workers:
                    seconds[name].append(mean_seconds[name])
                worst = max(worst, abs(values["head"] - values["base"]) / values["base"])
            base, head = seconds["base"], seconds["head"]
            slow = sum(taken > arguments.limit for taken in head), sum(taken > arguments.limit for taken in base)
            rows.append(
                f"| {kind} | {sum(base) / len(base):.2f} | {sum(head) / len(head):.2f} | {sum(base) / sum(head):.2f}x | "
                f"{max(base):.2f} | {max(head):.2f} | {slow[1]} / {slow[0]} | {worst:.1e} |"
            )
        for worker in workers.values():
            worker.close()
    text = header(f"Exact IWD at {arguments.size} px over many photos: this tree against {base_hash}")
    text += (
        f"\n{arguments.photos} nips17 photos from {arguments.first} on, one pair of each kind per photo (measure_speed.py's "
        "pairs), read from their 8-bit files as `iwdctl measure` reads them; exact_iwd in process (2 threads, start-up "
        f"excluded), after an untimed pass over every pair, the two trees alternating pair by pair, each pair twice, each tree first once (seconds per pair: the mean of the two). Slow: pairs above {arguments.limit:g} s.\n\n"
        f"| kind | base s / pair | this tree s / pair | base / this tree | base slowest s | this tree slowest s | "
        "slow pairs base / this tree | values' difference |\n" + "| --- " * 8 + "|\n" + "\n".join(rows) + "\n"
    )
    write_results(arguments.results, text)
    print(text)


if __name__ == "__main__":
    main()
