"""Speed of `iwdctl measure` against POT on 12 real 64x64 pairs, and the Sinkhorn estimate's error.

Pairs: 12 nips17 photos at 64x64 (4 with +-8/255 sign noise, 4 shifted by 3 pixels (a 64x64
window moved inside the larger photo), 4 JPEG quality 75). POT computes the definition directly:
ot.dist(cityblock) / d, then ot.emd2. The whole `iwdctl measure` process is timed (start-up included).

    python benchmarks/measure_speed.py            # writes benchmarks/results/measure_speed.md
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ot
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

from iwdctl.images import load_image, save_png  # noqa: E402
from iwdctl.iwd import analysis_view, exact_iwd, patches, sinkhorn_iwd  # noqa: E402


def make_pairs(folder: Path) -> None:
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[:12]
    generator = torch.Generator().manual_seed(0)
    for index, file in enumerate(files):
        photo = analysis_view(load_image(file)[None], 70)[0]  # 70x70, so 64x64 windows can move
        x = photo[:, :64, :64]
        kind = ("noise", "shift", "jpeg")[index % 3]
        if kind == "noise":
            y = (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1)
        elif kind == "shift":
            y = photo[:, 3:67, 3:67]
        else:
            buffer = io.BytesIO()
            Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, "JPEG", quality=75)
            y = torch.from_numpy(__import__("numpy").array(Image.open(buffer))).permute(2, 0, 1).float() / 255
        save_png(x, folder / "orig" / f"{index:02d}_{kind}.png")
        save_png(y, folder / "adv" / f"{index:02d}_{kind}.png")


def pot_value(x: torch.Tensor, y: torch.Tensor) -> float:
    u, v = patches(x.double(), 7, 1).numpy(), patches(y.double(), 7, 1).numpy()
    return float(ot.emd2([], [], ot.dist(u, v, metric="cityblock") / u.shape[1], numItermax=10**7))


def main() -> None:
    lines = [header("IWD speed and accuracy: iwdctl measure against POT")]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        make_pairs(folder)
        start = time.perf_counter()
        pot = {}
        for file in sorted((folder / "orig").glob("*.png")):
            pot[file.name] = pot_value(load_image(file), load_image(folder / "adv" / file.name))
        pot_seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(
            ["iwdctl", "measure", str(folder / "orig"), str(folder / "adv"), "--json", str(folder / "r.json"), "-q"],
            check=True,
            capture_output=True,
        )
        ours_seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((folder / "r.json").read_text())
        worst = max(abs(p["iwd"] - pot[Path(p["orig"]).name]) / pot[Path(p["orig"]).name] for p in report["pairs"])
        lines += [
            "\n## 12 pairs at 64x64 (N = 3364 patches), exact\n",
            "| | seconds | pairs/s |\n| --- | --- | --- |",
            f"| POT (ot.dist cityblock + ot.emd2), in process | {pot_seconds:.2f} | {12 / pot_seconds:.2f} |",
            f"| `iwdctl measure` whole process (start-up included) | {ours_seconds:.2f} | {12 / ours_seconds:.2f} |",
            f"\nSpeed-up: **{pot_seconds / ours_seconds:.1f}x**. Largest relative difference from POT: {worst:.2e}. "
            f"Peak resident memory of the iwdctl process: {peak_mib:.0f} MiB.\n",
            "| pair | POT | iwdctl |\n| --- | --- | --- |",
        ]
        lines += [
            f"| {Path(p['orig']).name} | {pot[Path(p['orig']).name]:.10f} | {p['iwd']:.10f} |" for p in report["pairs"]
        ]

    lines.append("\n## Sinkhorn estimate (--approx) against the exact value\n")
    lines.append(
        "| size | stride | patches | exact | exact s | approx | approx s | relative error |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    photo = load_image(sorted((SHARED / "nips17" / "images").glob("*.png"))[0])
    generator = torch.Generator().manual_seed(1)
    for size, stride in ((64, 1), (128, 1), (224, 2)):
        x = analysis_view(photo[None], size)[0]
        y = (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1)
        count = patches(x, 7, stride).shape[0]
        start = time.perf_counter()
        exact = exact_iwd(x, y, 7, stride)
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        approx = sinkhorn_iwd(x, y, 7, stride)
        approx_seconds = time.perf_counter() - start
        lines.append(
            f"| {size} | {stride} | {count} | {exact:.6f} | {exact_seconds:.1f} | {approx:.6f} | {approx_seconds:.1f} | {(approx - exact) / exact:+.2e} |"
        )
    path = write_results("measure_speed.md", "\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
