"""The paper's Table 2 where models can fit: natural, free, PGD and IWDD training, S seeds each, one
architecture and schedule for all, every model evaluated by the project's own eval.

    python benchmarks/table2.py --data ../shared/data/imagenette64 --arch preact_resnet18 --epochs 4 \\
        --seeds 3 --device cuda --precision bf16 --parallel 4 --runs runs/table2      # the GPU run
    python benchmarks/table2.py --data ../shared/data/imagenette64 --arch preact_resnet18_w16 --epochs 4 \\
        --batch-size 32 --lr 0.05 --seeds 2 --train-per-class 100 --eval-limit 200 --iwda-limit 0 \\
        --methods natural,free,pgd,iwdd,iwdd-samples,iwdd-r2 --runs runs/proxy64       # the CPU proxy

Sizing the GPU run (an estimate: no imagenette64 epoch has been timed on a GPU yet). On an H200, six
full-width trainings on tiny6 (2,700 images of 32 px, 30 epochs, natural/PGD/IWDD) ran side by side in
about 150 s: 0.8 s per training-epoch. An imagenette64 epoch has 14x the pixels (9,469 images of
64 px), about 12 s per training-epoch, so 4 methods x 3 seeds fit 8 minutes at about 3 epochs in fp32;
bf16 is expected to allow 4. That is far below what a natural model needs for 80% (tens of epochs):
the 8-minute budget buys a smoke run, and the full Table 2 (30 epochs) about 70 minutes.
On 2 CPU cores (benchmarks/results/epoch_time_imagenette64.md, w16, batch 128) an epoch of the full
training set takes 87 s natural, 575 s PGD-7 and 739 s IWDD, hence the proxy's 100 images per class.

Each run (method, seed) is an `iwdctl defend` process writing its checkpoint into --runs; up to
--parallel of them run side by side (on one GPU that is faster than one after another while a model
leaves the GPU idle). A rerun resumes unfinished trainings (`--resume`) and skips finished
evaluations, so the harness can be killed and restarted. Columns: clean accuracy; PGD-10 and PGD-20
(steps of eps/4, random start, eps 8/255) with 3 restarts, an image counting as robust only if it
survives all three; IWDA (`iwda-ot`, the project's default) on the first --iwda-limit val images. Mean
and sample standard deviation over seeds, and IWDD minus PGD paired by seed with a 95% t-interval.
One model's PGD-10 without random start is checked against torchattacks on the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_results  # noqa: E402

from iwdctl.data import discover  # noqa: E402
from iwdctl.evaluate import clean_accuracy, robust_accuracy  # noqa: E402
from iwdctl.files import write_json_atomic  # noqa: E402
from iwdctl.models import load_classifier, read_checkpoint_metadata  # noqa: E402

METHODS = ("natural", "free", "pgd", "iwdd")
# IWDD variants (--methods may name them beside the four): name -> `iwdctl defend` options.
VARIANTS = {
    "iwdd-samples": ["--sample-weight", "1"],  # a loss on the generator's raw samples as well
    "iwdd-r2": ["--refine-steps", "2"],  # fewer PGD steps refining the generator's samples
    "iwdd-r0-samples": ["--refine-steps", "0", "--sample-weight", "1"],  # no PGD: projected and raw samples
}
COLUMNS = ("clean", "pgd10", "pgd20", "iwda")


def balanced(samples: list, limit: int | None) -> list:
    """The first `limit` samples taking the classes in turn (folders list one class after another)."""
    by_label: dict[int, list] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    groups = list(by_label.values())
    interleaved = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    return interleaved[:limit]


def trained(checkpoint: Path, epochs: int) -> bool:
    if not checkpoint.exists():
        return False
    info = json.loads(read_checkpoint_metadata(checkpoint).get("info", "{}"))
    hyper = info.get("hyperparameters", {})
    passes = math.ceil(epochs / hyper.get("replays", 4)) if info.get("method") == "free" else epochs
    return info.get("epoch", 0) >= passes


def train(method: str, seed: int, arguments: argparse.Namespace) -> Path:
    checkpoint = arguments.runs / f"{method}-s{seed}.safetensors"
    if trained(checkpoint, arguments.epochs):
        return checkpoint
    base = method.split("-")[0]
    command = [sys.executable, "-m", "iwdctl", "defend", "--data", str(arguments.train_data), "--method", base]
    command += VARIANTS.get(method, [])
    command += ["--arch", arguments.arch, "--epochs", str(arguments.epochs), "--batch-size", str(arguments.batch_size)]
    command += ["--lr", str(arguments.lr), "--schedule", arguments.schedule, "--precision", arguments.precision]
    command += [
        "--seed",
        str(seed),
        "--out",
        str(checkpoint),
        "-q",
        *(["--device", arguments.device] * bool(arguments.device)),
    ]
    if checkpoint.with_suffix(".state.pt").exists():
        command.append("--resume")
    subprocess.run(command, check=True, capture_output=True, text=True)
    return checkpoint


def training_subset(data: Path, per_class: int, runs: Path) -> Path:
    """A folder of links to the first `per_class` training images of each class (and all of val/):
    the CPU proxy's smaller training set."""
    root = runs / f"data-{data.name}-{per_class}"
    for split in ("train", "val"):
        for folder in sorted(path for path in (data / split).iterdir() if path.is_dir()):
            files = sorted(path for path in folder.iterdir() if path.is_file())
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for file in files[:per_class] if split == "train" else files:
                link = root / split / folder.name / file.name
                if not link.exists():
                    link.symlink_to(file.resolve())
    return root


