"""ASR, l2, l-inf, IWD, diversity and seconds per image of every attack, one table per victim.

Victims: efficientnet_lite0 on nips17 (`lite0`; untargeted and targeted, the CSV's TargetClass) and
the shipped tiny6 models (`tiny6-natural`, `tiny6-pgd`, `tiny6-free`, `tiny6-iwdd`) on tiny6/val
(the same number of images from each class; targeted toward a class drawn per image, seeded, never
its own). Each method runs through `iwdctl attack` itself (one process per method and mode), so the
numbers are what users get. ASR counts every attacked image; "ASR on correct" only those the victim
classifies correctly before the attack (for robust models the meaningful figure). Diversity: a second run with `--num 4` on fewer images gives
the mean pairwise l2 and IWD among each image's 4 samples. Also written: the paper's Figure 6 (histograms
of l2, l-inf and IWD per method, untargeted runs, `attack_benchmark_<victim>_figure6.png`) and, from
each `--num 4` run, a contact sheet of its first images (`contact_<victim>_<method>_<mode>.jpg`: the
classifier's view of the original, then the 4 samples, captioned with the victim's prediction).

    python benchmarks/attack_benchmark.py --victim lite0 [--scale 1.0] [--methods pgd,iwda-ot]
    python benchmarks/attack_benchmark.py --victim tiny6-pgd      # writes attack_benchmark_<victim>.md
    python benchmarks/attack_benchmark.py --victim tiny6-pgd --methods pgd,pgd@16/255,pgd@32/255  # budgets

A method given as `name@budget` runs with `--eps budget` (an l_p baseline at a larger budget: the
success it buys on robust models, and the IWD it costs).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, SHARED, header, write_results  # noqa: E402

from iwdctl.files import write_atomic, write_text_atomic  # noqa: E402
from iwdctl.measure import PairResult, plot_histograms  # noqa: E402
from iwdctl.models import ImageClassifier, load_classifier  # noqa: E402

# method -> images per mode for lite0 on 2 CPU cores (extra options); tiny6 victims attack every
# method on their whole image set.
PLAN: list[tuple[str, int, list[str]]] = [
    ("iwda-ot", 100, []),
    ("iwda-fast", 100, []),
    ("fgsm", 100, []),
    ("pgd", 100, []),
    ("pgd-l2", 100, []),
    ("adef", 100, []),
    ("iwda", 20, ["--preset", "cpu"]),
    ("eot", 50, []),
    ("stadv", 40, []),
]
DIVERSITY_METHODS = ("iwda-ot", "iwda-fast", "iwda", "pgd")
TINY6_WEIGHTS = "weights/tiny6-preact_resnet18_w16-{}.safetensors"


@dataclass(frozen=True)
class Victim:
    model: str
    data: Path
    targets: Path | None  # a CSV of per-image targets for the targeted rows; None: drawn (drawn_targets)
    reread: bool  # re-read the PNGs with other readers (lite0's loader views)


def victims() -> dict[str, Victim]:
    nips = SHARED / "nips17"
    found = {"lite0": Victim("efficientnet_lite0", nips, nips / "images.csv", True)}
    for kind in ("natural", "pgd", "free", "iwdd"):
        found[f"tiny6-{kind}"] = Victim(str(ROOT / TINY6_WEIGHTS.format(kind)), SHARED / "tiny6" / "val", None, False)
    return found


def balanced_subset(data: Path, per_class: int, into: Path) -> Path:
    """A folder of links to the first `per_class` images (by name) of every class folder."""
    for folder in sorted(path for path in data.iterdir() if path.is_dir()):
        (into / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            link = into / folder.name / image.name
            if not link.exists():
                link.symlink_to(image)
    return into


def drawn_targets(subset: Path, into: Path) -> Path:
    """A CSV of file, label and a target drawn per image among the other classes (seed 0)."""
    generator = random.Random(0)
    classes = sorted(path.name for path in subset.iterdir() if path.is_dir())
    rows = ["file,label,target"]
    for label in classes:
        for image in sorted((subset / label).iterdir()):
            target = generator.choice([name for name in classes if name != label])
            rows.append(f"{label}/{image.name},{label},{target}")
    write_text_atomic(into, "\n".join(rows) + "\n")
    return into


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


def correct_only(out: Path) -> tuple[float, int]:
    """(ASR among the images the victim classified correctly before the attack, their count)."""
    records = [r for r in json.loads((out / "report.json").read_text())["images"] if r["pred_before"] == r["label"]]
    return (sum(r["success"] for r in records) / len(records) if records else 0.0), len(records)


CONTACT_ROWS = 4


def figure6_rows(out: Path, method: str) -> list[PairResult]:
    """The untargeted run's per-image distances, as `iwdctl measure` rows for its histogram plot."""
    records = json.loads((out / "report.json").read_text())["images"]
    return [
        PairResult(
            orig=record["input"],
            adv=record["outputs"][0],
            method=method,
            l2=record["l2"],
            linf=record["linf"],
            iwd=record["iwd"],
            ssim=float("nan"),  # not in the attack's report; the plot does not use it
            iwd_exact=record["iwd_mode"] == "exact",
            iwd_bound=0.0,
        )
        for record in records
        if record["iwd"] is not None
    ]


