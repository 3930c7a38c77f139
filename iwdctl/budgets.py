"""One parser for the numbers users type: budgets such as 8/255 or 0.03, and checks of their range."""

from __future__ import annotations

import math

from iwdctl.errors import InputError


def parse_budget(text: str | float, name: str = "--eps") -> float:
    """'8/255', '0.03' or a float -> a positive finite float; anything else is an InputError."""
    try:
        if isinstance(text, str) and "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise InputError(f"{name} must be a number or a fraction such as 8/255, not {text!r}") from error
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be positive, not {text!r}")
    return value


def require_non_negative(value: float | None, name: str) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise InputError(f"{name} must be zero or positive, not {value}")


def require_at_least(value: int | None, minimum: int, name: str) -> None:
    if value is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, not {value}")
