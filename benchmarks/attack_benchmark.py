"""ASR, l2, l-inf, IWD and seconds per image of every attack against efficientnet_lite0 on nips17.

Untargeted and targeted (the CSV's TargetClass). Each method runs through `iwdctl attack` itself
(one process per method and mode), so the numbers are what users get. The GAN variant (iwda)
runs on fewer images on the CPU (its quick preset takes about 2 minutes per image); the table says
how many.

    python benchmarks/attack_benchmark.py [--scale 1.0]   # writes benchmarks/results/attack_benchmark.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

from iwdctl.models import ImageClassifier, load_classifier  # noqa: E402

# method -> images per mode on 2 CPU cores (extra options)
PLAN: list[tuple[str, int, list[str]]] = [
    ("iwda-fast", 100, []),
    ("fgsm", 100, []),
    ("pgd", 100, []),
    ("pgd-l2", 100, []),
    ("adef", 100, []),
    ("iwda", 2, ["--preset", "quick"]),
    ("eot", 100, []),
    ("stadv", 100, []),
]


def recheck(out: Path, model: ImageClassifier) -> tuple[float, float]:
    """ASR of the saved PNGs re-read by Pillow and torchvision (not iwdctl's loader), as saved and
    after the usual ImageNet evaluation transform (resize to 256, centre crop 224), which a loader
    unaware that the files are already at the input size would apply."""
    resize = transforms.Compose(
        [transforms.Resize(256, transforms.InterpolationMode.BICUBIC, antialias=True), transforms.CenterCrop(224)]
    )
    as_saved, resized = [], []
    for record in json.loads((out / "report.json").read_text())["images"]:
        for name in record["outputs"]:
            with Image.open(out / name) as image:
                pixels = transforms.functional.to_tensor(image.convert("RGB"))
            with torch.no_grad():
                logits = model(torch.stack([pixels, resize(pixels)]))
            predicted = logits.argmax(1).tolist()
            wanted = record["target_index"]
            hits = [p == wanted if wanted is not None else p != record["label_index"] for p in predicted]
            as_saved.append(hits[0])
            resized.append(hits[1])
    return sum(as_saved) / len(as_saved), sum(resized) / len(resized)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every image count")
    parser.add_argument("--methods", default=",".join(method for method, _, _ in PLAN))
    parser.add_argument("--keep", type=Path, help="keep the attacks' output folders here (default: discarded)")
    arguments = parser.parse_args()
    chosen = arguments.methods.split(",")
    nips = SHARED / "nips17"
    model = load_classifier("efficientnet_lite0", device="cpu")
    lines = [
        header("Attacks against efficientnet_lite0 on nips17"),
        "\nASR: share of images whose saved 8-bit PNG is misclassified (untargeted) or classified as the "
        "CSV's TargetClass (targeted). Distances to the classifier's view of the original (224x224); IWD as "
        "`iwdctl measure` defines it (7x7 patches, analysis size 64). Means over all attacked images. "
        "ASR re-read: the PNGs re-read with Pillow and torchvision instead of iwdctl's loader (it should equal "
        "ASR); ASR resized: after resizing them to 256 and centre-cropping 224, as a loader that applies the usual "
        "ImageNet evaluation transform to files already at the input size would do (a stress test, not the goal).\n",
        "| method | mode | images | ASR | mean l2 | mean l-inf | mean IWD | mean IWD (successes) | s / image | "
        "ASR re-read | ASR resized |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    commands = []
    with tempfile.TemporaryDirectory() as scratch:
        temporary = str(arguments.keep or scratch)
        for method, count, extra in PLAN:
            if method not in chosen:
                continue
            count = max(1, round(count * arguments.scale))
            for mode in ("untargeted", "targeted"):
                out = Path(temporary) / f"{method}-{mode}"
                command = [
                    "iwdctl",
                    "attack",
                    str(nips),
                    "--method",
                    method,
                    "--limit",
                    str(count),
                    "--out",
                    str(out),
                    "-q",
                    *extra,
                ]
                if mode == "targeted":
                    command += ["--targets-from", str(nips / "images.csv")]
                commands.append(
                    " ".join(command).replace(str(temporary), "$TMP").replace(str(SHARED), "../shared/data")
                )
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                wall = time.perf_counter() - start
                summary = json.loads((out / "report.json").read_text())["summary"]
                success_iwd = summary["mean_iwd_success"]
                reread, resized = recheck(out, model)
                lines.append(
                    f"| {method} | {mode} | {summary['n']} | {100 * summary['asr']:.1f}% | {summary['mean_l2']:.3f} | "
                    f"{summary['mean_linf']:.4f} | {summary['mean_iwd']:.5f} | "
                    f"{'-' if success_iwd is None else f'{success_iwd:.5f}'} | {summary['seconds_per_image']:.2f} | "
                    f"{100 * reread:.1f}% | {100 * resized:.1f}% |"
                )
                print(lines[-1], f"(wall {wall:.0f} s)", flush=True)
                write_results(
                    "attack_benchmark.md", "\n".join(lines + ["\nCommands:\n"] + [f"    {c}" for c in commands]) + "\n"
                )


if __name__ == "__main__":
    main()
