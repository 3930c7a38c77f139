"""`iwdctl eval`: clean top-1 / top-5 accuracy of a classifier on a labelled dataset."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from iwdctl.attacks.base import Attack
from iwdctl.data import ImageDataset, Sample, batches, discover
from iwdctl.errors import InputError
from iwdctl.images import preprocess
from iwdctl.models import ImageClassifier
from iwdctl.runtime import ProgressCallback, no_progress


@dataclass
class EvalResult:
    model: str
    data: str
    n: int
    top1: float
    top5: float
    seconds: float
    robust: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        result = asdict(self)
        if not self.robust:
            del result["robust"]
        return result


@dataclass
class Prediction:
    sample: Sample
    top5: list[int]
    probabilities: list[float]


def labelled_samples(
    model: ImageClassifier,
    data: Sequence[str | os.PathLike[str]],
    labels_csv: str | None = None,
    one_based: bool | None = None,
    limit: int | None = None,
) -> list[Sample]:
    samples = [sample for sample in discover(data, model.classes, labels_csv, one_based)]
    if any(sample.label is None for sample in samples):
        raise InputError("evaluation needs labels: class folders or a CSV with a label column (--labels)")
    return samples[:limit] if limit else samples


@torch.no_grad()
def clean_accuracy(
    model: ImageClassifier,
    samples: Sequence[Sample],
    batch_size: int = 64,
    progress: ProgressCallback = no_progress,
    model_name: str = "",
    data_name: str = "",
) -> EvalResult:
    """Top-1 and top-5 accuracy (fractions) on `samples`."""
    start = time.perf_counter()
    dataset = ImageDataset(samples, model.input_size, model.crop_pct)
    top1 = top5 = done = 0
    k = min(5, model.num_classes)
    progress(0, len(dataset), "clean")
    for images, labels, _ in batches(dataset, batch_size):
        logits = model(images.to(model.device))
        labels = labels.to(model.device)
        ranked = logits.topk(k, dim=1).indices
        top1 += (ranked[:, 0] == labels).sum().item()
        top5 += (ranked == labels[:, None]).any(dim=1).sum().item()
        done += len(labels)
        progress(done, len(dataset), "clean")
    return EvalResult(model_name or model.arch, data_name, done, top1 / done, top5 / done, time.perf_counter() - start)


@torch.no_grad()
def predict(model: ImageClassifier, samples: Sequence[Sample], batch_size: int = 64) -> list[Prediction]:
    """Top-5 classes and their probabilities for each sample."""
    dataset = ImageDataset(samples, model.input_size, model.crop_pct)
    predictions = []
    for images, _, indices in batches(dataset, batch_size):
        probabilities = model(images.to(model.device)).softmax(dim=1)
        values, classes = probabilities.topk(min(5, model.num_classes), dim=1)
        for row, index in enumerate(indices.tolist()):
            predictions.append(Prediction(samples[index], classes[row].tolist(), values[row].tolist()))
    return predictions


def parse_fraction(text: str) -> float:
    """'8/255' or '0.03' -> float."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise InputError(f"not a number or fraction: {text!r}") from error


def robust_attack(name: str, model: ImageClassifier, eps: float, random_start: bool = True) -> Attack:
    """Evaluation attacks by name: fgsm, pgdN (N steps of eps/4, random start), e.g. pgd10, pgd20."""
    from iwdctl.attacks import FGSM, PGD

    if name == "fgsm":
        return FGSM(model, eps)
    if name.startswith("pgd") and name[3:].isdigit() and int(name[3:]) > 0:
        return PGD(model, eps, eps / 4, int(name[3:]), random_start=random_start)
    raise InputError(f"unknown evaluation attack {name!r}; use fgsm or pgdN (pgd10, pgd20, ...)")


def robust_accuracy(
    model: ImageClassifier,
    samples: Sequence[Sample],
    attack_name: str,
    eps: float,
    seed: int = 0,
    batch_size: int = 64,
    progress: ProgressCallback = no_progress,
    random_start: bool = True,
) -> float:
    """Accuracy on adversarial examples of every sample (each image seeded by its key)."""
    from iwdctl.attacks.runner import sample_seed
    from iwdctl.criteria import Misclassification

    attack = robust_attack(attack_name, model, eps, random_start)
    dataset = ImageDataset(samples, model.input_size, model.crop_pct)
    correct = done = 0
    progress(0, len(dataset), attack_name)
    for images, labels, indices in batches(dataset, batch_size):
        labels = labels.to(model.device)
        seeds = [sample_seed(seed, samples[int(index)].key, 0) for index in indices]
        adversarial = attack(images, Misclassification(labels), seeds)
        with torch.no_grad():
            correct += (model(adversarial).argmax(1) == labels).sum().item()
        done += len(labels)
        progress(done, len(dataset), attack_name)
    return correct / done


@dataclass
class TransferResult:
    model: str
    folder: str
    n: int
    success_rate: float
    source_success_rate: float


@torch.no_grad()
def transfer_success(model: ImageClassifier, folder: str | os.PathLike[str], model_name: str = "") -> TransferResult:
    """Success rate against `model` of the adversarial PNGs in a folder written by `iwdctl attack`."""
    import json
    from pathlib import Path

    from iwdctl.images import load_image

    report_path = Path(folder) / "report.json"
    if not report_path.is_file():
        raise InputError(f"{folder}: no report.json (a folder written by `iwdctl attack`)")
    try:
        records = json.loads(report_path.read_text())["images"]
    except (ValueError, KeyError) as error:
        raise InputError(f"{report_path}: not an attack report") from error
    hits = total = source_hits = 0
    for record in records:
        label = model.classes.resolve(record["label"])
        target = model.classes.resolve(record["target"]) if record.get("target") else None
        for output, source_ok in zip(record["outputs"], record["samples_success"]):
            image = load_image(Path(folder) / output)
            image = preprocess(image, model.input_size, model.crop_pct)
            predicted = int(model(image[None].to(model.device)).argmax(1))
            hits += predicted == target if target is not None else predicted != label
            source_hits += bool(source_ok)
            total += 1
    if total == 0:
        raise InputError(f"{folder}: the report lists no outputs")
    return TransferResult(model_name or model.arch, str(folder), total, hits / total, source_hits / total)
