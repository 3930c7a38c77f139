"""iwdctl: the internal Wasserstein distance for adversarial attack and defense.

import iwdctl
model = iwdctl.load_classifier("efficientnet_lite0")          # CUDA when present
attack = iwdctl.attacks.PGD(model, eps=8 / 255)
adversarial = attack(images, iwdctl.Misclassification(labels))
iwdctl.iwd(images, adversarial)                               # exact IWD per pair, float64
"""

from __future__ import annotations

import importlib
from typing import Any

# Bound eagerly: the function `iwd` must shadow the submodule of the same name.
from iwdctl.iwd import IWDValue, iwd, iwd_pair

# Exports are imported on first use, so that `iwdctl measure` does not pay for the attack and model
# modules (torchvision, timm) at start-up.
_EXPORTS = {
    "attacks": "iwdctl.attacks",
    "ATTACKS": "iwdctl.attacks",
    "Attack": "iwdctl.attacks",
    "make_attack": "iwdctl.attacks",
    "Misclassification": "iwdctl.criteria",
    "TargetedMisclassification": "iwdctl.criteria",
    "ClassNameError": "iwdctl.errors",
    "InputError": "iwdctl.errors",
    "IwdctlError": "iwdctl.errors",
    "ModelError": "iwdctl.errors",
    "MODELS": "iwdctl.models",
    "ImageClassifier": "iwdctl.models",
    "load_classifier": "iwdctl.models",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iwdctl' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "attacks" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