def evaluate(checkpoint: Path, arguments: argparse.Namespace) -> dict[str, float]:
    path = checkpoint.with_suffix(".eval.json")
    if path.exists():
        return json.loads(path.read_text())
    model = load_classifier(str(checkpoint), device=arguments.device)
    samples = balanced(discover([arguments.data / "val"], model.classes), arguments.eval_limit)
    result = {
        "clean": clean_accuracy(model, samples, batch_size=256).top1,
        "pgd10": robust_accuracy(model, samples, "pgd10", 8 / 255, batch_size=256, restarts=3),
        "pgd20": robust_accuracy(model, samples, "pgd20", 8 / 255, batch_size=256, restarts=3),
        "iwda": (
            robust_accuracy(model, samples[: arguments.iwda_limit], "iwda-ot", batch_size=64)
            if arguments.iwda_limit
            else math.nan  # not run (--iwda-limit 0)
        ),
    }
    write_json_atomic(path, result)
    return result


def torchattacks_check(checkpoint: Path, arguments: argparse.Namespace) -> tuple[float, float]:
    """PGD-10 without random start: the project's eval against torchattacks on the same images."""
    import torchattacks

    from iwdctl.attacks import PGD
    from iwdctl.criteria import Misclassification
    from iwdctl.images import load_image, preprocess

    model = load_classifier(str(checkpoint), device=arguments.device)
    samples = balanced(discover([arguments.data / "val"], model.classes), arguments.eval_limit)
    ours = theirs = 0
    for start in range(0, len(samples), 256):
        batch = samples[start : start + 256]
        images = torch.stack([preprocess(load_image(s.path), model.input_size, 1.0) for s in batch]).to(model.device)
        labels = torch.tensor([s.label for s in batch], device=model.device)
        mine = PGD(model, 8 / 255, 2 / 255, 10, random_start=False)(images, Misclassification(labels))
        reference = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(images, labels)
        with torch.no_grad():
            ours += (model(mine).argmax(1) == labels).sum().item()
            theirs += (model(reference).argmax(1) == labels).sum().item()
    return ours / len(samples), theirs / len(samples)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    from scipy.stats import t

    if len(values) < 2:
        return statistics.fmean(values), float("nan")
    return statistics.fmean(values), t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--arch", default="preact_resnet18_w16")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", default="multistep")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--parallel", type=int, default=1, help="trainings side by side")
    parser.add_argument("--eval-limit", type=int, default=None, help="val images for clean and PGD accuracy")
    parser.add_argument("--iwda-limit", type=int, default=200, help="val images for accuracy under IWDA (0: not run)")
    parser.add_argument("--runs", type=Path, default=Path("runs/table2"))
    parser.add_argument("--train-per-class", type=int, default=None, help="train on the first N images per class")
    parser.add_argument("--results", default=None, help="results file name (default: table2_<data>.md)")
    arguments = parser.parse_args()
    arguments.runs.mkdir(parents=True, exist_ok=True)
    methods = arguments.methods.split(",")
    unknown = [method for method in methods if method not in METHODS and method not in VARIANTS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join([*METHODS, *VARIANTS])}")
    arguments.train_data = arguments.data
    if arguments.train_per_class:
        arguments.train_data = training_subset(arguments.data, arguments.train_per_class, arguments.runs)
    jobs = [(method, seed) for seed in range(arguments.seeds) for method in methods]
    with ThreadPoolExecutor(arguments.parallel) as pool:
        checkpoints = dict(zip(jobs, pool.map(lambda job: train(*job, arguments), jobs)))
    results = {job: evaluate(checkpoint, arguments) for job, checkpoint in checkpoints.items()}
    epoch_seconds = {
        job: json.loads(read_checkpoint_metadata(path)["info"])["seconds"] / arguments.epochs
        for job, path in checkpoints.items()
    }
    lines = [
        header(
            f"Table 2 on {arguments.data.name}: {arguments.arch}, {arguments.epochs} epochs, {arguments.seeds} seeds"
            + (f", {arguments.train_per_class} training images per class" if arguments.train_per_class else "")
        ),
        next(part for part in __doc__.split("\n\n") if part.startswith("Each run")).replace("\n", " ") + "\n",
        "| method | " + " | ".join(COLUMNS) + " | s / epoch |",
        "| --- " * (len(COLUMNS) + 2) + "|",
    ]
    for method in methods:
        cells = []
        for column in COLUMNS:
            values = [100 * results[(method, seed)][column] for seed in range(arguments.seeds)]
            if math.isnan(values[0]):
                cells.append("not run")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.fmean(values):.1f} ± {spread:.1f}")
        seconds = statistics.fmean(epoch_seconds[(method, seed)] for seed in range(arguments.seeds))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    for variant in [method for method in methods if method.startswith("iwdd")] if "pgd" in methods else []:
        lines += [f"\n{variant} minus PGD training, paired by seed (points, mean ± 95% t-interval half-width):\n"]
        for column in [column for column in COLUMNS if not math.isnan(results[(variant, 0)][column])]:
            differences = [
                100 * (results[(variant, seed)][column] - results[("pgd", seed)][column])
                for seed in range(arguments.seeds)
            ]
            mean, half = t_interval(differences)
            lines.append(
                f"- {column}: {mean:+.1f} ± {half:.1f} (per seed: {', '.join(f'{d:+.1f}' for d in differences)})"
            )
    lines += ["\nPer run:\n", "| method | seed | " + " | ".join(COLUMNS) + " |", "| --- " * (len(COLUMNS) + 2) + "|"]
    for (method, seed), result in results.items():
        lines.append(f"| {method} | {seed} | " + " | ".join(f"{100 * result[c]:.1f}" for c in COLUMNS) + " |")
    check_model = checkpoints.get(("pgd", 0)) or next(iter(checkpoints.values()))
    ours, theirs = torchattacks_check(check_model, arguments)
    lines.append(
        f"\nCheck on {check_model.name}: PGD-10 without random start, project {100 * ours:.2f}% vs torchattacks "
        f"{100 * theirs:.2f}%."
    )
    path = write_results(arguments.results or f"table2_{arguments.data.name}.md", "\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
