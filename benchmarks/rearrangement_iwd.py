"""Is a re-arranged image close in IWD? Translations and smooth warps against PGD's perturbation.

The paper's claim for IWDA is "largest l2, smallest IWD": moving content keeps the patch
distribution. This measures what moving content costs under the project's IWD (7x7 patches, analysis
size 64, and 128), on nips17 photos at lite0's 224 x 224 view: PGD-10 at 8/255 against lite0;
translations by 3 and 7 pixels (7 pixels at 224 is exactly 2 pixels at 64: whole patches move),
circular (`roll`) or reflected at the border; and smooth random warps (a Gaussian-smoothed random
displacement field, sigma 25 pixels, zero at the border, peak 2, 4 or 8 pixels; bicubic).

    python benchmarks/rearrangement_iwd.py [--images 4]   # writes benchmarks/results/rearrangement_iwd.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

from iwdctl.attacks import PGD  # noqa: E402
from iwdctl.criteria import Misclassification  # noqa: E402
from iwdctl.images import load_image, preprocess, quantize  # noqa: E402
from iwdctl.iwd import iwd_pair  # noqa: E402
from iwdctl.models import load_classifier  # noqa: E402


def translate(x: torch.Tensor, offset: int, circular: bool) -> torch.Tensor:
    if circular:
        return torch.roll(x, (offset, offset), (-2, -1))
    padded = F.pad(x[None], (offset,) * 4, mode="reflect")[0]
    return padded[:, : x.shape[-2], : x.shape[-1]]


def smooth_warp(x: torch.Tensor, peak: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    height, width = x.shape[-2:]
    field = torch.randn(1, 2, height, width, generator=generator)
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    field = F.conv2d(
        F.pad(field, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1).repeat(2, 1, 1, 1), groups=2
    )
    field = F.conv2d(
        F.pad(field, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1).repeat(2, 1, 1, 1), groups=2
    )
    rows, columns = torch.linspace(-1, 1, height), torch.linspace(-1, 1, width)
    taper = torch.cos(rows * torch.pi / 2)[:, None] * torch.cos(columns * torch.pi / 2)[None]  # zero at the border
    field = field[0] / field.abs().amax() * peak * taper
    grid_y, grid_x = torch.meshgrid(rows, columns, indexing="ij")
    grid = torch.stack([grid_x + field[0] * 2 / width, grid_y + field[1] * 2 / height], dim=-1)[None]
    moved = F.grid_sample(x[None], grid, mode="bicubic", padding_mode="reflection", align_corners=True)[0]
    return quantize(moved.clamp(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    arguments = parser.parse_args()
    model = load_classifier("efficientnet_lite0", device="cpu")
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[300 : 300 + arguments.images]
    x = torch.stack([preprocess(load_image(file), model.input_size, model.crop_pct) for file in files])
    with torch.no_grad():
        labels = model(x).argmax(1)
    pgd = quantize(PGD(model)(x, Misclassification(labels), list(range(len(x)))))
    generator = torch.Generator().manual_seed(0)
    kinds = {
        "PGD-10, 8/255": lambda i: pgd[i],
        "translation 3 px, reflected": lambda i: translate(x[i], 3, False),
        "translation 7 px, reflected": lambda i: translate(x[i], 7, False),
        "translation 7 px, circular": lambda i: translate(x[i], 7, True),
        "smooth warp, peak 2 px": lambda i: smooth_warp(x[i], 2, 25, generator),
        "smooth warp, peak 4 px": lambda i: smooth_warp(x[i], 4, 25, generator),
        "smooth warp, peak 8 px": lambda i: smooth_warp(x[i], 8, 25, generator),
    }
    lines = [
        header("IWD of re-arrangements against PGD"),
        __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
        f"Means over {len(files)} photos (nips17 index 300 on).\n",
        "| change | l2 | IWD at 64 | IWD at 128 | IWD at 64 / PGD's |",
        "| --- | --- | --- | --- | --- |",
    ]
    reference = None
    for name, make in kinds.items():
        moved = [make(i) for i in range(len(x))]
        l2 = statistics.fmean(float((m - x[i]).norm()) for i, m in enumerate(moved))
        at64 = statistics.fmean(iwd_pair(x[i], m, size=64, device="cpu", threads=2).value for i, m in enumerate(moved))
        at128 = statistics.fmean(
            iwd_pair(x[i], m, size=128, device="cpu", threads=2).value for i, m in enumerate(moved)
        )
        reference = reference or at64
        lines.append(f"| {name} | {l2:.2f} | {at64:.5f} | {at128:.5f} | {at64 / reference:.2f}x |")
        print(lines[-1], flush=True)
        write_results("rearrangement_iwd.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
