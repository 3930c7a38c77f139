"""`iwdctl attack`: attack batches of images, save PNGs at the classifier's input resolution, verify
them by re-reading the files, and write a report. Resumable per image and shardable with torchrun.

The device only attacks and classifies. A DataLoader's worker processes decode and resize the next
batches, which reach the attack as a stream of images (Attack.stream: attacks that stop early per
image refill finished rows); a pool of writer threads saves each image's PNGs, re-reads them, measures
IWD (numba, without the GIL) and writes the image's record: beside the attack when it runs on a GPU,
in bursts on every core between its batches when it runs on the CPU (see _Writer). Each image and
sample draws from its own seeded generator and the classifier pads batches to a fixed granule
(ImageClassifier.batch_invariant), so the output bytes do not depend on the batch size, the number
of workers or the sharding.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import statistics
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iwdctl.attacks.base import Attack, ImageJob
from iwdctl.costs import cpu_threads
from iwdctl.criteria import make_criterion
from iwdctl.data import ImageDataset, Sample, batches
from iwdctl.distances import L2, Linf
from iwdctl.errors import InputError
from iwdctl.files import output_directory, write_atomic, write_json_atomic, write_text_atomic
from iwdctl.images import load_image, preprocess, save_png, to_uint8
from iwdctl.iwd import iwd_pair
from iwdctl.models import ImageClassifier
from iwdctl.runtime import ProgressCallback, no_progress, single_threaded_blas

RECORDS = ".records"
IWD_MODES = ("exact", "approx", "none")


@dataclass(frozen=True)
class AttackSettings:
    method: str
    num: int = 1
    seed: int = 0
    target: int | None = None  # one target class for every image (--target)
    use_sample_targets: bool = False  # targets from the CSV (--targets-from)
    batch_size: int = 16
    workers: int = 0  # DataLoader processes that decode and resize
    iwd: str = "exact"  # the report's IWD: exact, approx (an estimate with a certified bound) or none
    # Threads that save, re-read and measure beside an attack on a GPU (on a CPU: every core, in bursts).
    writers: int = field(default_factory=lambda: max(1, cpu_threads() - 1))

    def validate(self) -> None:
        if self.iwd not in IWD_MODES:
            raise InputError(f"--iwd must be one of {', '.join(IWD_MODES)}, not {self.iwd!r}")
        for name, value, minimum in (("--num", self.num, 1), ("--batch-size", self.batch_size, 1)):
            if value < minimum:
                raise InputError(f"{name} must be at least {minimum}, not {value}")
        if self.workers < 0 or self.writers < 1:
            raise InputError("--workers must be zero or more")


def sample_seed(seed: int, key: str, index: int) -> int:
    """A seed per (run seed, image, sample): results do not depend on batching or sharding."""
    return zlib.crc32(f"{seed}:{key}:{index}".encode())


def _record_path(out_dir: Path, key: str) -> Path:
    return out_dir / RECORDS / f"{key}.json"


def _output_path(out_dir: Path, key: str, index: int) -> Path:
    return out_dir / f"{key}_adv{index}.png"


def _finished(out_dir: Path, sample: Sample, settings: AttackSettings) -> dict[str, Any] | None:
    path = _record_path(out_dir, sample.key)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    outputs_exist = all((out_dir / output).exists() for output in record.get("outputs", []))
    same_job = (
        record.get("method") == settings.method
        and len(record.get("outputs", [])) == settings.num
        and record.get("iwd_mode") == settings.iwd
    )
    return record if outputs_exist and same_job else None


@dataclass
class _AttackedImage:
    """What the device computed for one image; the writer turns it into files and a record."""

    sample: Sample
    original: torch.Tensor  # (3, H, W) float, CPU
    pixels: np.ndarray  # (K, H, W, 3) uint8: the samples as they will be saved
    label: int
    target: int | None
    prediction_before: int
    predictions: list[int]
    l2: list[float]
    linf: list[float]
    seconds: float


class _Writer:
    """Saves, re-reads and measures attacked images in background threads; writes their records.

    With the attack on a GPU the writers overlap it. With the attack on the CPU they cannot: they
    share its cores, and a core taken from the attack's parallel regions stalls its other threads
    (the report's exact IWD cost the attack about twice its own CPU time). There the images are
    finished in bursts of two batches on every core while the attack waits.
    """

    def __init__(self, out_dir: Path, settings: AttackSettings, model: ImageClassifier) -> None:
        self.out_dir, self.settings = out_dir, settings
        self.names = model.class_names
        self.in_bursts = model.device.type == "cpu"
        self.pool = ThreadPoolExecutor(cpu_threads() if self.in_bursts else settings.writers)
        self.pending: deque[Future[dict[str, Any]]] = deque()
        self.waiting: list[_AttackedImage] = []  # the next burst
        self.records: list[dict[str, Any]] = []

    @property
    def submitted(self) -> int:
        return len(self.records) + len(self.pending) + len(self.waiting)

    def submit(self, image: _AttackedImage) -> None:
        if self.in_bursts:
            self.waiting.append(image)
            if len(self.waiting) >= 2 * self.settings.batch_size:
                self._burst()
            return
        self.pending.append(self.pool.submit(self._finish, image))
        # Bounded backlog (and errors surface here): the device may run ahead by about two batches.
        while len(self.pending) > 2 * self.settings.batch_size + self.settings.writers:
            self.records.append(self.pending.popleft().result())

    def _burst(self) -> None:
        futures = [self.pool.submit(self._finish, image) for image in self.waiting]
        self.waiting = []
        self.records.extend(future.result() for future in futures)

    def close(self) -> list[dict[str, Any]]:
        try:
            if self.waiting:
                self._burst()
            while self.pending:
                self.records.append(self.pending.popleft().result())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.records

    def _iwd(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        if self.settings.iwd == "none":
            return None
        return iwd_pair(x, y, approx=self.settings.iwd == "approx", device="cpu").value

    def _finish(self, image: _AttackedImage) -> dict[str, Any]:
        sample, settings = image.sample, self.settings
        outputs = []
        for index, pixels in enumerate(image.pixels):
            path = _output_path(self.out_dir, sample.key, index)
            save_png(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, path)
            # Success was judged on these 8-bit values; the file must read back as exactly them.
            if not np.array_equal(to_uint8(load_image(path)), pixels):
                raise InputError(f"{path}: the saved PNG does not read back as the attacked pixels")
            outputs.append(path)
        reread = [torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 for pixels in image.pixels]
        predictions = torch.tensor(image.predictions)
        target, label = image.target, image.label
        success = predictions == target if target is not None else predictions != label
        iwd = [self._iwd(image.original, sample_image) for sample_image in reread]
        names = self.names
        record: dict[str, Any] = {
            "input": str(sample.path),
            "key": sample.key,
            "method": settings.method,
            "label": names[label],
            "label_index": label,
            "target": names[target] if target is not None else None,
            "target_index": target,
            "outputs": [str(path.relative_to(self.out_dir)) for path in outputs],
            "success": bool(success.all()),
            "samples_success": [bool(value) for value in success],
            "pred_before": names[image.prediction_before],
            "pred_after": names[image.predictions[0]],
            "pred_after_all": [names[value] for value in image.predictions],
            "l2": statistics.fmean(image.l2),
            "linf": statistics.fmean(image.linf),
            "iwd": statistics.fmean(iwd) if settings.iwd != "none" else None,
            "iwd_mode": settings.iwd,
            "samples_l2": image.l2,
            "samples_linf": image.linf,
            "samples_iwd": iwd,
            "seconds": image.seconds,
        }
        if len(reread) > 1:
            pairs = list(itertools.combinations(reread, 2))
            record["diversity_l2"] = statistics.fmean(float((a.double() - b.double()).norm()) for a, b in pairs)
            if settings.iwd != "none":
                record["diversity_iwd"] = statistics.fmean(self._iwd(a, b) for a, b in pairs)  # type: ignore[misc]
            else:
                record["diversity_iwd"] = None
        write_json_atomic(_record_path(self.out_dir, sample.key), record)
        return record


@torch.no_grad()
def _predict(model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    return model(images.to(model.device)).argmax(dim=1).cpu()


def _targets(samples: Sequence[Sample], settings: AttackSettings) -> list[int | None]:
    targets = []
    for sample in samples:
        target = settings.target if settings.target is not None else sample.target
        if settings.use_sample_targets and target is None:
            raise InputError(f"{sample.path}: no target class in the targets CSV")
        targets.append(target if (settings.target is not None or settings.use_sample_targets) else None)
    return targets


def run_attack(
    model: ImageClassifier,
    attack: Attack,
    samples: Sequence[Sample],
    settings: AttackSettings,
    out_dir: str | os.PathLike[str],
    progress: ProgressCallback = no_progress,
    rank: int = 0,
    world_size: int = 1,
) -> list[dict[str, Any]]:
    """Attack this process's share of `samples` (every world_size-th), skipping finished images.

    `model` (and the attack's model) should be batch-invariant for outputs that do not depend on the
    batch size. Returns the records of this shard, in sample order.
    """
    settings.validate()
    with output_directory(out_dir) as directory:
        return _run_attack(model, attack, samples, settings, directory, progress, rank, world_size)


def _run_attack(
    model: ImageClassifier,
    attack: Attack,
    samples: Sequence[Sample],
    settings: AttackSettings,
    out_dir: Path,
    progress: ProgressCallback,
    rank: int,
    world_size: int,
) -> list[dict[str, Any]]:
    mine = [sample for index, sample in enumerate(samples) if index % world_size == rank]
    done = {sample.key: record for sample in mine if (record := _finished(out_dir, sample, settings)) is not None}
    pending = [sample for sample in mine if sample.key not in done]
    progress(len(done), len(mine), "attack")
    writer = _Writer(out_dir, settings, model)
    known: dict[str, tuple[Sample, int, int, int | None]] = {}  # key -> sample, prediction, label, target

    def jobs() -> Iterator[ImageJob]:
        dataset = ImageDataset(pending, model.input_size, model.crop_pct)
        for originals, _, indices in batches(dataset, settings.batch_size, settings.workers):
            batch = [pending[int(index)] for index in indices]
            originals = originals.to(model.device)
            before = _predict(model, originals)
            labels = [sample.label if sample.label is not None else int(guess) for sample, guess in zip(batch, before)]
            targets = _targets(batch, settings)
            criterion = make_criterion(
                torch.tensor(labels, device=model.device),
                torch.tensor(targets, device=model.device) if targets[0] is not None else None,
            )
            for row, sample in enumerate(batch):
                known[sample.key] = (sample, int(before[row]), labels[row], targets[row])
                seeds = [sample_seed(settings.seed, sample.key, k) for k in range(settings.num)]
                yield ImageJob(sample.key, originals[row], criterion.select(slice(row, row + 1)), seeds)

    def finish(group: list[tuple[ImageJob, torch.Tensor]], seconds: float) -> None:
        """Judge a group of attacked images on their 8-bit values and hand them to the writer."""
        flat = torch.cat([samples for _, samples in group])
        # The 8-bit values the PNGs will hold; predictions and distances are taken on exactly these.
        saved = flat.clamp(0, 1).mul(255).round().div(255)
        after = _predict(model, saved).view(len(group), settings.num)
        reference = torch.stack([job.image for job, _ in group]).repeat_interleave(settings.num, 0)
        l2 = L2()(reference, saved).view(len(group), -1).cpu()
        linf = Linf()(reference, saved).view(len(group), -1).cpu()
        pixels = saved.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for row, (job, _) in enumerate(group):
            sample, prediction, label, target = known.pop(str(job.key))
            writer.submit(
                _AttackedImage(
                    sample=sample,
                    original=job.image.cpu(),
                    pixels=pixels[row * settings.num : (row + 1) * settings.num],
                    label=label,
                    target=target,
                    prediction_before=prediction,
                    predictions=after[row].tolist(),
                    l2=l2[row].tolist(),
                    linf=linf[row].tolist(),
                    seconds=seconds / len(group),
                )
            )
        progress(len(done) + writer.submitted, len(mine), "attack")

    # NumPy's BLAS stays on one thread while the writers (and IWDA-OT's matchings) run in threads.
    with single_threaded_blas():
        try:
            # Images leave the attack as they finish (an attack that stops early refills their rows), and
            # are judged in groups of a batch; the classifier is batch-invariant, so grouping changes nothing.
            group: list[tuple[ImageJob, torch.Tensor]] = []
            start = time.perf_counter()
            for job, samples in attack.stream(jobs(), settings.batch_size):
                group.append((job, samples))
                if len(group) == settings.batch_size:
                    finish(group, time.perf_counter() - start)
                    group, start = [], time.perf_counter()
            if group:
                finish(group, time.perf_counter() - start)
        finally:
            records = writer.close()
    done.update((record["key"], record) for record in records)
    progress(len(mine), len(mine), "attack")
    return [done[sample.key] for sample in mine]


def collect_records(
    samples: Sequence[Sample], settings: AttackSettings, out_dir: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """Every shard's records, in sample order (after all shards have finished)."""
    out_dir = Path(out_dir)
    records = []
    for sample in samples:
        record = _finished(out_dir, sample, settings)
        if record is None:
            raise InputError(f"{sample.path}: no finished record in {out_dir} (did a shard fail?)")
        records.append(record)
    return records


def summarize(records: Sequence[dict[str, Any]], model_name: str, method: str) -> dict[str, Any]:
    successes = [record for record in records if record["success"]]

    def mean(key: str, rows: Sequence[dict[str, Any]]) -> float | None:
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {
        "model": model_name,
        "method": method,
        "n": len(records),
        "targeted": any(record["target"] is not None for record in records),
        "asr": len(successes) / len(records) if records else 0.0,
        "iwd_mode": records[0]["iwd_mode"] if records else None,
        "mean_l2": mean("l2", records),
        "mean_linf": mean("linf", records),
        "mean_iwd": mean("iwd", records),
        "mean_l2_success": mean("l2", successes),
        "mean_linf_success": mean("linf", successes),
        "mean_iwd_success": mean("iwd", successes),
        "diversity_l2": mean("diversity_l2", records),
        "diversity_iwd": mean("diversity_iwd", records),
        "seconds_per_image": mean("seconds", records),
    }


def write_report(
    records: Sequence[dict[str, Any]], summary: dict[str, Any], out_dir: str | os.PathLike[str], model: ImageClassifier
) -> None:
    """report.json, report.csv and grid.png in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "report.json", {"images": list(records), "summary": summary})
    columns = [
        "input",
        "label",
        "target",
        "outputs",
        "success",
        "pred_before",
        "pred_after",
        "l2",
        "linf",
        "iwd",
        "iwd_mode",
        "diversity_l2",
        "diversity_iwd",
        "seconds",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "outputs": ";".join(record["outputs"])})
    write_text_atomic(out_dir / "report.csv", buffer.getvalue())
    write_grid(records, out_dir, model)


def write_grid(
    records: Sequence[dict[str, Any]], out_dir: Path, model: ImageClassifier, rows: int = 24, thumb: int = 160
) -> None:
    """A contact sheet: per image, the classifier's view of the original, then its samples, captioned."""
    from PIL import Image, ImageDraw

    shown = list(records)[:rows]
    columns = 1 + max(len(record["outputs"]) for record in shown)
    caption = 14
    sheet = Image.new("RGB", (columns * thumb, len(shown) * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, record in enumerate(shown):
        top = row * (thumb + caption)
        view = preprocess(load_image(record["input"]), model.input_size, model.crop_pct)
        original = Image.fromarray(to_uint8(view))
        tiles = [(original, record["pred_before"], (0, 0, 0))]
        for output, name, ok in zip(record["outputs"], record["pred_after_all"], record["samples_success"]):
            tiles.append((Image.open(out_dir / output).convert("RGB"), name, (0, 128, 0) if ok else (200, 0, 0)))
        for column, (tile, name, colour) in enumerate(tiles):
            sheet.paste(tile.resize((thumb, thumb)), (column * thumb, top))
            draw.text((column * thumb + 2, top + thumb), name[:24], fill=colour)
    write_atomic(out_dir / "grid.png", lambda temporary: sheet.save(temporary, format="PNG"))
