"""The loop shared by the IWDA variants that optimize x~ directly (no per-image GAN)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.images import quantize
from iwdctl.models import ImageClassifier

# (candidates of the rows still running, step, those rows' indices in the batch) -> their patch losses
PatchObjective = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


class PatchDistributionAttack(Attack):
    """x~ optimized (Adam) for tau * L_c(h(x~)) + D(x, x~), D a patch-distribution distance given by
    the subclass, L_c = max(-margin, -kappa) a margin loss of the criterion.

    Each image stops as soon as its 8-bit rounding is adversarial with a logit margin of at least
    `kappa` under the model's own preprocessing and, with `loader_views`, under every other common
    way of loading the saved PNG into the same network (see iwdctl.models.LoaderView). An image not
    yet adversarial has its tau multiplied by `escalate` every `escalate_every` steps (0: never), so
    robust models, which need large changes, are fooled too. With `sample` and K > 1, sample 0 starts
    from x and the others from x translated by up to `shift` pixels (reflected at the border) plus
    uniform noise of `start_noise`: diverse examples of the same scene.
    """

    distance = "iwd"
    start_noise: ClassVar[float] = 0.0

    def __init__(
        self,
        model: ImageClassifier,
        tau: float,
        kappa: float,
        steps: int,
        lr: float,
        patch: int,
        shift: int,
        escalate: float,
        escalate_every: int,
        loader_views: bool,
    ) -> None:
        super().__init__(model)
        self.tau, self.kappa, self.steps, self.lr = tau, kappa, steps, lr
        self.patch, self.shift = patch, shift
        self.escalate, self.escalate_every = escalate, escalate_every
        self.loader_views = loader_views

    @abstractmethod
    def objective(self, images: torch.Tensor, generators: list[torch.Generator]) -> PatchObjective:
        """The patch loss D(x, .) for these images, for one optimization."""

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K samples of each image: the first starts from x, the others from shifted copies."""
        count = len(seeds[0])
        rows = torch.arange(len(images), device=self.device).repeat_interleave(count)
        expanded = images.detach().to(self.device)[rows]
        shifted = [index > 0 for _ in seeds for index in range(count)]

        def run(generators: list[torch.Generator]) -> torch.Tensor:
            starts = self._starts(expanded, generators, shifted)
            return self._optimize(expanded, starts, criterion.select(rows), generators)

        flat = [seed for image_seeds in seeds for seed in image_seeds]
        return self._run(run, flat).view(len(images), count, *images.shape[1:])

    def _starts(self, images: torch.Tensor, generators: list[torch.Generator], shifted: list[bool]) -> torch.Tensor:
        starts = []
        for image, generator, moved in zip(images, generators, shifted):
            if not moved:
                starts.append(image.clone())
                continue
            dy, dx = (torch.randint(-self.shift, self.shift + 1, (2,), generator=generator)).tolist()
            pad = self.shift
            padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
            height, width = image.shape[-2:]
            moved = padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            if self.start_noise:
                noise = torch.rand(image.shape, generator=generator) * 2 - 1
                moved = moved + noise.to(image.device) * self.start_noise
            starts.append(moved.clamp(0, 1))
        return torch.stack(starts)

    def _margin(self, images: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """The criterion's margin, the smallest over the model's loader views when they are checked."""
        logits = self.model.view_logits(images) if self.loader_views else [self.model(images)]
        return torch.stack([criterion.margin(view) for view in logits]).amin(dim=0)

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        return self._optimize(images, images.clone(), criterion, generators)

    def _optimize(
        self, images: torch.Tensor, current: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Optimize each row from its start `current` (see the class docstring)."""
        patch_loss = self.objective(images, generators)
        result = quantize(current)
        active = torch.ones(len(images), dtype=torch.bool, device=self.device)
        tau = torch.full((len(images),), self.tau, device=self.device)
        variable = current.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([variable], lr=self.lr)
        for step in range(self.steps):
            if self.escalate_every and step and step % self.escalate_every == 0:
                tau = torch.where(active, tau * self.escalate, tau)
            # Only the rows still running are computed: a batch costs what its unfinished images cost,
            # and each row's trajectory (and its generator's draws) depends on that row alone.
            rows = active.nonzero()[:, 0]
            candidate = variable[rows].clamp(0, 1)
            criterion_rows = criterion.select(rows)
            margin = self._margin(candidate, criterion_rows)
            with torch.no_grad():
                rounded = quantize(candidate)
                finished = margin > self.kappa
                if finished.any():
                    rounded_margin = self._margin(rounded[finished], criterion_rows.select(finished))
                    finished[finished.clone()] = rounded_margin >= self.kappa
                    result[rows[finished]] = rounded[finished]
                    active[rows[finished]] = False
            if not active.any():
                break
            running = ~finished
            loss = (tau[rows] * torch.clamp(-margin, min=-self.kappa) + patch_loss(candidate, step, rows)) * running
            optimizer.zero_grad()
            loss.sum().backward()
            variable.grad[~active] = 0  # finished images stay where they stopped
            optimizer.step()
        with torch.no_grad():
            result[active] = quantize(variable.clamp(0, 1))[active]
        return result
