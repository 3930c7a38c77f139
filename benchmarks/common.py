"""Shared helpers for benchmark scripts: the machine's description and results files."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from iwdctl.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def header(title: str) -> str:
    command = " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"# {title}\n\n- command: `{command}`\n- machine: {machine()}\n- date: {stamp}\n"


def write_results(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    write_text_atomic(path, text)  # a killed benchmark leaves the previous results whole
    return path


def each_first_once(names: Iterable[str]) -> list[list[str]]:
    """Orders of `names` in which each comes first once. Side-by-side runs measure every pair in each:
    on this machine whichever process runs a 128 px pair first can lose up to about 1 s to fresh memory
    pages, and one order per pair (by its parity) biased iwd_scan's 800-807 runs to 0.86-0.92x
    (benchmarks/results/iwd_scan_800_selected_costs*.md)."""
    names = list(names)
    return [[first, *(name for name in names if name != first)] for first in names]
