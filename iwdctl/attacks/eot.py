from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle (radians) about its centre; differentiable, zeros outside."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class EOT(Attack):
    """EOT: Athalye, Engstrom, Ilyas and Kwok, "Synthesizing Robust Adversarial Examples" (ICML 2018).

    Distance: l-inf. PGD on the expected loss over random rotations: each step averages the
    gradient over `samples` rotations drawn uniformly in [-max_angle, max_angle] degrees.
    Defaults: eps = 8/255, alpha = 2/255, steps = 10, samples = 8, max_angle = 30.
    """

    name = "eot"
    distance = "linf"

    def __init__(
        self,
        model: ImageClassifier,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        samples: int = 8,
        max_angle: float = 30.0,
    ) -> None:
        super().__init__(model)
        self.eps, self.alpha, self.steps, self.samples, self.max_angle = eps, alpha, steps, samples, max_angle

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        adversarial = images.clone()
        limit = math.radians(self.max_angle)
        for _ in range(self.steps):
            adversarial.requires_grad_(True)
            angles = self.uniform(generators, (self.samples,), -limit, limit)  # (N, samples)
            total = torch.zeros((), device=self.device)
            for sample in range(self.samples):
                total = total + criterion.loss(self.model(rotate(adversarial, angles[:, sample]))).sum()
            (gradient,) = torch.autograd.grad(total / self.samples, adversarial)
            adversarial = adversarial.detach() + self.alpha * gradient.sign()
            adversarial = (images + (adversarial - images).clamp(-self.eps, self.eps)).clamp(0, 1)
        return adversarial
