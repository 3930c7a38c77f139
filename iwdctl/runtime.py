"""Device choice, seeding and the progress callback the core reports through."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from iwdctl.errors import InputError

if TYPE_CHECKING:  # imported where used: `iwdctl measure` on a CPU never loads torch (2 s of start-up)
    import torch


class ProgressCallback(Protocol):
    """Called by long-running core functions; the CLI draws a rich progress bar from it."""

    def __call__(self, completed: int, total: int, description: str = "") -> None: ...


def no_progress(completed: int, total: int, description: str = "") -> None:
    """Default callback: report nothing."""


def device_name(device: str | None = None) -> str:
    """resolve_device's answer as a string ("cpu", "cuda", "cuda:1"); on Linux without GPU device
    files (NVIDIA's, or WSL's /dev/dxg) the default is known to be the CPU without importing torch."""
    no_gpu_here = sys.platform.startswith("linux") and not (
        glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
    )
    if device == "cpu" or (device in (None, "auto") and no_gpu_here):
        return "cpu"
    return str(resolve_device(device))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU; an explicit choice wins."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from error
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Fix Python's, NumPy's and torch's random state; return a CPU generator seeded the same."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cache_dir() -> str:
    """Where converted weights are cached: $IWDCTL_CACHE, else $XDG_CACHE_HOME/iwdctl."""
    root = os.environ.get("IWDCTL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "iwdctl"
    )
    os.makedirs(root, exist_ok=True)
    return root


def distributed_context(device: torch.device | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device): under torchrun, join the process group.

    On CUDA with a GPU per process, each rank takes GPU LOCAL_RANK and nccl; otherwise (CPU, or more
    processes than GPUs) gloo, and CUDA runs share the device they were given.
    """
    import torch

    device = device or resolve_device(None)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    import torch.distributed as dist

    one_gpu_each = device.type == "cuda" and torch.cuda.device_count() >= world_size
    if one_gpu_each:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if one_gpu_each else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """NumPy's BLAS on one thread inside the block, for code that runs IWD in parallel threads.

    OpenBLAS would start its own threads for each small product (the analysis resize) and keep them
    spinning after it, against the other workers' kernels: 48 PGD pairs on 2 threads of 2 cores took
    5.75 s with it and 3.82 s without.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No gradients for `module`'s parameters inside the block; their flags are restored after."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def batchnorm_statistics_kept(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers in training mode still normalize by the batch's statistics
    but leave their running statistics as they are (momentum 0); momenta are restored after."""
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [layer for layer in module.modules() if isinstance(layer, _BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16: the block's passes under bfloat16 autocast (parameters and optimizer state stay float32);
    fp32: as they are."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
