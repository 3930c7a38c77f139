from __future__ import annotations

import torch

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.models import ImageClassifier


class FGSM(Attack):
    """FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015).

    Distance: l-inf. One step x + eps * sign(grad of the criterion's loss), clipped to [0, 1].
    Defaults: eps = 8/255.
    """

    name = "fgsm"
    distance = "linf"

    def __init__(self, model: ImageClassifier, eps: float = 8 / 255) -> None:
        super().__init__(model)
        self.eps = eps

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        _, gradient = self.loss_gradient(images, criterion)
        return (images + self.eps * gradient.sign()).clamp(0, 1)
