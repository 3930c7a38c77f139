"""The paper's GAN attack (iwda): seconds per image when B images' pyramids train together.

On nips17 photos against efficientnet_lite0 (224 x 224: 9 scales, 32 to 128 channels), the chosen
preset with `--steps` iterations per scale (the paper's 2000 would take hours per configuration), for
each B in `--together`: whole-attack seconds (training every scale, then sampling and the refinement), seconds per
iteration summed over the scales, and the projection to the preset's own iteration count, per image
(divided by B). Training time is linear in the iterations (each iteration is the same 3 critic and 3
generator steps), so the projection is the measured per-iteration time times the preset's iterations;
sampling, refinement and set-up are added once. Success and IWD of such short runs are not the paper's figures.

    python benchmarks/gan_time.py [--preset paper] [--steps 4] [--together 1,8,32] [--device cuda]
        [--precisions fp32,bf16]
        # writes benchmarks/results/gan_time_<device>.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

from iwdctl.attacks.iwda import IWDA, PRESETS, pyramid_sizes  # noqa: E402
from iwdctl.criteria import Misclassification  # noqa: E402
from iwdctl.images import load_image, preprocess  # noqa: E402
from iwdctl.models import load_classifier  # noqa: E402


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=4, help="iterations per scale measured")
    parser.add_argument("--together", default="1,8,32", help="images trained together (comma-separated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16 or both (comma-separated)")
    arguments = parser.parse_args()
    counts = [int(count) for count in arguments.together.split(",")]
    model = load_classifier(arguments.model, device=arguments.device)
    device = model.device
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[: max(counts)]
    if len(files) < max(counts):
        raise SystemExit(f"{SHARED / 'nips17' / 'images'}: fewer than {max(counts)} photos")
    images = torch.stack([preprocess(load_image(file), model.input_size) for file in files])
    with torch.no_grad():
        labels = model(images.to(device)).argmax(dim=1)  # criteria live on the model's device
    preset = PRESETS[arguments.preset]
    scales = len(pyramid_sizes(model.input_size, model.input_size))
    trained = scales if preset.scales is None else min(scales, preset.scales)
    rows = []
    for precision, count in itertools.product(arguments.precisions.split(","), counts):
        attack = IWDA(model, preset=arguments.preset, steps=arguments.steps, images_at_once=count, precision=precision)
        marks: list[float] = []
        attack.progress = lambda done, total, _, marks=marks: (_synchronize(device), marks.append(time.perf_counter()))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _synchronize(device)
        start = time.perf_counter()
        attack.sample(images[:count], Misclassification(labels[:count]), [[index] for index in range(count)])
        _synchronize(device)
        total = time.perf_counter() - start
        training = marks[-1] - start
        per_iteration = training / arguments.steps
        projected = (per_iteration * preset.iterations + (total - training)) / count
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append((precision, count, total, per_iteration, projected, memory))
        print(rows[-1], flush=True)
    lines = [
        header(f"iwda (the paper's GAN): time per image with B images trained together, on {device.type}"),
        __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
        f"Preset `{arguments.preset}` ({preset.description}); {trained} of {scales} scales trained; "
        f"measured with {arguments.steps} iterations per scale; model {arguments.model}.\n",
        f"| precision | B (images together) | measured s (all B) | s per iteration (all scales, all B) | projected s / image at {preset.iterations} iterations | peak GPU memory GiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for precision, count, total, per_iteration, projected, memory in rows:
        lines.append(f"| {precision} | {count} | {total:.1f} | {per_iteration:.3f} | {projected:.1f} | {memory:.1f} |")
    path = write_results(f"gan_time_{device.type}.md", "\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
