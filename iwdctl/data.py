"""Datasets: class folders (by name or wnid), a CSV of file + label, a flat folder, single files."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from iwdctl.classes import ClassIndex
from iwdctl.errors import ClassNameError, InputError, IwdctlError
from iwdctl.images import is_image_file, load_image, preprocess

T = TypeVar("T")

FILE_COLUMNS = ("ImageId", "file", "filename", "path", "image", "image_id")
LABEL_COLUMNS = ("TrueLabel", "label", "class", "true_label", "y")
TARGET_COLUMNS = ("TargetClass", "target", "target_class")
# The NIPS 2017 adversarial competition's CSV (TrueLabel / TargetClass) counts ImageNet classes from 1.
ONE_BASED_COLUMNS = ("TrueLabel", "TargetClass")


@dataclass(frozen=True)
class Sample:
    """One image and what is known of it: its label and, for targeted attacks, its target."""

    path: Path
    key: str  # relative path without suffix: names outputs and pairs results
    label: int | None = None
    target: int | None = None


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and is_image_file(path))


def discover(
    inputs: Sequence[str | os.PathLike[str]],
    classes: ClassIndex,
    labels_csv: str | os.PathLike[str] | None = None,
    one_based: bool | None = None,
) -> list[Sample]:
    """Find the images under `inputs` (files or folders) and their labels.

    - A CSV (`labels_csv`, or the one CSV at the top of a folder) with a file and a label column.
      Labels are indices, names or wnids; `one_based` None means 1-based for the NIPS 2017 columns.
    - A folder of class folders named by class name or wnid (ImageFolder, ImageNet-val layout).
    - A flat folder of images, or image files: unlabelled.
    """
    samples: list[Sample] = []
    for entry in inputs:
        path = Path(entry)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_file():
            if labels_csv is not None:
                samples += [s for s in read_csv(labels_csv, classes, one_based, [path.parent]) if s.path == path]
            else:
                samples.append(Sample(path, path.stem))
            continue
        csv_path = Path(labels_csv) if labels_csv is not None else _single_csv(path)
        if csv_path is not None:
            samples += read_csv(
                csv_path, classes, one_based, [path, path / "images", csv_path.parent, csv_path.parent / "images"]
            )
            continue
        samples += _folder_samples(path, classes)
    if not samples:
        raise InputError(f"no images found in {', '.join(str(entry) for entry in inputs)}")
    return samples


def _single_csv(folder: Path) -> Path | None:
    csv_files = sorted(folder.glob("*.csv"))
    return csv_files[0] if len(csv_files) == 1 else None


def _folder_samples(folder: Path, classes: ClassIndex) -> list[Sample]:
    class_folders = sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    labelled = [child for child in class_folders if _image_files(child)]
    if labelled:
        samples = []
        for child in labelled:
            try:
                label = classes.resolve(child.name)
            except ClassNameError as error:
                raise ClassNameError(f"{child}: folder name is not a class of this model ({error})") from error
            samples += [
                Sample(file, str(file.relative_to(folder).with_suffix("")), label) for file in _image_files(child)
            ]
        return samples
    files = [file for file in sorted(folder.iterdir()) if file.is_file() and is_image_file(file)]
    if not files:
        raise InputError(f"{folder}: no images in this folder")
    return [Sample(file, file.stem) for file in files]


def _pick_column(header: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {name.strip().lower(): name for name in header if name}
    for candidate in candidates:
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    return None


def read_csv(
    csv_path: str | os.PathLike[str], classes: ClassIndex, one_based: bool | None, search: Sequence[Path]
) -> list[Sample]:
    """Samples from a CSV with a file column and a label column, a target column or both."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no such CSV file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{csv_path}: not a readable CSV ({error})") from error
    file_column = _pick_column(header, FILE_COLUMNS)
    label_column = _pick_column(header, LABEL_COLUMNS)
    target_column = _pick_column(header, TARGET_COLUMNS)
    if file_column is None or label_column is None and target_column is None:
        raise InputError(
            f"{csv_path}: needs a file column ({'/'.join(FILE_COLUMNS)}) and a label column "
            f"({'/'.join(LABEL_COLUMNS)}) or a target column ({'/'.join(TARGET_COLUMNS)})"
        )
    offset = 1 if (one_based if one_based is not None else (label_column or target_column) in ONE_BASED_COLUMNS) else 0
    folders = list(dict.fromkeys(folder for folder in search if folder.is_dir()))
    stems = _stem_index(folders)
    samples = []
    for line, row in enumerate(rows, start=2):
        name = (row.get(file_column) or "").strip()
        if not name:
            continue
        file = _find_file(name, folders, stems)
        if file is None:
            raise InputError(f"{csv_path}:{line}: image {name!r} not found in {', '.join(map(str, folders))}")
        label = _csv_class(row.get(label_column), offset, classes, csv_path, line) if label_column else None
        target = _csv_class(row.get(target_column), offset, classes, csv_path, line) if target_column else None
        samples.append(
            Sample(file, Path(name).with_suffix("").as_posix() if Path(name).suffix else name, label, target)
        )
    return samples


def _stem_index(folders: Sequence[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.is_file() and is_image_file(file):
                index.setdefault(file.stem, file)
    return index


def _find_file(name: str, folders: Sequence[Path], stems: dict[str, Path]) -> Path | None:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return stems.get(name)  # NIPS 2017 lists ImageId without its ".png"


def _csv_class(value: str | None, offset: int, classes: ClassIndex, csv_path: Path, line: int) -> int | None:
    text = (value or "").strip()
    if not text:
        return None
    if text.lstrip("-").isdigit():
        text = str(int(text) - offset)
    try:
        return classes.resolve(text)
    except ClassNameError as error:
        raise ClassNameError(f"{csv_path}:{line}: {error}") from error


class ImageDataset(torch.utils.data.Dataset):
    """Samples loaded and preprocessed to the classifier's input size; labels -1 when unknown."""

    def __init__(self, samples: Sequence[Sample], input_size: int, crop_pct: float) -> None:
        self.samples = list(samples)
        self.input_size = input_size
        self.crop_pct = crop_pct

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        image = preprocess(load_image(sample.path), self.input_size, self.crop_pct)
        return image, -1 if sample.label is None else sample.label, index


def batches(
    dataset: torch.utils.data.Dataset, batch_size: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, labels, indices) in dataset order; `workers` processes decode and resize ahead of the
    consumer (two batches each), so the device does not wait for disk."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from from_workers(loader)


def from_workers(loader: Iterable[T]) -> Iterator[T]:
    """A DataLoader's items, with an IwdctlError raised in a worker process given back its own message:
    torch re-raises it in the main process with the worker's whole traceback as the message."""
    try:
        yield from loader
    except IwdctlError as error:
        message = str(error)
        if not message.startswith("Caught "):
            raise
        last = message.rstrip().splitlines()[-1]  # "iwdctl.errors.InputError: <the message>"
        raise type(error)(last.split(": ", 1)[-1]) from error


def default_workers() -> int:
    """Decoding processes for a DataLoader: up to 4, leaving a core to the main process."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))
