"""Checks of arguments at the public boundary, each raising an error that names the argument,
the offending value and what to do instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

import numpy as np


def integer(name: str, value: Any, minimum: int = 1, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name}={value!r} must be a whole number (at least {minimum}){hint}")
    if int(value) < minimum or (maximum is not None and int(value) > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name}={value!r} must be {bound}{hint}")
    return int(value)


def number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float within the bounds (``strict``: bounds excluded), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}={value!r} must be a finite number{hint}")
    value = float(value)
    below = minimum is not None and (value <= minimum if strict else value < minimum)
    above = maximum is not None and (value >= maximum if strict else value > maximum)
    if below or above:
        low, high = ("(", ")") if strict else ("[", "]")
        if minimum is not None and maximum is not None:
            relation = f"in {low}{minimum:g}, {maximum:g}{high}"
        elif minimum is not None:
            relation = f"{'>' if strict else '>='} {minimum:g}"
        else:
            relation = f"{'<' if strict else '<='} {maximum:g}"
        raise ValueError(f"{name}={value!r} must be {relation}{hint}")
    return value


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options``, else a ``ValueError`` listing them."""
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {options}")
    return value


def flag(name: str, value: Any, hint: str = "") -> bool:
    """``value`` if it is ``True`` or ``False`` (NumPy's booleans too), else a ``ValueError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be True or False{hint}")
    return bool(value)
