"""Images per second of `iwdctl attack` and `iwdctl eval` against torchattacks, side by side in one run.

Same model (efficientnet_lite0), the same nips17 images and the same batch size for every row. Each
row is a whole process, start-up, decoding and resizing included:

- torchattacks: a script that loads the model and the images (Pillow, the same resize and crop) and
  runs `torchattacks.PGD(eps=8/255, alpha=2/255, steps=10)` batch by batch; it saves nothing. The
  reference row runs the network in NCHW, as the weights package builds it; `torchattacks-nhwc`
  (on request) runs it on iwdctl's classifier, which keeps its network in NHWC (channels_last) and in
  eval mode runs it with each BatchNorm folded into its convolution: what torchattacks would gain from
  iwdctl's model alone.
- `iwdctl attack --method pgd` with the report's IWD `none`, then `exact`: it also predicts before and
  after, saves and re-reads every PNG, and writes records, the report and the contact sheet.
- `iwdctl attack --method iwda-fast` (the loader-view-checked small-IWD perturbation), and on request
  (`--rows ...,iwda-ot`) `iwdctl attack` with its default IWDA.
- `iwdctl eval --attack pgd10`: clean accuracy, then PGD-10 robust accuracy.

    python benchmarks/throughput.py [--images 200] [--batch-size 16] [--device cpu] [--rows ...] [--results NAME]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, header, write_results  # noqa: E402

TORCHATTACKS_SCRIPT = """
import sys, time, torch, torchattacks
from iwdctl.data import discover
from iwdctl.images import load_image, preprocess
from iwdctl.models import load_classifier
folder, limit, batch_size, device, layout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
model = load_classifier("efficientnet_lite0", device=device)
classes = model.classes
class Normalized(torch.nn.Module):
    def __init__(self, network, mean, std):
        super().__init__()
        self.network, self.mean, self.std = network, mean, std

    def forward(self, images):
        return self.network((images - self.mean) / self.std)

if layout == "nchw":  # the network as the weights package builds it, behind a plain normalization
    model = Normalized(model.network.to(memory_format=torch.contiguous_format), model._mean, model._std).eval()
samples = discover([folder], classes)[:limit]
attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
start = time.perf_counter()
for first in range(0, len(samples), batch_size):
    batch = samples[first : first + batch_size]
    images = torch.stack([preprocess(load_image(sample.path), 224, 0.875) for sample in batch])
    labels = torch.tensor([sample.label for sample in batch])
    adversarial = attack(images, labels)
if device.startswith("cuda"):
    torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def timed(command: list[str]) -> tuple[float, str]:
    for output in (Path(part) for part in command if part.startswith("/tmp")):
        if output.is_dir() and (output / "report.json").exists():
            subprocess.run(["rm", "-rf", str(output)], check=True)  # a rerun must not resume
    start = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="torchattacks,none,exact,iwda-fast,eval")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of every row; the fastest counts")
    parser.add_argument("--results", default=None, help="results file name (default: throughput_<device>.md)")
    arguments = parser.parse_args()
    rows = arguments.rows.split(",")
    nips = str(SHARED / "nips17")
    count, batch, device = str(arguments.images), str(arguments.batch_size), arguments.device
    common = ["--limit", count, "--batch-size", batch, "--device", device, "-q"]
    lines = [
        header("Throughput: iwdctl attack and eval against torchattacks"),
        f"\n{arguments.images} nips17 images, efficientnet_lite0, batch size {arguments.batch_size}, device "
        f"{device}. Whole processes (start-up, decoding and writing included); the rows run interleaved "
        f"{arguments.repeats} times (A B C A B C) and each row's fastest run counts, since other jobs share "
        "this machine; ratio = images/s over torchattacks' images/s.\n",
        "| row | seconds | images/s | ratio to torchattacks | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        plan = {
            "torchattacks": [sys.executable, "-c", TORCHATTACKS_SCRIPT, nips, count, batch, device, "nchw"],
            "torchattacks-nhwc": [sys.executable, "-c", TORCHATTACKS_SCRIPT, nips, count, batch, device, "nhwc"],
            "none": ["iwdctl", "attack", nips, "--method", "pgd", "--iwd", "none", "--out", f"{scratch}/none", *common],
            "exact": [
                "iwdctl",
                "attack",
                nips,
                "--method",
                "pgd",
                "--iwd",
                "exact",
                "--out",
                f"{scratch}/exact",
                *common,
            ],
            "iwda-fast": [
                "iwdctl",
                "attack",
                nips,
                "--method",
                "iwda-fast",
                "--iwd",
                "exact",
                "--out",
                f"{scratch}/fast",
                *common,
            ],
            "iwda-ot": ["iwdctl", "attack", nips, "--iwd", "exact", "--out", f"{scratch}/ot", *common],
            "eval": ["iwdctl", "eval", "--data", nips, "--attack", "pgd10", "--json", f"{scratch}/eval.json", *common],
        }
        names = {
            "torchattacks": "torchattacks PGD-10 (attack only, whole process; NCHW network)",
            "torchattacks-nhwc": "torchattacks PGD-10 on iwdctl's classifier (NHWC, BatchNorm folded)",
            "none": "`iwdctl attack --method pgd --iwd none`",
            "exact": "`iwdctl attack --method pgd --iwd exact`",
            "iwda-fast": "`iwdctl attack --method iwda-fast`",
            "iwda-ot": "`iwdctl attack` (the default IWDA, iwda-ot)",
            "eval": "`iwdctl eval --attack pgd10` (clean + PGD-10)",
        }
        best: dict[str, tuple[float, str]] = {}
        for _ in range(arguments.repeats):
            for row in rows:
                seconds, stdout = timed(plan[row])
                if row not in best or seconds < best[row][0]:
                    best[row] = (seconds, stdout)
        reference = best["torchattacks"][0] if "torchattacks" in best else None
        for row in rows:
            seconds, stdout = best[row]
            note = ""
            if row in ("none", "exact", "iwda-fast", "iwda-ot"):
                out = {"none": "none", "exact": "exact", "iwda-fast": "fast", "iwda-ot": "ot"}[row]
                summary = json.loads(Path(f"{scratch}/{out}/report.json").read_text())["summary"]
                note = f"ASR {100 * summary['asr']:.1f}%, {summary['seconds_per_image']:.2f} s/image in the attack"
                if summary["mean_iwd"] is not None:
                    note += f", mean IWD {summary['mean_iwd']:.5f}"
            if row == "eval":
                result = json.loads(Path(f"{scratch}/eval.json").read_text())
                note = f"clean {100 * result['top1']:.1f}%, PGD-10 {100 * result['robust']['pgd10']:.1f}%"
            if row.startswith("torchattacks"):
                note = f"attack loop alone {float(stdout.strip()):.1f} s"
            ratio = "-" if reference is None else f"{reference / seconds:.2f}x"
            lines.append(f"| {names[row]} | {seconds:.1f} | {arguments.images / seconds:.2f} | {ratio} | {note} |")
        name = arguments.results or f"throughput_{device.split(':')[0]}.md"
        write_results(name, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
