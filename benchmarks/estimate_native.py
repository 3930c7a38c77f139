"""IWD at native resolution: the estimate at 224 x 224, stride 1 (47,524 patches per image).

Pairs made from nips17 photos at lite0's 224 x 224 view (sign noise 8/255, Gaussian noise 0.03,
Gaussian blur, JPEG q30, a 3-pixel shift, a 3-degree rotation, a 4 x 4 block re-arrangement). For
each: seconds per pair (after an untimed warm-up on a 64 x 64 crop), the estimate and its certified
relative error bound (|estimate - IWD| <= bound x IWD; iwdctl.iwd). Meant for a GPU, where the 47k x 47k float32 cost
matrix (9 GB) is kept on the device or streamed in row blocks. With `--stride 2` (12,100 patches)
exact IWD is computed too (CPU), and the estimate's error against it.

    python benchmarks/estimate_native.py [--device cuda] [--photos 2] [--stride 1]
        # writes estimate_native_<device>[_stride<s>].md
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
from iwdctl.iwd import EXACT_LIMIT, estimate_iwd, exact_iwd, patch_count  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="view size (224: lite0's input)")
    parser.add_argument("--stride", type=int, default=1)
    arguments = parser.parse_args()
    stride = arguments.stride
    exact_too = patch_count(arguments.size, arguments.size, 7, stride) <= EXACT_LIMIT
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[: arguments.photos]
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, list[tuple[float, ...]]] = {}
    suffix = "" if stride == 1 else f"_stride{stride}"

    def write() -> Path:  # after every pair: a run cut short by a time limit keeps what it measured
        lines = [
            header(f"IWD estimate at {arguments.size} px, stride {stride}, on {arguments.device}"),
            __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
            f"{len(files)} photos per kind; means over those measured (error: the largest).\n",
            "| kind | pairs | s / pair | estimate | certified bound (relative) |"
            + (" error against exact IWD |" if exact_too else ""),
            "| --- | --- | --- | --- | --- |" + (" --- |" if exact_too else ""),
        ]
        for kind, values in rows.items():
            seconds, value, bound = (statistics.fmean(column) for column in list(zip(*values))[:3])
            error = f" {max(row[3] for row in values):.1e} |" if exact_too else ""
            lines.append(f"| {kind} | {len(values)} | {seconds:.2f} | {value:.6f} | {bound:.1e} |{error}")
        return write_results(f"estimate_native_{arguments.device.split(':')[0]}{suffix}.md", "\n".join(lines) + "\n")

    for index, file in enumerate(files):
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
            if index == 0 and kind == "noise":  # untimed, small: the device's and numba's start-up
                estimate_iwd(a[:, :64, :64], b[:, :64, :64], 7, stride, tolerance=0.0)
            if arguments.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            value, bound = estimate_iwd(a, b, 7, stride)
            if arguments.device.startswith("cuda"):
                torch.cuda.synchronize()
            row: tuple[float, ...] = (time.perf_counter() - start, value, bound)
            if exact_too:
                exact = exact_iwd(x.double().numpy(), y.double().numpy(), 7, stride, 2)
                row += (abs(value - exact) / exact,)
            rows.setdefault(kind, []).append(row)
            print(kind, rows[kind][-1], flush=True)
            path = write()
    print(path.read_text())


if __name__ == "__main__":
    main()