def save_contact_sheet(out: Path, name: str) -> None:
    """The first CONTACT_ROWS rows of the run's grid.png, as a JPEG in the results folder."""
    sheet = Image.open(out / "grid.png").convert("RGB")
    row_height = sheet.height // len(json.loads((out / "report.json").read_text())["images"])
    sheet = sheet.crop((0, 0, sheet.width, min(sheet.height, CONTACT_ROWS * row_height)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / name, lambda temporary: sheet.save(temporary, format="JPEG", quality=88))


def run_attack(command: list[str]) -> dict:
    subprocess.run(command, check=True, capture_output=True)
    out = Path(command[command.index("--out") + 1])
    return json.loads((out / "report.json").read_text())["summary"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--victim", default="lite0", choices=sorted(victims()))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every lite0 image count")
    parser.add_argument("--per-class", type=int, default=10, help="tiny6 images per class")
    parser.add_argument("--diversity-images", type=int, default=10, help="images of the --num 4 runs")
    parser.add_argument("--methods", default=",".join(method for method, _, _ in PLAN))
    parser.add_argument("--modes", default="untargeted,targeted", help="untargeted, targeted or both")
    parser.add_argument("--keep", type=Path, help="keep the attacks' output folders here (default: discarded)")
    parser.add_argument("--results", help="results file name (default: attack_benchmark_<victim>.md)")
    arguments = parser.parse_args()
    chosen = arguments.methods.split(",")
    plan = {method: (count, extra) for method, count, extra in PLAN}
    if unknown := [method for method in chosen if method.partition("@")[0] not in plan]:
        parser.error(f"unknown method {', '.join(unknown)}; known: {', '.join(plan)}")
    results = arguments.results or f"attack_benchmark_{arguments.victim}.md"
    victim = victims()[arguments.victim]
    model = load_classifier("efficientnet_lite0", device="cpu") if victim.reread else None
    lines = [
        header(f"Attacks against {arguments.victim}"),
        "\nASR: share of images whose saved 8-bit PNG is misclassified (untargeted) or classified as its "
        "target (targeted: nips17's TargetClass; on tiny6 a class drawn per image); ASR on correct: the same among the images the victim classified "
        "correctly before the attack. Distances to the classifier's view of the original; IWD as "
        "`iwdctl measure` defines it (7x7 patches, analysis size 64). Means over all attacked images. "
        "Diversity: mean pairwise l2 and IWD among the 4 samples of each image (`--num 4`).\n",
    ]
    if victim.reread:
        lines[-1] += (
            "Re-read columns: the PNGs read back by Pillow and torchvision (not iwdctl's loader) and fed to lite0 "
            "with its own (x - 0.5) / 0.5 scaling (should equal ASR), with ImageNet's mean/std, and with timm's "
            "default evaluation transform (resize 256, centre crop 224, ImageNet mean/std). Clean nips17 accuracy "
            "under the last two readers is only about 66%, so their untargeted ASR counts clean errors too.\n"
        )
    columns = "| method | mode | images | ASR | ASR on correct (n) | mean l2 | mean l-inf | mean IWD | diversity l2 | diversity IWD | s / image |"
    lines += [
        columns + (" re-read: own | ImageNet norm | timm transform |" if victim.reread else ""),
        "| --- " * (11 + 3 * victim.reread) + "|",
    ]
    commands = []
    histogram_rows: list[PairResult] = []
    with tempfile.TemporaryDirectory() as scratch:
        temporary = Path(arguments.keep or scratch)
        data, targets = victim.data, victim.targets
        if not victim.reread:
            data = balanced_subset(victim.data, arguments.per_class, temporary / "subset")
            targets = drawn_targets(data, temporary / "targets.csv")
        for method in chosen:
            name, _, budget = method.partition("@")
            count, extra = plan[name]
            extra = [*extra, "--eps", budget] if budget else extra
            count = max(1, round(count * arguments.scale)) if victim.reread else 6 * arguments.per_class
            for mode in arguments.modes.split(","):
                out = temporary / f"{arguments.victim}-{method.replace('/', '_')}-{mode}"
                base = ["iwdctl", "attack", str(data), "--model", victim.model, "--method", name, "-q", *extra]
                if mode == "targeted":
                    base += ["--targets-from", str(targets)]
                command = [*base, "--limit", str(count), "--out", str(out)]
                runs = [command]
                if name in DIVERSITY_METHODS and not budget:
                    runs.append(
                        [
                            *base,
                            "--limit",
                            str(min(count, arguments.diversity_images)),
                            "--num",
                            "4",
                            "--out",
                            f"{out}-num4",
                        ]
                    )
                for run in runs:
                    commands.append(
                        " ".join(run)
                        .replace(str(temporary), "$TMP")
                        .replace(str(SHARED), "../shared/data")
                        .replace(str(ROOT) + "/", "")
                    )
                start = time.perf_counter()
                summary = run_attack(command)
                wall = time.perf_counter() - start
                diverse = run_attack(runs[1]) if len(runs) > 1 else None
                if diverse is not None:
                    save_contact_sheet(Path(f"{out}-num4"), f"contact_{arguments.victim}_{method}_{mode}.jpg")
                if mode == "untargeted":
                    histogram_rows += figure6_rows(out, method)
                    plot_histograms(histogram_rows, RESULTS / results.replace(".md", "_figure6.png"))
                on_correct, correct = correct_only(out)
                diversity = f"{diverse['diversity_l2']:.3f} | {diverse['diversity_iwd']:.5f}" if diverse else "- | -"
                row = (
                    f"| {method} | {mode} | {summary['n']} | {100 * summary['asr']:.1f}% | {100 * on_correct:.1f}% ({correct}) | "
                    f"{summary['mean_l2']:.3f} | {summary['mean_linf']:.4f} | {summary['mean_iwd']:.5f} | {diversity} | "
                    f"{summary['seconds_per_image']:.2f} |"
                )
                if model is not None:
                    row += " " + " | ".join(f"{100 * value:.1f}%" for value in recheck(out, model)) + " |"
                lines.append(row)
                print(row, f"(wall {wall:.0f} s)", flush=True)
                write_results(
                    results,
                    "\n".join(lines + ["\nCommands:\n"] + [f"    {c}" for c in commands]) + "\n",
                )


if __name__ == "__main__":
    main()
