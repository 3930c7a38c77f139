from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack
from iwdctl.attacks.stadv import warp
from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth each channel of (N, C, H, W) with a Gaussian of std `sigma` pixels (reflect padding)."""
    if sigma <= 0:
        return field
    radius = max(1, math.ceil(3 * sigma))
    coordinates = torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype)
    kernel = torch.exp(-(coordinates**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = field.shape[1]
    padded = F.pad(field, (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class ADef(Attack):
    """ADef: Alaifari, Alberti and Gauksson, "ADef: an Iterative Algorithm to Construct Adversarial
    Deformations" (ICLR 2019).

    Distance: the deformation's vector field (reported with l2 / l-inf / IWD like every attack).
    Each iteration linearizes f_k - f_l for the candidate labels k (the `candidates` most likely
    other classes, or the target), solves for the smallest Gaussian-smoothed vector field that
    closes the gap, keeps the candidate with the smallest field and adds it. Once adversarial the
    total field is scaled by `overshoot` (kept only if still adversarial).
    Defaults: sigma = 1.0 pixel, candidates = 5, steps = 50 (iterations), overshoot = 1.2.
    """

    name = "adef"
    distance = "deformation"

    def __init__(
        self,
        model: ImageClassifier,
        sigma: float = 1.0,
        candidates: int = 5,
        steps: int = 50,
        overshoot: float = 1.2,
    ) -> None:
        super().__init__(model)
        self.sigma, self.candidates, self.steps, self.overshoot = sigma, candidates, steps, overshoot

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        count = len(images)
        field = torch.zeros(count, 2, *images.shape[2:], device=self.device)
        done = torch.zeros(count, dtype=torch.bool, device=self.device)
        for _ in range(self.steps):
            current = warp(images, field).detach().requires_grad_(True)
            logits = self.model(current)
            done = done | criterion.is_adversarial(logits.detach())
            if done.all():
                break
            if criterion.targeted:
                # Close the gap between the target and whichever other class leads now (it changes as
                # the image deforms; a gap to the clean prediction alone can leave a third class on top).
                candidate_labels = criterion.targets[:, None]  # type: ignore[attr-defined]
                source = logits.detach().scatter(1, candidate_labels, float("-inf")).argmax(1)
            else:
                source = criterion.labels  # type: ignore[attr-defined]
                ranked = logits.detach().scatter(1, source[:, None], float("-inf")).topk(self.candidates, dim=1).indices
                candidate_labels = ranked
            dy_image, dx_image = torch.gradient(current.detach(), dim=(2, 3))
            best_step = torch.zeros_like(field)
            best_norm = torch.full((count,), float("inf"), device=self.device)
            for column in range(candidate_labels.shape[1]):
                label = candidate_labels[:, column]
                gap = logits.gather(1, label[:, None])[:, 0] - logits.gather(1, source[:, None])[:, 0]
                (gradient,) = torch.autograd.grad(
                    gap.sum(), current, retain_graph=column + 1 < candidate_labels.shape[1]
                )
                # d gap / d field at each pixel: sum over channels of image gradient times pixel gradient.
                direction = torch.stack([(gradient * dx_image).sum(1), (gradient * dy_image).sum(1)], dim=1)
                smoothed = gaussian_smooth(direction, self.sigma)
                inner = (direction * smoothed).flatten(1).sum(1).clamp_min(1e-12)
                step = (-gap.detach() / inner).view(-1, 1, 1, 1) * smoothed
                norm = step.flatten(1).norm(dim=1)
                better = norm < best_norm
                best_step[better] = step[better]
                best_norm[better] = norm[better]
            field = field + best_step * (~done).view(-1, 1, 1, 1)
        with torch.no_grad():
            result = warp(images, field)
            overshot = warp(images, field * self.overshoot)
            keep = criterion.is_adversarial(self.model(overshot))
            result[keep] = overshot[keep]
        return result
