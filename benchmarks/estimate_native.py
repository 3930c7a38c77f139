"""IWD at native resolution: the entropic estimate at 224 x 224, stride 1 (47,524 patches per image).

Pairs made from nips17 photos at lite0's 224 x 224 view (sign noise 8/255, Gaussian noise 0.03,
Gaussian blur, JPEG q30, a 3-pixel shift, a 3-degree rotation, a 4 x 4 block re-arrangement). For
each: seconds per pair (after one warm-up pair), the estimate and its certified relative error bound
(|estimate - IWD| <= bound x IWD; iwdctl.iwd). Meant for a GPU, where the 47k x 47k float32 cost
matrix (9 GB) is kept on the device or streamed in row blocks.

    python benchmarks/estimate_native.py [--device cuda] [--photos 2]   # writes estimate_native_<device>.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402
from pairs import jpeg, rearranged  # noqa: E402

from iwdctl.images import load_image, preprocess  # noqa: E402
from iwdctl.iwd import estimate_iwd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="view size (224: lite0's input)")
    arguments = parser.parse_args()
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[: arguments.photos]
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    warmed = False
    for file in files:
        photo = load_image(file)
        x = preprocess(photo, arguments.size)
        made = {
            "noise": (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1),
            "gaussian": (x + 0.03 * torch.randn(x.shape, generator=generator)).clamp(0, 1),
            "blur": TF.gaussian_blur(x, [7, 7], [1.0, 1.0]),
            "jpeg": jpeg(x, 30),
            "shift": preprocess(photo[:, 3:, 3:], arguments.size),
            "rotation": TF.rotate(x, 3.0, interpolation=TF.InterpolationMode.BILINEAR),
            "rearranged": rearranged(x, generator),
        }
        for kind, y in made.items():
            a, b = x.to(arguments.device), y.to(arguments.device)
            if not warmed:
                estimate_iwd(a, b, 7, 1)
                warmed = True
            if arguments.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            value, bound = estimate_iwd(a, b, 7, 1)
            if arguments.device.startswith("cuda"):
                torch.cuda.synchronize()
            rows.setdefault(kind, []).append((time.perf_counter() - start, value, bound))
            print(kind, rows[kind][-1], flush=True)
    lines = [
        header(f"IWD estimate at native resolution ({arguments.size} px, stride 1) on {arguments.device}"),
        __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
        f"{len(files)} photos per kind; means over them.\n",
        "| kind | s / pair | estimate | certified bound (relative) |",
        "| --- | --- | --- | --- |",
    ]
    for kind, values in rows.items():
        seconds, value, bound = (statistics.fmean(column) for column in zip(*values))
        lines.append(f"| {kind} | {seconds:.2f} | {value:.6f} | {bound:.1e} |")
    path = write_results(f"estimate_native_{arguments.device.split(':')[0]}.md", "\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
