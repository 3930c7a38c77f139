from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.images import quantize
from iwdctl.models import ImageClassifier
from iwdctl.patchloss import pyramid_patch_loss


class IWDAFast(Attack):
    """IWDA-fast: an amortization-free variant of IWDA (Li et al., "Internal Wasserstein Distance for
    Adversarial Attack and Defense"), beyond the paper.

    Distance: IWD. No per-image GAN: x~ itself is optimized (Adam) for
    tau * L_c(h(x~)) + SW(x, x~), where L_c = max(-margin, -kappa) is a margin loss of the criterion
    and SW the sliced 1-Wasserstein distance between the k x k patch distributions of x and x~ over a
    3-level pyramid, with random projections redrawn every step. Sample 0 starts from x; the others
    (`sample` with K > 1) from x translated by up to `shift` pixels plus small noise, which gives diverse
    examples of small IWD. Each image stops as soon as its 8-bit rounding is adversarial with a
    logit margin of at least `kappa` under the model's own preprocessing and, with `loader_views`,
    under every other common way of loading the saved PNG into the same network (for
    efficientnet_lite0: ImageNet mean/std, with and without timm's resize 256 + crop 224; see
    iwdctl.models.LoaderView), so the file also fools readers that preprocess it differently.
    Defaults: tau = 0.1, kappa = 1.0, steps = 300, lr = 0.25/255, patch = 7, projections = 64, shift = 6,
    loader_views = True.
    """

    name = "iwda-fast"
    distance = "iwd"

    def __init__(
        self,
        model: ImageClassifier,
        tau: float = 0.1,
        kappa: float = 1.0,
        steps: int = 300,
        lr: float = 0.25 / 255,
        patch: int = 7,
        projections: int = 64,
        shift: int = 6,
        loader_views: bool = True,
    ) -> None:
        super().__init__(model)
        self.tau, self.kappa, self.steps, self.lr = tau, kappa, steps, lr
        self.patch, self.projections, self.shift = patch, projections, shift
        self.loader_views = loader_views

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K samples of each image: the first starts from x, the others from shifted, noisy copies."""
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
            noise = (torch.rand(image.shape, generator=generator) * 2 - 1).to(image.device) * 4 / 255
            starts.append((moved + noise).clamp(0, 1))
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
        result = quantize(current)
        active = torch.ones(len(images), dtype=torch.bool, device=self.device)
        variable = current.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([variable], lr=self.lr)
        for _ in range(self.steps):
            candidate = variable.clamp(0, 1)
            margin = self._margin(candidate, criterion)
            with torch.no_grad():
                rounded = quantize(candidate)
                ready = active & (margin > self.kappa)
                if ready.any():
                    rounded_margin = self._margin(rounded[ready], criterion.select(ready))
                    finished = ready.nonzero()[:, 0][rounded_margin >= self.kappa]
                    result[finished] = rounded[finished]
                    active[finished] = False
            if not active.any():
                break
            patch_loss = pyramid_patch_loss(images, candidate, generators, self.patch, projections=self.projections)
            loss = (self.tau * torch.clamp(-margin, min=-self.kappa) + patch_loss) * active
            optimizer.zero_grad()
            loss.sum().backward()
            variable.grad[~active] = 0  # finished images stay where they stopped
            optimizer.step()
        with torch.no_grad():
            result[active] = quantize(variable.clamp(0, 1))[active]
        return result
