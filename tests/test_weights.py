"""The shipped checkpoints load with `iwdctl.load_classifier` as weights/README.md documents them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iwdctl.models import load_classifier

from .conftest import shared_data

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
INPUT_SIZES = {"tiny6": 32, "imagenette64": 64}


@pytest.mark.parametrize("path", sorted(WEIGHTS.glob("*.safetensors")), ids=lambda path: path.stem)
def test_shipped_checkpoint_loads_with_its_card_and_classes(path):
    dataset, method = path.stem.split("-")[0], path.stem.split("-")[-1]
    model = load_classifier(str(path), device="cpu")
    assert model.input_size == INPUT_SIZES[dataset] and model.metadata["method"] == method
    folder = shared_data(dataset, "val")
    assert list(model.class_names) == sorted(child.name for child in folder.iterdir() if child.is_dir())
    assert path.stem in (WEIGHTS / "README.md").read_text() and path.stat().st_size < 20 * 2**20
    with torch.no_grad():
        logits = model(torch.rand(2, 3, model.input_size, model.input_size))
    assert logits.shape == (2, len(model.class_names)) and torch.isfinite(logits).all()
