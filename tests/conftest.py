from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped with a reason when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def lite0():
    from iwdctl.models import load_classifier

    return load_classifier("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small CNN trained for two epochs on tiny6 (natural training): the attacks' test subject."""
    from iwdctl.defend import TrainConfig, defend
    from iwdctl.models import load_classifier

    root = shared_data("tiny6")
    out = tmp_path_factory.mktemp("tiny") / "small.safetensors"
    defend(
        TrainConfig(data=str(root), out=str(out), method="natural", arch="small_cnn", epochs=2, batch_size=64, lr=0.05)
    )
    return load_classifier(out, device="cpu")


@pytest.fixture(scope="session")
def tiny_batch(tiny_model):
    """Eight tiny6 val images that the tiny model classifies correctly, taken from the classes in turn."""
    from iwdctl.data import discover
    from iwdctl.images import load_image, preprocess

    samples = discover([shared_data("tiny6", "val")], tiny_model.classes)
    by_class = [[sample for sample in samples if sample.label == label] for label in range(tiny_model.num_classes)]
    interleaved = [sample for group in zip(*by_class) for sample in group]
    images, labels = [], []
    for sample in interleaved:
        image = preprocess(load_image(sample.path), 32, 1.0)
        with torch.no_grad():
            if tiny_model(image[None]).argmax(1).item() == sample.label:
                images.append(image)
                labels.append(sample.label)
        if len(images) == 8:
            break
    return torch.stack(images), torch.tensor(labels)
