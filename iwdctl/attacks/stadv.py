from __future__ import annotations

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample images at p + flow(p) (flow in pixels, (N, 2, H, W) as (dx, dy)), bilinear."""
    _, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device, dtype=images.dtype),
        torch.arange(width, device=images.device, dtype=images.dtype),
        indexing="ij",
    )
    x = (xs + flow[:, 0]) * 2 / max(width - 1, 1) - 1
    y = (ys + flow[:, 1]) * 2 / max(height - 1, 1) - 1
    return F.grid_sample(
        images, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="border", align_corners=True
    )


def flow_loss(flow: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """stAdv's smoothness loss (its eq. 4): sum over pixels and their 4 neighbours of
    sqrt(||du||^2 + ||dv||^2 + eps), per sample."""
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    center = padded[:, :, 1:-1, 1:-1]
    total = torch.zeros(flow.shape[0], device=flow.device, dtype=flow.dtype)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[:, :, 1 + dy : padded.shape[2] - 1 + dy, 1 + dx : padded.shape[3] - 1 + dx]
        total = total + ((center - neighbour) ** 2).sum(dim=1).add(eps).sqrt().flatten(1).sum(dim=1)
    return total


class StAdv(Attack):
    """stAdv: Xiao, Zhu, Li, He, Liu and Song, "Spatially Transformed Adversarial Examples" (ICLR 2018).

    Distance: flow smoothness (no l_p bound). A per-pixel flow field moves pixels, resampled
    bilinearly; minimizes L_adv + tau * L_flow, with L_adv = max(-margin, -kappa) (the C&W-style
    margin of the criterion) and L_flow the smoothness loss of eq. 4, counted per 32x32 area for larger
    images (tau was set for 32x32 inputs; summed over a 224x224 image it would swamp L_adv). The paper
    uses L-BFGS; we use Adam and keep the adversarial iterate with the smallest flow loss. An image
    not yet adversarial has its tau divided by `relax` every `relax_every` steps (as C&W search their
    constant): at tau = 0.05 the smoothness term's subgradient, which does not vanish at small flows,
    outweighed the margin of the tiny6 models (small logits) and left the flow at zero on every image.
    Defaults: tau = 0.05, kappa = 0.5 (a margin that survives 8-bit rounding), steps = 100, lr = 0.1
    (pixels), relax = 10, relax_every = 20. Chosen on tiny6 *train* images (120, 20 per class; the
    benchmarks report val images): with steps of 0.01 px the flow moved at most 1 px in 100 steps and
    fooled 24% of the natural model's correct images and none of the PGD model's; 0.1 px: 74% and 6%
    (0.3 px: 84% and 13%, at 1.2-1.6x the distortion). Adam's step bounds the flow's growth, where the
    paper's L-BFGS runs to convergence.
    """

    name = "stadv"
    distance = "flow"

    def __init__(
        self,
        model: ImageClassifier,
        tau: float = 0.05,
        kappa: float = 0.5,
        steps: int = 100,
        lr: float = 0.1,
        relax: float = 10.0,
        relax_every: int = 20,
    ) -> None:
        super().__init__(model)
        self.tau, self.kappa, self.steps, self.lr = tau, kappa, steps, lr
        self.relax, self.relax_every = relax, relax_every

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        # A tiny random flow breaks the symmetry of sqrt at zero (its gradient is 0/0 there).
        flow = (self.uniform(generators, (2, *images.shape[2:]), -1e-3, 1e-3)).requires_grad_(True)
        optimizer = torch.optim.Adam([flow], lr=self.lr)
        # eq. 4 sums over pixels; tau = 0.05 was set for 32x32 images, so larger ones count per 32x32 area.
        area_scale = min(1.0, 1024 / (images.shape[-2] * images.shape[-1]))
        best = images.clone()
        best_smoothness = torch.full((len(images),), float("inf"), device=self.device)
        tau = torch.full((len(images),), self.tau, device=self.device)
        for step in range(self.steps):
            if step and step % self.relax_every == 0:
                tau = torch.where(torch.isinf(best_smoothness), tau / self.relax, tau)
            adversarial = warp(images, flow)
            logits = self.model(adversarial)
            margin = criterion.margin(logits)
            smoothness = flow_loss(flow) * area_scale
            with torch.no_grad():
                better = (margin > self.kappa) & (smoothness < best_smoothness)
                best[better] = adversarial[better].detach()
                best_smoothness[better] = smoothness[better]
            loss = (torch.clamp(-margin, min=-self.kappa) + tau * smoothness).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        unfinished = torch.isinf(best_smoothness)
        if unfinished.any():  # never adversarial: return the last iterate, judged as failed later
            best[unfinished] = warp(images, flow).detach()[unfinished]
        return best
