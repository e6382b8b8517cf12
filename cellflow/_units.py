"""Units of time: growth rates given per one unit and wanted per another."""

from __future__ import annotations

# Length of each unit of time in days (a year of 365.25 days).
DAYS = {"second": 1 / 86400, "minute": 1 / 1440, "hour": 1 / 24, "day": 1.0, "week": 7.0, "year": 365.25}
_ALIASES = {"s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "d": "day", "w": "week",
            "wk": "week", "y": "year", "yr": "year"}


def unit_name(unit: str, argument: str) -> str:
    """The canonical name of a unit of time (``"hours"``, ``"h"`` -> ``"hour"``); a ``ValueError`` names ``argument``.

    Parameters
    ----------
    unit
        A unit of time: second, minute, hour, day, week or year (plural or abbreviated, e.g. ``"h"``).
    argument
        Name of the argument it was given as, for the error message.

    Returns
    -------
    One of the keys of :data:`DAYS`.
    """
    name = str(unit).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in DAYS and name.endswith("s") and name[:-1] in DAYS:
        name = name[:-1]
    if name not in DAYS:
        raise ValueError(f"{argument}={unit!r} is not a unit of time; use one of {list(DAYS)}")
    return name


def rate_factor(from_unit: str, to_unit: str, from_argument: str = "growth_unit",
                to_argument: str = "time_unit") -> float:
    """The factor that turns a rate per ``from_unit`` into a rate per ``to_unit``.

    A rate of 1.2 per day is 1.2 / 24 = 0.05 per hour: ``rate_factor("day", "hour") == 1 / 24``.

    Parameters
    ----------
    from_unit, to_unit
        Units of time (see :func:`unit_name`).
    from_argument, to_argument
        Names of the arguments they were given as, for the error messages.

    Returns
    -------
    ``days(to_unit) / days(from_unit)``.
    """
    return DAYS[unit_name(to_unit, to_argument)] / DAYS[unit_name(from_unit, from_argument)]
