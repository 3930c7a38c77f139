"""Exact IWD against POT, per kind of pair, and the estimate's error.

Pairs are made from nips17 photos the tests do not use (index 600 on, or `--first`), at native 299 x 299:
sign noise (+-8/255), Gaussian noise (sigma 0.03), Gaussian blur (sigma 1), JPEG quality 30, a shift
(the 288 x 288 window moved by 3 pixels inside the photo), a rotation by 3 degrees, a re-arrangement
(the photo's 4 x 4 blocks in a random order, seams blurred) and PGD-10 outputs against
efficientnet_lite0 (8/255, at its 224 x 224 input). For every kind, POT computes the definition
directly in this process (ot.dist cityblock / d, then ot.emd2; start-up free), and the whole
`iwdctl measure` process (start-up, decoding and resizing included) measures the same files, after
an untimed run on the kind's first pair (numba compiles a kernel's new signatures once). Both at the
default analysis size 64 (3364 patches) and at 128 (14884 patches).

    python benchmarks/measure_speed.py [--pairs 3] [--big-pairs 1] [--big-kinds noise,rotation] [--first 600]
        [--pick darkest] [--estimate-kinds noise,shift] [--estimate-pairs 1] [--devices cpu,cuda] [--no-pot]
        # writes benchmarks/results/measure_speed.md
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
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402
from pairs import jpeg, rearranged  # noqa: E402

from iwdctl.images import load_image, preprocess, save_png  # noqa: E402
from iwdctl.iwd import analysis_view, estimate_iwd, exact_iwd, patches  # noqa: E402

KINDS = ("noise", "gaussian", "blur", "jpeg", "shift", "rotation", "rearranged", "pgd")


# make_pairs' orders of the photos from `first` on. Noise clipped at 0 or 1 makes flat dark or white
# regions degenerate: thousands of near-identical or identical patches.
PICKS = {
    "first": None,
    "darkest": lambda photo: float(photo.mean()),
    "whitest": lambda photo: -float((photo == 1).all(dim=0).float().mean()),  # the most pure-white pixels
}


def make_pairs(folder: Path, count: int, first: int = 600, pick: str = "first") -> None:
    """folder/<kind>/orig/NN.png and folder/<kind>/adv/NN.png for every kind, from photos `first` on, in
    the order PICKS[pick] gives (index order for "first")."""
    files = sorted((SHARED / "nips17" / "images").glob("*.png"))[first:]
    if PICKS[pick] is not None:
        files.sort(key=lambda file: PICKS[pick](load_image(file)))
    files = files[:count]
    if len(files) < count:
        raise SystemExit(f"{SHARED / 'nips17' / 'images'}: fewer than {first + count} photos")
    generator = torch.Generator().manual_seed(0)
    model = None
    for index, file in enumerate(files):
        photo = load_image(file)
        x = photo[:, :288, :288]
        made = {
            "noise": (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1),
            "gaussian": (x + 0.03 * torch.randn(x.shape, generator=generator)).clamp(0, 1),
            "blur": TF.gaussian_blur(x, [7, 7], [1.0, 1.0]),
            "jpeg": jpeg(x, 30),
            "shift": photo[:, 3:291, 3:291],
            "rotation": TF.rotate(x, 3.0, interpolation=TF.InterpolationMode.BILINEAR),
            "rearranged": rearranged(x, generator),
        }
        for kind, y in made.items():
            save_png(x, folder / kind / "orig" / f"{index:02d}.png")
            save_png(y, folder / kind / "adv" / f"{index:02d}.png")
        from iwdctl.attacks import PGD
        from iwdctl.criteria import Misclassification
        from iwdctl.models import load_classifier

        model = model or load_classifier("efficientnet_lite0", device="cpu")
        view = preprocess(photo, model.input_size, model.crop_pct)
        with torch.no_grad():
            label = model(view[None]).argmax(1)
        adversarial = PGD(model)(view[None], Misclassification(label), [index])[0]
        save_png(view, folder / "pgd" / "orig" / f"{index:02d}.png")
        save_png(adversarial, folder / "pgd" / "adv" / f"{index:02d}.png")


def pot_value(x: torch.Tensor, y: torch.Tensor, stride: int = 1) -> float:
    import ot  # absent on some GPU machines: --no-pot there

    u, v = patches(x.double(), 7, stride).numpy(), patches(y.double(), 7, stride).numpy()
    return float(ot.emd2([], [], ot.dist(u, v, metric="cityblock") / u.shape[1], numItermax=10**8))


def compare(
    folder: Path, size: int, limit: int | None, devices: list[str], pot: bool
) -> tuple[float | None, dict[str, float], float, int]:
    """(POT seconds or None, iwdctl measure seconds per device, largest relative difference to POT, or
    between the devices without POT, pairs) for one kind folder."""
    names = sorted((folder / "orig").glob("*.png"))[:limit]
    if limit is not None:
        (folder / f"subset{size}").mkdir(exist_ok=True)
        for side in ("orig", "adv"):
            (folder / f"subset{size}" / side).mkdir(exist_ok=True)
            for name in names:
                target = folder / f"subset{size}" / side / name.name
                if not target.exists():
                    target.symlink_to(folder / side / name.name)
        folder = folder / f"subset{size}"
    reference: dict[str, float] = {}
    pot_seconds = None
    if pot:
        start = time.perf_counter()
        for name in names:
            pair = analysis_view(torch.stack([load_image(name), load_image(folder / "adv" / name.name)]).double(), size)
            reference[name.name] = pot_value(pair[0], pair[1])
        pot_seconds = time.perf_counter() - start
    seconds: dict[str, float] = {}
    worst = 0.0
    for device in devices:
        report_path = folder / f"r{size}_{device}.json"
        options = ["--size", str(size), "--device", device, "-q"]
        # Untimed, on this kind's first pair: numba compiles a kernel's new signatures once (after an
        # install or an edit of the kernels), which is not what a run costs.
        first_pair = [str(folder / "orig" / names[0].name), str(folder / "adv" / names[0].name)]
        subprocess.run(["iwdctl", "measure", *first_pair, *options], check=True, capture_output=True)
        command = ["iwdctl", "measure", str(folder / "orig"), str(folder / "adv"), *options]
        start = time.perf_counter()
        subprocess.run([*command, "--json", str(report_path)], check=True, capture_output=True)
        seconds[device] = time.perf_counter() - start
        pairs = json.loads(report_path.read_text())["pairs"]
        assert all(pair["iwd_exact"] for pair in pairs)
        values = {Path(pair["orig"]).name: pair["iwd"] for pair in pairs}
        reference = reference or values
        worst = max(worst, *(abs(values[name] - reference[name]) / reference[name] for name in values))
    return pot_seconds, seconds, worst, len(names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3, help="pairs per kind at 64 px")
    parser.add_argument("--big-pairs", type=int, default=1, help="pairs per kind at 128 px")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--big-kinds", default=",".join(KINDS), help="kinds at 128 px (POT takes minutes per pair)")
    parser.add_argument("--first", type=int, default=600, help="index of the first nips17 photo used")
    parser.add_argument("--results", default="measure_speed.md", help="results file name")
    parser.add_argument("--pick", choices=PICKS, default="first", help="which photos from --first on")
    parser.add_argument("--estimate-kinds", default=",".join(KINDS), help="kinds for the 224 px estimate ('' skips)")
    parser.add_argument("--estimate-pairs", type=int, default=1, help="pairs per kind for the 224 px estimate")
    parser.add_argument("--devices", default="cpu", help="iwdctl measure --device values, e.g. cpu,cuda")
    parser.add_argument("--no-pot", action="store_true", help="without POT (compare the devices with each other)")
    arguments = parser.parse_args()
    devices = arguments.devices.split(",")
    kinds = arguments.kinds.split(",")
    lines = [header("Exact IWD against POT, per kind of pair"), __doc__.split("\n\n")[1].replace("\n", " ") + "\n"]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        make_pairs(
            folder,
            max(arguments.pairs, arguments.big_pairs, arguments.estimate_pairs),
            arguments.first,
            arguments.pick,
        )
        for size, count, size_kinds in (
            (64, arguments.pairs, kinds),
            (128, arguments.big_pairs, arguments.big_kinds.split(",")),
        ):
            if count == 0:
                continue
            against = "POT" if not arguments.no_pot else f"iwdctl on {devices[0]}"
            lines += [
                f"\n## Analysis size {size} ({(size - 6) ** 2} patches), exact, {count} pairs per kind\n",
                "| kind | POT s / pair | "
                + " | ".join(f"iwdctl --device {device} s / pair (whole process) | speed-up" for device in devices)
                + f" | pairs/s ({devices[-1]}) | largest relative difference to {against} |",
                "| --- | --- | " + " | ".join("--- | ---" for _ in devices) + " | --- | --- |",
            ]
            for kind in size_kinds:
                pot_seconds, seconds, worst, pairs = compare(folder / kind, size, count, devices, not arguments.no_pot)
                baseline = pot_seconds if pot_seconds is not None else seconds[devices[0]]
                cells = " | ".join(
                    f"{seconds[device] / pairs:.2f} | **{baseline / seconds[device]:.1f}x**" for device in devices
                )
                pot_cell = f"{pot_seconds / pairs:.2f}" if pot_seconds is not None else "not run"
                lines.append(f"| {kind} | {pot_cell} | {cells} | {pairs / seconds[devices[-1]]:.3f} | {worst:.1e} |")
                print(lines[-1], flush=True)
                write_results(arguments.results, "\n".join(lines) + "\n")

        estimate_kinds = [kind for kind in arguments.estimate_kinds.split(",") if kind]
        if estimate_kinds:
            lines += [
                "\n## Estimate (`--approx`) against exact IWD at 224 px, stride 4 (3025 patches), in process\n",
                "| kind | pair | exact | exact s | estimate | estimate s | error | reported bound |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
        for kind in estimate_kinds:
            for name in sorted((folder / kind / "orig").glob("*.png"))[: arguments.estimate_pairs]:
                pair = analysis_view(
                    torch.stack([load_image(name), load_image(folder / kind / "adv" / name.name)]), 224
                )
                start = time.perf_counter()
                exact = exact_iwd(pair[0], pair[1], 7, 4)
                exact_seconds = time.perf_counter() - start
                start = time.perf_counter()
                estimate, bound = estimate_iwd(pair[0], pair[1], 7, 4)
                estimate_seconds = time.perf_counter() - start
                lines.append(
                    f"| {kind} | {name.stem} | {exact:.6f} | {exact_seconds:.2f} | {estimate:.6f} | "
                    f"{estimate_seconds:.2f} | {(estimate - exact) / exact:+.1e} | {bound:.1e} |"
                )
                print(lines[-1], flush=True)
    if "cuda" not in devices:
        lines.append(
            "\nNo GPU rows in this run. On a GPU, `iwdctl measure --device cuda` computes analysis views "
            "and cost matrices there (torch), and the estimate's Sinkhorn passes; the native-resolution "
            "figures (224 px, stride 1, 47,524 patches) come from `benchmarks/estimate_native.py`."
        )
    path = write_results(arguments.results, "\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
