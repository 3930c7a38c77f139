"""iwdctl: the internal Wasserstein distance for adversarial attack and defense."""

from __future__ import annotations

from iwdctl.errors import ClassNameError, InputError, IwdctlError, ModelError
from iwdctl.models import MODELS, ImageClassifier, load_classifier

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "ClassNameError",
    "ImageClassifier",
    "InputError",
    "IwdctlError",
    "ModelError",
    "__version__",
    "load_classifier",
]
