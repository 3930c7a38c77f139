from __future__ import annotations

import torch

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier


class PGD(Attack):
    """PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018).

    Distance: l-inf. `steps` signed-gradient steps of size `alpha`, each projected onto the eps-ball
    around x and onto [0, 1]; optional uniform random start in the ball.
    Defaults: eps = 8/255, alpha = eps / 4 (2/255), steps = 10, random_start = True: PGD-10, the
    robustness evaluation of Madry et al. (`pgd20` in a spec: 20 steps).
    """

    name = "pgd"
    distance = "linf"

    def __init__(
        self,
        model: ImageClassifier,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
    ) -> None:
        super().__init__(model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha or eps / 4, steps, random_start

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        adversarial = images.clone()
        if self.random_start:
            adversarial = (adversarial + self.uniform(generators, images.shape[1:], -self.eps, self.eps)).clamp(0, 1)
        return self._iterate(images, adversarial, criterion)

    def refine(self, images: torch.Tensor, start: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """PGD steps from a given start inside the eps-ball (e.g. a generator's sample)."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                return self._iterate(images.detach(), start.detach().clamp(0, 1), criterion).detach()
        finally:
            self.model.train(training)

    def _iterate(self, images: torch.Tensor, adversarial: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        for _ in range(self.steps):
            _, gradient = self.loss_gradient(adversarial, criterion)
            adversarial = adversarial + self.alpha * gradient.sign()
            adversarial = (images + (adversarial - images).clamp(-self.eps, self.eps)).clamp(0, 1)
        return adversarial


class PGDL2(Attack):
    """PGD in l2: Madry et al. (ICLR 2018), with l2-normalized gradient steps.

    Distance: l2. Steps of length `alpha` along grad / ||grad||_2, projected onto the l2 ball of
    radius eps and onto [0, 1]; optional random start uniform in the ball's directions.
    Defaults: eps = 1.0, alpha = 0.2, steps = 10, random_start = True.
    """

    name = "pgd-l2"
    distance = "l2"

    def __init__(
        self, model: ImageClassifier, eps: float = 1.0, alpha: float = 0.2, steps: int = 10, random_start: bool = True
    ) -> None:
        super().__init__(model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta * (self.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        adversarial = images.clone()
        if self.random_start:
            direction = self.normal(generators, images.shape[1:])
            direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            radius = self.uniform(generators, (1, 1, 1), 0.0, self.eps)
            adversarial = (images + direction * radius).clamp(0, 1)
        for _ in range(self.steps):
            _, gradient = self.loss_gradient(adversarial, criterion)
            norms = gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10
            adversarial = adversarial + self.alpha * gradient / norms
            adversarial = (images + self._project(adversarial - images)).clamp(0, 1)
        return adversarial
