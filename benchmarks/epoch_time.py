"""Seconds per training epoch of each defense on one architecture and data, timed side by side.

The issue's goal: an IWDD epoch costs no more than a PGD-10 epoch. Each method's trainer takes the
same minibatches in turn (round robin, so a slower or faster spell of the machine hits all methods
alike); the mean seconds per step times the steps per epoch gives seconds per epoch (free training:
per pass of m replays). The first steps of each method are warm-up and not counted.

    python benchmarks/epoch_time.py [--data tiny6] [--steps 30] [--arch preact_resnet18_w16] [--batch-size 32]

Writes benchmarks/results/epoch_time.md for tiny6, epoch_time_<data>.md for other data; sizes a GPU run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

from iwdctl.defend import TrainConfig, Trainer  # noqa: E402

VARIANTS = {  # label: (method, config overrides)
    "natural": ("natural", {}),
    "free (pass of 4 replays)": ("free", {}),
    "PGD-7": ("pgd", {"pgd_steps": 7}),
    "PGD-10": ("pgd", {"pgd_steps": 10}),
    f"IWDD ({TrainConfig.pgd_steps} refine steps)": ("iwdd", {}),
}
WARMUP = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method, after warm-up")
    parser.add_argument("--arch", default="preact_resnet18_w16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="tiny6", help="a folder of ../shared/data")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        trainers = {
            label: Trainer(
                TrainConfig(
                    data=str(SHARED / arguments.data),
                    out=str(Path(temporary) / f"{index}.safetensors"),
                    method=method,
                    arch=arguments.arch,
                    batch_size=arguments.batch_size,
                    lr=0.05,
                    **overrides,
                )
            )
            for index, (label, (method, overrides)) in enumerate(VARIANTS.items())
        }
        seconds: dict[str, list[float]] = {label: [] for label in trainers}
        for step in range(WARMUP + arguments.steps):
            for label, trainer in trainers.items():
                images, labels, generator = trainer._batch(0, step % trainer.steps_per_epoch)
                start = time.perf_counter()
                trainer._train_step(images, labels, generator)
                if step >= WARMUP:
                    seconds[label].append(time.perf_counter() - start)
    steps_per_epoch = next(iter(trainers.values())).steps_per_epoch
    pgd10 = statistics.mean(seconds["PGD-10"]) * steps_per_epoch
    rows = []
    for label, timings in seconds.items():
        mean = statistics.mean(timings)
        per_epoch = mean * steps_per_epoch
        rows.append(f"| {label} | {1000 * mean:.0f} | {per_epoch:.1f} | {per_epoch / pgd10:.2f} |")
    text = header(f"Seconds per training epoch on {arguments.data} ({arguments.arch}, batch {arguments.batch_size})")
    text += (
        f"\n{arguments.steps} timed steps per method after {WARMUP} warm-up steps, methods in turn on the same "
        f"minibatches; an epoch is {steps_per_epoch} steps of {arguments.data}/train; {torch.get_num_threads()} threads.\n\n"
        "| method | ms / step (mean) | s / epoch | vs PGD-10 |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    write_results("epoch_time.md" if arguments.data == "tiny6" else f"epoch_time_{arguments.data}.md", text)
    print(text)


if __name__ == "__main__":
    main()
