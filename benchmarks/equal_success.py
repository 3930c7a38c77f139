"""IWD at equal success against the shipped robust tiny6 models: IWDA against PGD with budgets raised
until PGD fools as many images.

PGD-10 at its default 8/255 fools only a quarter of the images a robust model classifies correctly,
where IWDA fools them all, so comparing their mean IWDs compares different images. This benchmark
runs PGD at a grid of l-inf budgets on the same images and compares, image by image, on the
correctly classified images that both fool: IWDA against PGD at each budget, and against PGD at each
image's least budget of the grid that fools it (a budget-adaptive PGD, the cheapest l-inf example
the grid finds). Every attack runs through `iwdctl attack`, like attack_benchmark.py.

    python benchmarks/equal_success.py                                     # iwda-ot, 10 images per class
    python benchmarks/equal_success.py --methods iwda --per-class 10 --results equal_success_gan.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_benchmark import PLAN, TINY6_WEIGHTS, balanced_subset, run_attack  # noqa: E402
from common import ROOT, SHARED, header, write_results  # noqa: E402

BUDGETS = ("8/255", "16/255", "32/255", "64/255")
ROBUST = ("pgd", "free", "iwdd")


def records(out: Path) -> dict[str, dict]:
    """The run's per-image records of the images the victim classified correctly before the attack."""
    images = json.loads((out / "report.json").read_text())["images"]
    return {record["key"]: record for record in images if record["pred_before"] == record["label"]}


def head_to_head(ours: dict[str, dict], theirs: dict[str, dict]) -> str:
    """Our mean IWD against theirs on the images both fool, and on how many ours is lower."""
    both = [key for key in ours if ours[key]["success"] and theirs[key]["success"]]
    if not both:
        return "none fooled by both"
    lower = sum(ours[key]["iwd"] < theirs[key]["iwd"] for key in both)
    return (
        f"{mean(ours[key]['iwd'] for key in both):.4f} vs {mean(theirs[key]['iwd'] for key in both):.4f}, "
        f"lower on {lower} of {len(both)}"
    )


def row(name: str, runs: dict[str, dict], ours: dict[str, dict[str, dict]]) -> str:
    """A table row: the run's success and mean distances, then each IWDA variant against it."""
    fooled = [record for record in runs.values() if record["success"]]
    cells = " | ".join("-" if mine is runs else head_to_head(mine, runs) for mine in ours.values())
    if not fooled:
        return f"| {name} | 0 of {len(runs)} | - | - | - | {cells} |"
    return (
        f"| {name} | {len(fooled)} of {len(runs)} | {mean(r['l2'] for r in fooled):.3f} | "
        f"{mean(r['linf'] for r in fooled):.4f} | {mean(r['iwd'] for r in fooled):.5f} | {cells} |"
    )


def least_budget(grid: dict[str, dict[str, dict]]) -> tuple[dict[str, dict], float]:
    """Per image, the record of the smallest budget that fools it (else the largest budget's), and
    the mean of those budgets over the fooled images (in 1/255)."""
    chosen: dict[str, dict] = {}
    budgets = []
    for key in grid[BUDGETS[0]]:
        fooling = [budget for budget in BUDGETS if grid[budget][key]["success"]]
        chosen[key] = grid[fooling[0] if fooling else BUDGETS[-1]][key]
        if fooling:
            budgets.append(float(fooling[0].split("/")[0]))
    return chosen, (mean(budgets) if budgets else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--victims", default=",".join(ROBUST), help="tiny6 models: pgd, free, iwdd, natural")
    parser.add_argument("--methods", default="iwda-ot", help="IWDA variants (attack_benchmark.py's names)")
    parser.add_argument("--per-class", type=int, default=10, help="tiny6/val images per class")
    parser.add_argument("--keep", type=Path, help="keep the attacks' output folders here (default: discarded)")
    parser.add_argument("--results", default="equal_success.md", help="results file name")
    arguments = parser.parse_args()
    options = {method: extra for method, _, extra in PLAN}
    methods = arguments.methods.split(",")
    if unknown := [method for method in methods if method not in options]:
        parser.error(f"unknown method {', '.join(unknown)}; known: {', '.join(options)}")
    lines = [
        header("IWD at equal success: IWDA against PGD at raised budgets, robust tiny6 models"),
        f"\n{6 * arguments.per_class} tiny6/val images ({arguments.per_class} per class), untargeted; every figure "
        "is over the images the victim classifies correctly before the attack. Fooled: how many of those the "
        "saved 8-bit PNG fools; l2, l-inf and IWD (7x7 patches, analysis size 64): means over the fooled ones. "
        "The last columns compare image by image on the images both fool: IWDA's mean IWD against the row's, "
        "and on how many IWDA's is lower. `pgd, least budget`: each image's PGD example at the smallest budget "
        f"of {', '.join(BUDGETS)} that fools it.\n",
    ]
    commands: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        temporary = Path(arguments.keep or scratch)
        data = balanced_subset(SHARED / "tiny6" / "val", arguments.per_class, temporary / "subset")

        def attack(victim: str, method: str, extra: list[str]) -> dict[str, dict]:
            out = temporary / f"{victim}-{method.replace('/', '_')}"
            model = str(ROOT / TINY6_WEIGHTS.format(victim))
            command = ["iwdctl", "attack", str(data), "--model", model, "--method", method.partition("@")[0]]
            command += ["-q", *extra, "--out", str(out)]
            commands.append(" ".join(command).replace(str(temporary), "$TMP").replace(str(ROOT) + "/", ""))
            run_attack(command)
            return records(out)

        for victim in arguments.victims.split(","):
            ours = {method: attack(victim, method, options[method]) for method in methods}
            grid = {budget: attack(victim, f"pgd@{budget}", ["--eps", budget]) for budget in BUDGETS}
            least, budget = least_budget(grid)
            lines += [
                f"\n## tiny6-{victim} ({len(least)} of {6 * arguments.per_class} images correct)\n",
                "| method | fooled | l2 | l-inf | IWD | "
                + " | ".join(f"{m}: IWD on both fooled" for m in methods)
                + " |",
                "| --- " * (5 + len(methods)) + "|",
            ]
            lines += [row(method, runs, ours) for method, runs in ours.items()]
            lines += [row(f"pgd@{budget_}", runs, ours) for budget_, runs in grid.items()]
            lines.append(row(f"pgd, least budget (mean {budget:.1f}/255)", least, ours))
            print("\n".join(lines[-(len(ours) + len(grid) + 1) :]), flush=True)
            write_results(
                arguments.results, "\n".join([*lines, "\nCommands:\n", *(f"    {c}" for c in commands)]) + "\n"
            )


if __name__ == "__main__":
    main()
