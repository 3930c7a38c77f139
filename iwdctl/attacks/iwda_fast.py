from __future__ import annotations

from collections.abc import Sequence

import torch

from iwdctl.attacks.patch_attack import PatchDistributionAttack
from iwdctl.models import ImageClassifier
from iwdctl.patchloss import pyramid_patch_loss


class IWDAFast(PatchDistributionAttack):
    """IWDA-fast: a small-perturbation mode of IWDA (Li et al., "Internal Wasserstein Distance for
    Adversarial Attack and Defense"), beyond the paper.

    Distance: IWD. x~ itself is optimized (Adam) for tau * L_c(h(x~)) + SW(x, x~), SW the sliced
    1-Wasserstein distance between the k x k patch distributions of x and x~ over a 3-level pyramid,
    with random projections redrawn every step; the loop, stopping rule and diverse starts are
    PatchDistributionAttack's (extra samples start shifted, with +-4/255 noise). It stops at the
    first adversarial rounding, so its examples are tiny perturbations, not re-arrangements.
    Defaults: tau = 0.1, kappa = 1.0 where loader views are checked, else 0.1 (default_margin),
    steps = 300, lr = 0.25/255, patch = 7, projections = 64, shift = 6, no tau escalation,
    loader_views = True.
    """

    name = "iwda-fast"
    start_noise = 4 / 255

    def __init__(
        self,
        model: ImageClassifier,
        tau: float = 0.1,
        kappa: float | None = None,
        steps: int = 300,
        lr: float = 0.25 / 255,
        patch: int = 7,
        projections: int = 64,
        shift: int = 6,
        loader_views: bool = True,
    ) -> None:
        super().__init__(model, tau, kappa, steps, lr, patch, shift, 1.0, 0, loader_views)
        self.projections = projections

    def admit(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Generator]:
        return image, generator

    def patch_loss(
        self, candidate: torch.Tensor, states: Sequence[tuple[torch.Tensor, torch.Generator]], steps: Sequence[int]
    ) -> torch.Tensor:
        images = torch.stack([image for image, _ in states])
        generators = [generator for _, generator in states]
        return pyramid_patch_loss(images, candidate, generators, self.patch, projections=self.projections)
