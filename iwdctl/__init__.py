"""iwdctl: the internal Wasserstein distance for adversarial attack and defense.

import iwdctl
model = iwdctl.load_classifier("efficientnet_lite0")          # CUDA when present
attack = iwdctl.attacks.PGD(model, eps=8 / 255)
adversarial = attack(images, iwdctl.Misclassification(labels))
iwdctl.iwd(images, adversarial)                               # exact IWD per pair, float64
"""

from __future__ import annotations

from iwdctl import attacks
from iwdctl.attacks import ATTACKS, Attack, make_attack
from iwdctl.criteria import Misclassification, TargetedMisclassification
from iwdctl.errors import ClassNameError, InputError, IwdctlError, ModelError
from iwdctl.iwd import IWDValue, iwd, iwd_pair
from iwdctl.models import MODELS, ImageClassifier, load_classifier

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "MODELS",
    "Attack",
    "ClassNameError",
    "IWDValue",
    "ImageClassifier",
    "InputError",
    "IwdctlError",
    "Misclassification",
    "ModelError",
    "TargetedMisclassification",
    "__version__",
    "attacks",
    "iwd",
    "iwd_pair",
    "load_classifier",
    "make_attack",
]
