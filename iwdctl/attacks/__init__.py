"""Attacks: one module each, one interface (`Attack`), and a registry by name."""

from __future__ import annotations

from typing import Any

from iwdctl.attacks.adef import ADef
from iwdctl.attacks.base import Attack
from iwdctl.attacks.eot import EOT
from iwdctl.attacks.fgsm import FGSM
from iwdctl.attacks.iwda import IWDA, PRESETS
from iwdctl.attacks.iwda_amortised import AmortisedIWDA
from iwdctl.attacks.iwda_fast import IWDAFast
from iwdctl.attacks.pgd import PGD, PGDL2
from iwdctl.attacks.stadv import StAdv
from iwdctl.errors import InputError
from iwdctl.models import ImageClassifier

ATTACKS: dict[str, type[Attack]] = {
    attack.name: attack for attack in (IWDA, IWDAFast, AmortisedIWDA, FGSM, PGD, PGDL2, StAdv, ADef, EOT)
}


def make_attack(name: str, model: ImageClassifier, **options: Any) -> Attack:
    """An attack by registry name; options that are None keep the attack's documented defaults."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack method {name!r}; known: {', '.join(ATTACKS)}")
    try:
        return ATTACKS[name](model, **{key: value for key, value in options.items() if value is not None})
    except TypeError as error:
        raise InputError(f"method {name!r} does not take that option ({error})") from error


__all__ = [
    "ATTACKS",
    "PRESETS",
    "ADef",
    "AmortisedIWDA",
    "Attack",
    "EOT",
    "FGSM",
    "IWDA",
    "IWDAFast",
    "PGD",
    "PGDL2",
    "StAdv",
    "make_attack",
]
