"""`iwdctl measure`: l2, l-inf, IWD and SSIM between original images and adversarial ones.

Pairing rule: folders pair by relative path and stem; an adversarial file may carry a suffix
`_adv<k>` (as `iwdctl attack` writes: `cat.png` <- `cat_adv0.png`, `cat_adv1.png`). Two files given
directly always pair. Each ADV argument is one method, named after its folder or file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iwdctl.costs import cpu_threads
from iwdctl.distances import ssim_values
from iwdctl.errors import InputError
from iwdctl.files import write_atomic, write_text_atomic
from iwdctl.images import is_image_file, read_image
from iwdctl.iwd import check_pair, iwd_pair, resize_array
from iwdctl.runtime import ProgressCallback, no_progress, single_threaded_blas

ADV_SUFFIX = re.compile(r"_adv\d*$")
METRICS = ("l2", "linf", "iwd", "ssim")


@dataclass(frozen=True)
class Pair:
    orig: Path
    adv: Path
    method: str


@dataclass
class PairResult:
    orig: str
    adv: str
    method: str
    l2: float
    linf: float
    iwd: float
    ssim: float
    iwd_exact: bool
    iwd_bound: float  # 0 when exact, else the estimate's relative error bound


@dataclass
class Pairing:
    pairs: list[Pair]
    unpaired: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MeasureSettings:
    patch: int = 7
    stride: int = 1
    size: int = 64
    approx: bool | None = None
    resize: bool = False
    device: str | None = None  # where IWD's estimate runs, and exact values without numba (default: CUDA when present)


def _keyed_images(root: Path) -> dict[str, Path]:
    if root.is_file():
        return {root.stem: root}
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder")
    found = {
        path.relative_to(root).with_suffix("").as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and is_image_file(path)
    }
    if not found:
        raise InputError(f"{root}: no images in this folder")
    return found


def _method_names(roots: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for root in roots:
        base = (root.stem if root.is_file() else root.resolve().name) or "adv"
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}-{suffix}", suffix + 1
        names.append(name)
    return names


def pair_images(orig: str | os.PathLike[str], advs: Sequence[str | os.PathLike[str]], strict: bool = False) -> Pairing:
    """Pair originals with adversarial images by relative path and stem (see the module docstring)."""
    orig_root = Path(orig)
    adv_roots = [Path(adv) for adv in advs]
    originals = _keyed_images(orig_root)
    pairing = Pairing([])
    matched: set[str] = set()
    for adv_root, method in zip(adv_roots, _method_names(adv_roots)):
        adversarials = _keyed_images(adv_root)
        if orig_root.is_file() and adv_root.is_file():
            pairing.pairs.append(Pair(orig_root, adv_root, method))
            matched.add(orig_root.stem)
            continue
        for key, path in adversarials.items():
            base = key if key in originals else ADV_SUFFIX.sub("", key)
            if base in originals:
                pairing.pairs.append(Pair(originals[base], path, method))
                matched.add(base)
            else:
                pairing.unpaired.append(str(path))
    pairing.unpaired += [str(path) for key, path in originals.items() if key not in matched]
    if strict and pairing.unpaired:
        raise InputError(f"{len(pairing.unpaired)} files without a partner (--strict), e.g. {pairing.unpaired[0]}")
    if not pairing.pairs:
        raise InputError("no image pairs found: adversarial files pair with originals by relative path and stem")
    return pairing


def measure_pair(
    orig: np.ndarray, adv: np.ndarray, settings: MeasureSettings, threads: int = 1
) -> dict[str, float | bool]:
    """All metrics of one pair of (3, H, W) images in [0, 1] (NumPy arrays; IWD moves to the settings'
    device, if a GPU); `threads` split its cost matrix. The distances are those of iwdctl.distances."""
    if settings.resize and adv.shape != orig.shape:
        adv = resize_array(adv.astype(np.float64), orig.shape[-2:])
    check_pair(orig, adv, settings.patch, settings.size)
    x, y = orig.astype(np.float64), adv.astype(np.float64)
    distance = iwd_pair(
        orig, adv, settings.patch, settings.stride, settings.size, settings.approx, settings.device, threads
    )
    return {
        "l2": float(np.sqrt(np.sum((x - y) ** 2))),
        "linf": float(np.abs(x - y).max()),
        "iwd": distance.value,
        "ssim": float(ssim_values(x[None], y[None])[0]),
        "iwd_exact": distance.exact,
        "iwd_bound": distance.bound,
    }


def measure_pairs(
    pairs: Sequence[Pair],
    settings: MeasureSettings,
    progress: ProgressCallback = no_progress,
    workers: int | None = None,
) -> list[PairResult]:
    """Measure every pair, in order. Pairs run in `workers` threads (default: one per core): decoding,
    resizing and the numba kernels release the GIL, so threads use every core without the start-up of
    worker processes. A lone pair splits its cost matrix over the cores instead."""
    workers = max(1, min(workers or cpu_threads(), len(pairs)))
    threads = max(1, cpu_threads() // workers)

    def one(pair: Pair) -> PairResult:
        try:
            metrics = measure_pair(read_image(pair.orig), read_image(pair.adv), settings, threads)
        except InputError as error:
            raise InputError(f"{pair.adv} vs {pair.orig}: {error}") from error
        return PairResult(str(pair.orig), str(pair.adv), pair.method, **metrics)  # type: ignore[arg-type]

    results: list[PairResult] = []
    progress(0, len(pairs), "measure")
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(one, pairs):
            results.append(result)
            progress(len(results), len(pairs), "measure")
    return results


def summarize(results: Sequence[PairResult]) -> dict[str, dict[str, object]]:
    """Per method: count, exact count, and mean / median / min / max of every metric."""
    summary: dict[str, dict[str, object]] = {}
    for method in dict.fromkeys(result.method for result in results):
        rows = [result for result in results if result.method == method]
        entry: dict[str, object] = {"n": len(rows), "iwd_exact": sum(row.iwd_exact for row in rows)}
        for metric in METRICS:
            values = [getattr(row, metric) for row in rows]
            entry[metric] = {
                "mean": statistics.fmean(values),
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        summary[method] = entry
    return summary


def report(results: Sequence[PairResult], pairing: Pairing, settings: MeasureSettings) -> dict[str, object]:
    return {
        "settings": asdict(settings),
        "pairs": [asdict(result) for result in results],
        "summary": summarize(results),
        "unpaired": pairing.unpaired,
    }


def write_csv(results: Sequence[PairResult], path: str | os.PathLike[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(PairResult.__dataclass_fields__))
    writer.writeheader()
    for result in results:
        writer.writerow(asdict(result))
    write_text_atomic(path, buffer.getvalue())


def plot_histograms(results: Sequence[PairResult], path: str | os.PathLike[str]) -> None:
    """One panel per metric (l2, l-inf, IWD), one colour per method: the paper's Figure 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(result.method for result in results))
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, metric, label in zip(axes, ("l2", "linf", "iwd"), ("$\\ell_2$", "$\\ell_\\infty$", "IWD")):
        low = min(getattr(result, metric) for result in results)
        high = max(getattr(result, metric) for result in results)
        edges = [low + (high - low) * step / 24 for step in range(25)] if high > low else 24
        for method in methods:
            values = [getattr(result, metric) for result in results if result.method == method]
            axis.hist(values, bins=edges, alpha=0.6, label=method)
        axis.set_xlabel(label)
        axis.set_ylabel("pairs")
    axes[0].legend()
    figure.tight_layout()
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    write_atomic(path, lambda temporary: figure.savefig(temporary, format=suffix, dpi=120))
    plt.close(figure)
