"""Every command in the README's bash blocks runs as written, in a sandbox with tiny inputs.

The sandbox is a project folder beside a `shared/data` folder, like a checkout beside ../shared:
every path the examples name (img.jpg, photos/, imagenet/val, ../shared/data/nips17, weights/, ...)
exists there, with two or three small images where the real thing has thousands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The iwdctl and torchrun commands of the README's ```bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in (part.strip() for part in line.split("&&")):
                if part.startswith(("iwdctl", "torchrun")):
                    commands.append(re.sub(r"\s+", " ", part))
    return commands


def _copy_some(source: Path, target: Path, per_folder: int) -> None:
    for folder in sorted(path for path in source.rglob("*") if path.is_dir()):
        files = sorted(path for path in folder.iterdir() if path.is_file())[:per_folder]
        for file in files:
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, destination)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    project, data = root / "project", root / "shared" / "data"
    project.mkdir()
    # ../shared/data with a few images of each set.
    nips = shared_data("nips17")
    (data / "nips17" / "images").mkdir(parents=True)
    rows = (nips / "images.csv").read_text().splitlines()[:2]
    (data / "nips17" / "images.csv").write_text("\n".join(rows) + "\n")
    for row in rows[1:]:
        shutil.copy(nips / "images" / f"{row.split(',')[0]}.png", data / "nips17" / "images")
    for name, per_folder in (("tiny6", 3), ("imagenette64", 2)):
        if (shared_data() / name).exists():
            _copy_some(shared_data(name), data / name, per_folder)
    # Paths the examples use in the project folder.
    (project / "weights").symlink_to(ROOT / "weights")
    photos = sorted((nips / "images").glob("*.png"))[10:16]
    Image.open(photos[0]).convert("RGB").save(project / "img.jpg", quality=92)
    Image.open(photos[1]).save(project / "cat.png")
    # One photo: a job of several images pads each batch to 16 for batch invariance (16x the work).
    (project / "photos").mkdir()
    shutil.copy(photos[2], project / "photos")
    for wnid, photo in (("n02793495", photos[4]), ("n09472597", photos[5])):  # barn, volcano
        (project / "imagenet" / "val" / wnid).mkdir(parents=True)
        shutil.copy(photo, project / "imagenet" / "val" / wnid)
    (project / "labels.csv").write_text("file,label\n" + f"{photos[2].name},barn\n")
    generator = np.random.default_rng(0)
    pixels = np.asarray(Image.open(photos[1]).convert("RGB"), dtype=np.int16)
    noisy = np.clip(pixels + generator.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(project / "cat_adv0.png")
    for folder in ("orig", "fgsm", "pgd", "iwda"):
        (project / folder).mkdir()
    for photo in photos[:2]:
        image = np.asarray(Image.open(photo).convert("RGB").resize((64, 64)), dtype=np.int16)
        Image.fromarray(image.astype(np.uint8)).save(project / "orig" / photo.name)
        for folder, spread in (("fgsm", 8), ("pgd", 4), ("iwda", 2)):
            moved = np.clip(image + generator.integers(-spread, spread + 1, image.shape), 0, 255)
            Image.fromarray(moved.astype(np.uint8)).save(project / folder / photo.name)
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), project / "resnet18.pth")
    return project


def test_the_readme_has_examples_of_every_subcommand():
    commands = readme_commands()
    for name in ("attack", "measure", "defend", "eval"):
        assert any(f"iwdctl {name}" in command for command in commands), name


@pytest.mark.parametrize("index", range(len(readme_commands())))
def test_readme_example_runs_as_written(sandbox, index):
    command = readme_commands()[index]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        command, shell=True, cwd=sandbox, capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, command
