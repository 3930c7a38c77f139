"""The attack interface (torchattacks style): the base class owns the model, device and criterion
plumbing, so each attack only implements `forward`."""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from iwdctl.criteria import Criterion, concatenate
from iwdctl.models import ImageClassifier
from iwdctl.runtime import ProgressCallback, no_progress


@dataclass(frozen=True)
class ImageJob:
    """One image of a stream (`Attack.stream`): what fools the model, and a seed per sample."""

    key: Hashable
    image: torch.Tensor  # (3, H, W) in [0, 1]
    criterion: Criterion  # of this one image
    seeds: Sequence[int]  # K seeds: K samples


class Attack(ABC):
    """Base class. Call `attack(images, criterion, seeds)` with images (N, 3, H, W) in [0, 1].

    `seeds` gives each image its own random generator, so an image's result does not depend on
    the batch it was attacked in (with a batch-invariant classifier: ImageClassifier.batch_invariant).
    Inputs are never modified; the result is detached, in [0, 1]. `sample` draws K examples per image.
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
        return self._run(lambda generators: self.forward(images, criterion, generators), seeds or range(len(images)))

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K examples of each of B images: `seeds[b][k]` seeds example k of image b; `criterion` holds
        the B images' labels or targets. Returns (B, K, 3, H, W). By default the K examples are K
        independent runs (they differ where the attack draws random numbers); attacks with a notion of
        diverse samples (iwda, iwda-fast) override this."""
        count = len(seeds[0])
        rows = torch.arange(len(images), device=self.device).repeat_interleave(count)
        flat = [seed for image_seeds in seeds for seed in image_seeds]
        result = self(images.to(self.device)[rows], criterion.select(rows), flat)
        return result.view(len(images), count, *images.shape[1:])

    def stream(self, jobs: Iterable[ImageJob], capacity: int) -> Iterator[tuple[ImageJob, torch.Tensor]]:
        """Each job with its K samples (K, 3, H, W), as they finish. By default `capacity` jobs at a
        time through `sample`, in order; attacks whose images finish at different steps refill the
        finished rows instead (PatchDistributionAttack), so that every step carries a full batch."""
        source = iter(jobs)
        while group := list(itertools.islice(source, capacity)):
            images = torch.stack([job.image for job in group]).to(self.device)
            criterion = concatenate([job.criterion for job in group])
            yield from zip(group, self.sample(images, criterion, [job.seeds for job in group]))

    def _run(self, attack: Callable[[list[torch.Generator]], torch.Tensor], seeds: Sequence[int]) -> torch.Tensor:
        """Run `attack(generators)` in eval mode with gradients on; restore the model's mode after."""
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        with self.attacking():
            adversarial = attack(generators)
        return adversarial.detach().clamp(0, 1)

    @contextlib.contextmanager
    def attacking(self) -> Iterator[None]:
        """The model in eval mode with gradients on; its mode is restored after."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                yield
        finally:
            self.model.train(training)

    @abstractmethod
    def forward(
        self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]
    ) -> torch.Tensor: ...

    def loss_gradient(self, images: torch.Tensor, criterion: Criterion) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the gradient of the summed per-sample loss with respect to the images."""
        images = images.detach().requires_grad_(True)
        logits = self.model(images)
        loss = criterion.loss(logits)
        # The sum, not torchattacks' mean: a 1/N factor would make an image's gradient (rounding, and so
        # the sign of near-zero components) depend on how many images share its batch. For batches of
        # a power of two the two are exactly proportional, so signed steps agree bitwise.
        (gradient,) = torch.autograd.grad(loss.sum(), images)
        return logits.detach(), gradient

    def uniform(self, generators: list[torch.Generator], shape: Sequence[int], low: float, high: float) -> torch.Tensor:
        """Per-sample uniform noise, drawn from each sample's own generator on the CPU."""
        draws = [torch.rand(tuple(shape), generator=generator) * (high - low) + low for generator in generators]
        return torch.stack(draws).to(self.device)

    def normal(self, generators: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=generator) for generator in generators]).to(self.device)
