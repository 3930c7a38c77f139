"""Does IWDD's generator make PGD training's K steps stronger than PGD's uniform random start?

IWDD starts the classifier's x~ at the generator's sample projected onto the eps-ball and refines it
with PGD training's K steps. This measures, on tiny6/train images and the shipped checkpoints, the
cross-entropy and accuracy at that start and after the K steps, for the generator's start and for a
uniform start. eps and K are the IWDD checkpoint's own; the generator runs as in training: in train
mode, on minibatches of 32.

    python benchmarks/refine_start.py [--images 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, header, write_results  # noqa: E402

from iwdctl.attacks.iwda_amortised import load_generator  # noqa: E402
from iwdctl.attacks.pgd import PGD  # noqa: E402
from iwdctl.criteria import Misclassification  # noqa: E402
from iwdctl.defend import TrainConfig, load_split, projected_start  # noqa: E402
from iwdctl.models import load_classifier  # noqa: E402

WEIGHTS = ROOT / "weights"
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    iwdd = WEIGHTS / "tiny6-preact_resnet18_w16-iwdd.safetensors"
    # Before seeding: building the classifier draws its initial weights.
    config = TrainConfig(data="", out="", **load_classifier(iwdd, device="cpu").metadata["hyperparameters"])
    torch.manual_seed(arguments.seed)
    train = load_split(SHARED / "tiny6", "train", 32)
    chosen = torch.randperm(len(train.labels))[: arguments.images]
    images, labels = train.images[chosen], train.labels[chosen]
    generator = load_generator(iwdd).train()
    with torch.no_grad():
        samples = torch.cat([generator(batch, torch.randn(len(batch), 1, 32, 32)) for batch in images.split(BATCH)])
    starts = {
        "generator (projected)": projected_start(images, samples, config.eps),
        "uniform": (images + torch.empty_like(images).uniform_(-config.eps, config.eps)).clamp(0, 1),
    }
    rows = []
    for method in ("iwdd", "pgd"):
        model = load_classifier(WEIGHTS / f"tiny6-preact_resnet18_w16-{method}.safetensors", device="cpu")
        attack = PGD(model, config.eps, config.pgd_alpha, config.pgd_steps, random_start=False)
        for label, start in starts.items():
            refined = attack.refine(images, start, Misclassification(labels))
            cells = []
            for adversarial in (start, refined):
                with torch.no_grad():
                    logits = model(adversarial)
                accuracy = 100 * (logits.argmax(1) == labels).float().mean().item()
                cells += [f"{F.cross_entropy(logits, labels).item():.3f}", f"{accuracy:.1f}"]
            rows.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    text = header("IWDD's generator start against a uniform start, before and after PGD training's K steps")
    text += (
        f"\n{arguments.images} tiny6/train images, eps {config.eps * 255:.0f}/255, K = {config.pgd_steps} steps of "
        "2.5 eps / K (the IWDD checkpoint's); "
        "shipped checkpoints; the generator is the shipped IWDD checkpoint's.\n\n"
        "| model | start | CE at start | acc % at start | CE after K steps | acc % after K steps |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    write_results("refine_start.md", text)
    print(text)


if __name__ == "__main__":
    main()
