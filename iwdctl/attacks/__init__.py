"""Attacks: one module each, one interface (`Attack`), and one registry by name.

A spec names a registry entry, optionally followed by its number of steps: `pgd` is PGD with its
defaults (10 steps), `pgd20` PGD with 20, `fgsm` FGSM. `iwdctl attack --method` and `iwdctl eval
--attack` read the same specs.
"""

from __future__ import annotations

import inspect
from typing import Any

from iwdctl.attacks.adef import ADef
from iwdctl.attacks.base import Attack
from iwdctl.attacks.eot import EOT
from iwdctl.attacks.fgsm import FGSM
from iwdctl.attacks.iwda import IWDA, PRESETS
from iwdctl.attacks.iwda_amortised import AmortisedIWDA
from iwdctl.attacks.iwda_fast import IWDAFast
from iwdctl.attacks.iwda_ot import IWDAOT
from iwdctl.attacks.pgd import PGD, PGDL2
from iwdctl.attacks.stadv import StAdv
from iwdctl.errors import InputError
from iwdctl.models import ImageClassifier

ATTACKS: dict[str, type[Attack]] = {
    attack.name: attack for attack in (IWDAOT, IWDA, IWDAFast, AmortisedIWDA, FGSM, PGD, PGDL2, StAdv, ADef, EOT)
}


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """'pgd20' -> ('pgd', {'steps': 20}); 'pgd-l2' -> ('pgd-l2', {}). Unknown names are an InputError."""
    text = spec.strip().lower()
    if text in ATTACKS:
        return text, {}
    # The longest registry name followed by digits: 'pgd-l25' is pgd-l2 with 5 steps.
    for split in range(len(text) - 1, 0, -1):
        name, steps = text[:split], text[split:]
        if steps.isdigit() and name in ATTACKS and "steps" in accepted_options(name) and int(steps) > 0:
            return name, {"steps": int(steps)}
    raise InputError(f"unknown attack {spec!r}; known: {', '.join(ATTACKS)}, optionally with a step count (pgd20)")


def accepted_options(name: str) -> set[str]:
    return set(inspect.signature(ATTACKS[name].__init__).parameters) - {"self", "model"}


def make_attack(spec: str, model: ImageClassifier, strict: bool = True, **options: Any) -> Attack:
    """An attack by spec; options that are None keep the attack's documented defaults. With `strict`,
    an option the attack does not take is an InputError; otherwise it is left out (e.g. eval's --eps
    for an attack without a budget)."""
    name, spec_options = parse_spec(spec)
    chosen = {key: value for key, value in options.items() if value is not None}
    unknown = set(chosen) - accepted_options(name)
    if unknown and strict:
        raise InputError(f"attack {name!r} does not take {', '.join(sorted(unknown))}")
    chosen = {key: value for key, value in chosen.items() if key not in unknown}
    if "steps" in spec_options and chosen.get("steps", spec_options["steps"]) != spec_options["steps"]:
        raise InputError(f"{spec!r} names {spec_options['steps']} steps but --steps says {chosen['steps']}")
    return ATTACKS[name](model, **{**chosen, **spec_options})


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
    "IWDAOT",
    "PGD",
    "PGDL2",
    "StAdv",
    "accepted_options",
    "make_attack",
    "parse_spec",
]
