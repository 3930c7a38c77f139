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
    ("eot", 50, []),
    ("stadv", 40, []),
]


def recheck(out: Path, model: ImageClassifier) -> list[float]:
    """ASR of the saved PNGs read back by Pillow and torchvision (not iwdctl's loader) and fed to the
    network three ways: with the model's own preprocessing (should equal ASR), with ImageNet's
    mean/std, and with timm's default evaluation transform for efficientnet_lite0 (resize 256,
    centre crop 224, ImageNet mean/std), as loaders unaware of lite0's TF-Lite scaling do."""
    imagenet = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    readers = [
        transforms.Normalize(model.mean, model.std),
        imagenet,
        transforms.Compose(
            [
                transforms.Resize(256, transforms.InterpolationMode.BICUBIC, antialias=True),
                transforms.CenterCrop(224),
                imagenet,
            ]
        ),
    ]
    hits: list[list[bool]] = [[] for _ in readers]
    for record in json.loads((out / "report.json").read_text())["images"]:
        for name in record["outputs"]:
            with Image.open(out / name) as image:
                pixels = transforms.functional.to_tensor(image.convert("RGB"))
            with torch.no_grad():
                logits = model.network(torch.stack([reader(pixels) for reader in readers]))
            wanted = record["target_index"]
            for reader_hits, predicted in zip(hits, logits.argmax(1).tolist()):
                reader_hits.append(predicted == wanted if wanted is not None else predicted != record["label_index"])
    return [sum(reader_hits) / len(reader_hits) for reader_hits in hits]


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
        "Re-read columns: the PNGs read back by Pillow and torchvision (not iwdctl's loader) and fed to lite0 "
        "with its own (x - 0.5) / 0.5 scaling (should equal ASR), with ImageNet's mean/std, and with timm's default "
        "evaluation transform (resize 256, centre crop 224, ImageNet mean/std). Clean nips17 accuracy under the "
        "last two readers is only about 66%, so their untargeted ASR counts clean errors too.\n",
        "| method | mode | images | ASR | mean l2 | mean l-inf | mean IWD | mean IWD (successes) | s / image | "
        "re-read: own | ImageNet norm | timm transform |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
                rereads = recheck(out, model)
                lines.append(
                    f"| {method} | {mode} | {summary['n']} | {100 * summary['asr']:.1f}% | {summary['mean_l2']:.3f} | "
                    f"{summary['mean_linf']:.4f} | {summary['mean_iwd']:.5f} | "
                    f"{'-' if success_iwd is None else f'{success_iwd:.5f}'} | {summary['seconds_per_image']:.2f} | "
                    + " | ".join(f"{100 * value:.1f}%" for value in rereads)
                    + " |"
                )
                print(lines[-1], f"(wall {wall:.0f} s)", flush=True)
                write_results(
                    "attack_benchmark.md", "\n".join(lines + ["\nCommands:\n"] + [f"    {c}" for c in commands]) + "\n"
                )


if __name__ == "__main__":
    main()
