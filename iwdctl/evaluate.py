"""`iwdctl eval`: clean top-1 / top-5 accuracy, robust accuracy under attacks, and transfer success,
all through the same batched pipeline as `iwdctl attack` (DataLoader workers decode; the device
classifies and attacks whole batches)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from iwdctl.attacks import make_attack
from iwdctl.attacks.base import ImageJob
from iwdctl.criteria import Misclassification
from iwdctl.data import ImageDataset, Sample, batches, discover
from iwdctl.errors import InputError
from iwdctl.images import load_image, preprocess
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
    samples = list(discover(data, model.classes, labels_csv, one_based))
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
    workers: int = 0,
) -> EvalResult:
    """Top-1 and top-5 accuracy (fractions) on `samples`."""
    start = time.perf_counter()
    dataset = ImageDataset(samples, model.input_size, model.crop_pct)
    top1 = top5 = done = 0
    k = min(5, model.num_classes)
    progress(0, len(dataset), "clean")
    for images, labels, _ in batches(dataset, batch_size, workers):
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


def robust_accuracy(
    model: ImageClassifier,
    samples: Sequence[Sample],
    spec: str,
    eps: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: ProgressCallback = no_progress,
    workers: int = 0,
    restarts: int = 1,
    **options: Any,
) -> float:
    """Accuracy on adversarial examples of every sample, the attack named by `spec` (the registry's:
    pgd10, fgsm, pgd-l2, iwda-ot, ...); `eps` goes to attacks with a budget. Each image is seeded by
    its key, as in `iwdctl attack`. With `restarts` R > 1 an image counts as robust only if it
    survives R runs with different seeds (restart r uses sample r's seed); each restart attacks only
    the images that survived the ones before."""
    from iwdctl.attacks.runner import sample_seed

    attack = make_attack(spec, model, strict=False, eps=eps, **options)
    survivors = list(range(len(samples)))  # the images robust so far
    progress(0, len(samples), spec)

    def jobs(indices: list[int], restart: int) -> Iterator[ImageJob]:
        dataset = ImageDataset([samples[index] for index in indices], model.input_size, model.crop_pct)
        for images, labels, rows in batches(dataset, batch_size, workers):
            for image, label, row in zip(images, labels.to(model.device), rows.tolist()):
                key = samples[indices[row]].key
                yield ImageJob(indices[row], image, Misclassification(label[None]), [sample_seed(seed, key, restart)])

    @torch.no_grad()
    def fooled(group: list[tuple[ImageJob, torch.Tensor]]) -> list[int]:
        logits = model(torch.stack([examples[0] for _, examples in group]))
        return [int(job.key) for (job, _), row in zip(group, logits) if bool(job.criterion.is_adversarial(row[None]))]

    for restart in range(restarts):
        # Through the attack's stream, as in `iwdctl attack` (early-stopping attacks refill finished
        # rows); examples are judged in groups of a batch, the classifier being batch-invariant.
        beaten: set[int] = set()
        group: list[tuple[ImageJob, torch.Tensor]] = []
        for count, finished in enumerate(attack.stream(jobs(survivors, restart), batch_size), start=1):
            group.append(finished)
            if len(group) == batch_size or count == len(survivors):
                beaten.update(fooled(group))
                group = []
                if restart == 0:
                    progress(count, len(samples), spec)
        survivors = [index for index in survivors if index not in beaten]
        if not survivors:
            break
    progress(len(samples), len(samples), spec)
    return len(survivors) / len(samples) if samples else 0.0


@dataclass
class TransferResult:
    model: str
    folder: str
    n: int
    success_rate: float
    source_success_rate: float


class _OutputImages(torch.utils.data.Dataset):
    """The PNGs listed in an attack report, at the classifier's input size, with what they aim for."""

    def __init__(self, folder: Path, records: list[dict[str, Any]], model: ImageClassifier) -> None:
        self.folder, self.model = folder, model
        self.items = []
        for record in records:
            label = model.classes.resolve(record["label"])
            target = model.classes.resolve(record["target"]) if record.get("target") else -1
            for output, source_ok in zip(record["outputs"], record["samples_success"]):
                self.items.append((output, label, target, bool(source_ok)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        output, label, target, source_ok = self.items[index]
        image = preprocess(load_image(self.folder / output), self.model.input_size, self.model.crop_pct)
        return image, torch.tensor([label, target, int(source_ok)]), index


@torch.no_grad()
def transfer_success(
    model: ImageClassifier,
    folder: str | os.PathLike[str],
    model_name: str = "",
    batch_size: int = 64,
    workers: int = 0,
    progress: ProgressCallback = no_progress,
) -> TransferResult:
    """Success rate against `model` of the adversarial PNGs in a folder written by `iwdctl attack`."""
    folder = Path(folder)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise InputError(f"{folder}: no report.json (a folder written by `iwdctl attack`)")
    try:
        records = json.loads(report_path.read_text())["images"]
    except (ValueError, KeyError) as error:
        raise InputError(f"{report_path}: not an attack report") from error
    dataset = _OutputImages(folder, records, model)
    if len(dataset) == 0:
        raise InputError(f"{folder}: the report lists no outputs")
    hits = source_hits = done = 0
    progress(0, len(dataset), "transfer")
    for images, meta, _ in batches(dataset, batch_size, workers):
        predicted = model(images.to(model.device)).argmax(1).cpu()
        label, target, source_ok = meta[:, 0], meta[:, 1], meta[:, 2]
        targeted = target >= 0
        hit = torch.where(targeted, predicted == target, predicted != label)
        hits += int(hit.sum())
        source_hits += int(source_ok.sum())
        done += len(images)
        progress(done, len(dataset), "transfer")
    return TransferResult(model_name or model.arch, str(folder), done, hits / done, source_hits / done)


__all__ = [
    "EvalResult",
    "Prediction",
    "TransferResult",
    "clean_accuracy",
    "labelled_samples",
    "predict",
    "robust_accuracy",
    "transfer_success",
]
