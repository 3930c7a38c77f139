"""Attack criteria (foolbox style): what counts as adversarial, and the loss an attack ascends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class Criterion(Protocol):
    targeted: bool

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to maximize, (N,)."""
        ...

    def is_adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample success, (N,) bool."""
        ...

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample logit margin, > 0 exactly when adversarial."""
        ...

    def select(self, index: torch.Tensor | slice) -> Criterion: ...


def _class_and_best_other(logits: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's logit of its given class, and its largest logit among the other classes."""
    own = logits.gather(1, classes[:, None])[:, 0]
    other = logits.scatter(1, classes[:, None], float("-inf")).amax(dim=1)
    return own, other


@dataclass(frozen=True)
class Misclassification:
    """Untargeted: any class but the true label. Loss: cross-entropy of the true label."""

    labels: torch.Tensor
    targeted = False

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.labels, reduction="none")

    def is_adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1) != self.labels

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        true, other = _class_and_best_other(logits, self.labels)
        return other - true

    def select(self, index: torch.Tensor | slice) -> Misclassification:
        return Misclassification(self.labels[index])


@dataclass(frozen=True)
class TargetedMisclassification:
    """Targeted: the target class must win. Loss: minus the cross-entropy of the target."""

    targets: torch.Tensor
    targeted = True

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits, self.targets, reduction="none")

    def is_adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1) == self.targets

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        target, other = _class_and_best_other(logits, self.targets)
        return target - other

    def select(self, index: torch.Tensor | slice) -> TargetedMisclassification:
        return TargetedMisclassification(self.targets[index])


def bounded_classification_loss(criterion: Criterion, logits: torch.Tensor, kappa: float) -> torch.Tensor:
    """The IWD papers' L_c, to descend (criterion.loss is ascended), counted only for samples not yet
    adversarial by a logit margin of `kappa`: unbounded, the cross-entropy outweighs the patch critic
    and drives samples far past the decision boundary, away from x. Mean over the batch."""
    pending = (criterion.margin(logits) < kappa).detach()
    return -(criterion.loss(logits) * pending).mean()


def make_criterion(labels: torch.Tensor, targets: torch.Tensor | None = None) -> Criterion:
    return TargetedMisclassification(targets) if targets is not None else Misclassification(labels)


def concatenate(criteria: Sequence[Criterion]) -> Criterion:
    """One criterion over the rows of several (all untargeted or all targeted)."""
    if all(isinstance(criterion, TargetedMisclassification) for criterion in criteria):
        return TargetedMisclassification(torch.cat([criterion.targets for criterion in criteria]))  # type: ignore[attr-defined]
    if all(isinstance(criterion, Misclassification) for criterion in criteria):
        return Misclassification(torch.cat([criterion.labels for criterion in criteria]))  # type: ignore[attr-defined]
    raise TypeError("criteria to concatenate must all be untargeted or all targeted")
