"""Forward + backward (the input gradient an attack takes) of each classifier in NCHW against NHWC
(channels_last), side by side, interleaved; the fastest of the repeats counts.

    python benchmarks/memory_format.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, write_results  # noqa: E402

from iwdctl.models import load_classifier  # noqa: E402

MODELS = (  # (model, input size, batch)
    ("efficientnet_lite0", 224, 16),
    (str(ROOT / "weights" / "tiny6-preact_resnet18_w16-pgd.safetensors"), 32, 64),
    (str(ROOT / "weights" / "imagenette64-preact_resnet18_w16-natural.safetensors"), 64, 64),
)


def input_gradient(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    images = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(network(images).logsumexp(1).sum(), images)
    return gradient


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    rows = []
    for name, size, batch in MODELS:
        if not name.startswith("efficientnet") and not Path(name).exists():
            continue
        nhwc = load_classifier(name, device="cpu").network
        nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        layouts = {"NCHW": (nchw, images), "NHWC": (nhwc, images.contiguous(memory_format=torch.channels_last))}
        best = {layout: float("inf") for layout in layouts}
        for _ in range(1 + arguments.repeats):  # the first round warms up
            for layout, (network, inputs) in layouts.items():
                start = time.perf_counter()
                input_gradient(network, inputs)
                best[layout] = min(best[layout], time.perf_counter() - start)
        rows.append(
            f"| {Path(name).stem} | {batch} x {size} px | {1000 * best['NCHW']:.0f} | {1000 * best['NHWC']:.0f} "
            f"| {best['NCHW'] / best['NHWC']:.2f}x |"
        )
    text = header("Input gradients of each classifier in NCHW against NHWC (channels_last)")
    text += (
        f"\nForward + backward to the input, {arguments.threads} threads, the fastest of {arguments.repeats} "
        "interleaved runs; iwdctl's classifiers run in NHWC.\n\n"
        "| model | batch | NCHW ms | NHWC ms | speed-up |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    write_results("memory_format.md", text)
    print(text)


if __name__ == "__main__":
    main()
