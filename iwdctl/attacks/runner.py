"""`iwdctl attack`: run one attack over images, save PNGs at the classifier's input resolution,
verify them by re-reading the files, and write a report. Resumable and shardable with torchrun."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iwdctl.attacks.base import Attack
from iwdctl.criteria import make_criterion
from iwdctl.data import Sample
from iwdctl.distances import L2, Linf
from iwdctl.errors import InputError
from iwdctl.files import write_atomic, write_json_atomic, write_text_atomic
from iwdctl.images import load_image, preprocess, save_png, to_uint8
from iwdctl.iwd import iwd_pair
from iwdctl.models import ImageClassifier
from iwdctl.runtime import ProgressCallback, no_progress

RECORDS = ".records"


@dataclass(frozen=True)
class AttackSettings:
    method: str
    num: int = 1
    seed: int = 0
    target: int | None = None  # one target class for every image (--target)
    use_sample_targets: bool = False  # targets from the CSV (--targets-from)


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
    same_job = record.get("method") == settings.method and len(record.get("outputs", [])) == settings.num
    return record if outputs_exist and same_job else None


@torch.no_grad()
def _predict(model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    return model(images.to(model.device)).argmax(dim=1).cpu()


def attack_one(
    model: ImageClassifier, attack: Attack, sample: Sample, settings: AttackSettings, out_dir: Path
) -> dict[str, Any]:
    """Attack one image, save and verify its samples, and return its report record."""
    start = time.perf_counter()
    original = preprocess(load_image(sample.path), model.input_size, model.crop_pct)
    prediction_before = int(_predict(model, original[None])[0])
    label = sample.label if sample.label is not None else prediction_before
    target = (
        settings.target if settings.target is not None else (sample.target if settings.use_sample_targets else None)
    )
    if settings.use_sample_targets and target is None:
        raise InputError(f"{sample.path}: no target class in the targets CSV")
    criterion = make_criterion(
        torch.tensor([label], device=model.device),
        torch.tensor([target], device=model.device) if target is not None else None,
    )
    seeds = [sample_seed(settings.seed, sample.key, index) for index in range(settings.num)]
    adversarial = attack.generate(original.to(model.device), criterion, seeds).cpu()
    outputs = []
    for index, image in enumerate(adversarial):
        path = _output_path(out_dir, sample.key, index)
        save_png(image, path)
        outputs.append(path)
    # Success is judged on the files as written: 8-bit PNGs read back.
    reread = torch.stack([load_image(path) for path in outputs])
    predictions = _predict(model, reread)
    success = predictions == target if target is not None else predictions != label
    reference = original[None].expand_as(reread)
    l2 = L2()(reference, reread)
    linf = Linf()(reference, reread)
    iwd = [iwd_pair(original, image).value for image in reread]
    names = model.class_names
    return {
        "input": str(sample.path),
        "key": sample.key,
        "method": settings.method,
        "label": names[label],
        "label_index": label,
        "target": names[target] if target is not None else None,
        "target_index": target,
        "outputs": [str(path.relative_to(out_dir)) for path in outputs],
        "success": bool(success.all()),
        "samples_success": [bool(value) for value in success],
        "pred_before": names[prediction_before],
        "pred_after": names[int(predictions[0])],
        "pred_after_all": [names[int(value)] for value in predictions],
        "l2": float(l2.mean()),
        "linf": float(linf.mean()),
        "iwd": statistics.fmean(iwd),
        "samples_l2": l2.tolist(),
        "samples_linf": linf.tolist(),
        "samples_iwd": iwd,
        "seconds": time.perf_counter() - start,
    }


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

    Returns the records of this shard, in sample order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [sample for index, sample in enumerate(samples) if index % world_size == rank]
    records = []
    progress(0, len(mine), "attack")
    for done, sample in enumerate(mine, start=1):
        record = _finished(out_dir, sample, settings)
        if record is None:
            record = attack_one(model, attack, sample, settings, out_dir)
            write_json_atomic(_record_path(out_dir, sample.key), record)
        records.append(record)
        progress(done, len(mine), "attack")
    return records


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
        return statistics.fmean(row[key] for row in rows) if rows else None

    return {
        "model": model_name,
        "method": method,
        "n": len(records),
        "targeted": any(record["target"] is not None for record in records),
        "asr": len(successes) / len(records) if records else 0.0,
        "mean_l2": mean("l2", records),
        "mean_linf": mean("linf", records),
        "mean_iwd": mean("iwd", records),
        "mean_l2_success": mean("l2", successes),
        "mean_linf_success": mean("linf", successes),
        "mean_iwd_success": mean("iwd", successes),
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
