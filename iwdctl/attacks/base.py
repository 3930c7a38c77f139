"""The attack interface (torchattacks style): the base class owns the model, device and criterion
plumbing, so each attack only implements `forward`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier
from iwdctl.runtime import ProgressCallback, no_progress


class Attack(ABC):
    """Base class. Call `attack(images, criterion, seeds)` with images (N, 3, H, W) in [0, 1].

    `seeds` gives each image its own random generator, so an image's result does not depend on
    the batch it was attacked in. Inputs are never modified; the result is detached, in [0, 1].
    """

    name: ClassVar[str]
    distance: ClassVar[str]

    def __init__(self, model: ImageClassifier) -> None:
        self.model = model
        self.progress: ProgressCallback = no_progress

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[int] | None = None) -> torch.Tensor:
        images = images.detach().to(self.device).clone()
        generators = [
            torch.Generator().manual_seed(int(seed)) for seed in (seeds if seeds is not None else range(len(images)))
        ]
        training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                adversarial = self.forward(images, criterion, generators)
        finally:
            self.model.train(training)
        return adversarial.detach().clamp(0, 1)

    def generate(self, image: torch.Tensor, criterion: Criterion, seeds: Sequence[int]) -> torch.Tensor:
        """K = len(seeds) adversarial examples of one image (3, H, W); `criterion` is for that one image."""
        count = len(seeds)
        return self(
            image[None].expand(count, -1, -1, -1), criterion.select(torch.zeros(count, dtype=torch.long)), seeds
        )

    @abstractmethod
    def forward(
        self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]
    ) -> torch.Tensor: ...

    def loss_gradient(self, images: torch.Tensor, criterion: Criterion) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the gradient of the mean per-sample loss with respect to the images."""
        images = images.detach().requires_grad_(True)
        logits = self.model(images)
        loss = criterion.loss(logits)
        # The mean (not the sum), as torchattacks does, so both compute bitwise the same gradient.
        (gradient,) = torch.autograd.grad(loss.mean(), images)
        return logits.detach(), gradient

    def uniform(self, generators: list[torch.Generator], shape: Sequence[int], low: float, high: float) -> torch.Tensor:
        """Per-sample uniform noise, drawn from each sample's own generator on the CPU."""
        draws = [torch.rand(tuple(shape), generator=generator) * (high - low) + low for generator in generators]
        return torch.stack(draws).to(self.device)

    def normal(self, generators: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=generator) for generator in generators]).to(self.device)
