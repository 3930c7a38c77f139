"""Atomic file writes: a killed run never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The process's umask, read once at import (reading it means setting it, which is not thread-safe):
# mkstemp creates files readable by their owner only, and finished files get the usual mode instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def output_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the directory `path` (and its parents); if the block fails, remove those of them that it
    created and that hold no file. A run stopped by bad input leaves no empty folder behind; one
    stopped after it finished some images keeps them, to resume."""
    directory = Path(path)
    created = [each for each in (directory, *directory.parents) if not each.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield directory
    except BaseException:
        for each in created:
            _remove_if_empty(each)
        raise


def _remove_if_empty(directory: Path) -> None:
    """Remove `directory` and its subdirectories if no file lies anywhere under them."""
    for root, _, files in os.walk(directory, topdown=False):
        if files:
            return
        with contextlib.suppress(OSError):  # a directory someone else just wrote into
            os.rmdir(root)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call `write(temporary_path)`, then move the result onto `path`."""
    with atomic_path(path) as temporary:
        write(temporary)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
