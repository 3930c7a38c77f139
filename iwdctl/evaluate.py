"""`iwdctl eval`: clean top-1 / top-5 accuracy of a classifier on a labelled dataset."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from iwdctl.data import ImageDataset, Sample, batches, discover
from iwdctl.errors import InputError
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
