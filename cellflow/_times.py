"""Time labels read as times: a number with a unit of time, a plain number, or what ``time_map`` says.

A label is read as a time only when it holds exactly one number and, around it, nothing or a
unit of time (:data:`UNITS`): ``"12h"``, ``"day 3"``, ``"D2"``, ``"week 2"``, ``"E10.5"``
(embryonic day), ``"P7"`` (postnatal day), ``"30 min"``, ``"24 hpf"``; ``"t0"``, ``"t=1"`` or
``"time 2"`` name a time without a unit. Other words are refused: ``"8C"`` (cells per embryo),
``"stage 3"`` or ``"passage 2"`` count something else, and only ``time_map`` can say which time
they stand for.

Units of one kind are converted to the finest among them: ``"12h"`` and ``"1d"`` are read as 12
and 24 hours, ``"30 min"`` and ``"1h"`` as 30 and 60 minutes (durations: minutes, hours, days,
weeks). Ages with their own origin (embryonic days, postnatal days) and units of no fixed length
(months, years) mix with no other unit, nor do labels without a unit with labels that have one:
such a column is refused, since ``"P0"`` is ``"E19.5"`` in one species and not another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

# A sign belongs to the number unless a letter, digit or underscore directly precedes it ("day-1" is day 1).
NUMBER = re.compile(r"(?:(?<!\w)[-+])?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SEPARATORS = " \t=_-:.,()[]"

# word around the number (lower case) -> (unit, length in the kind's finest unit, kind)
_DURATION = {"minutes": 1.0, "hours": 60.0, "days": 1440.0, "weeks": 10080.0}
UNITS: dict[str, tuple[str, str]] = {
    **{w: ("minutes", "duration") for w in ("min", "mins", "minute", "minutes")},
    **{w: ("hours", "duration") for w in ("h", "hr", "hrs", "hour", "hours", "hpf", "hpi", "hpa", "hph")},
    **{w: ("days", "duration") for w in ("d", "day", "days", "dpf", "dpi", "dpa")},
    **{w: ("weeks", "duration") for w in ("w", "wk", "wks", "week", "weeks")},
    **{w: ("embryonic days", "embryonic days") for w in ("e", "dpc")},
    **{w: ("postnatal days", "postnatal days") for w in ("p", "pnd")},
    **{w: ("months", "months") for w in ("mo", "month", "months")},
    **{w: ("years", "years") for w in ("y", "yr", "yrs", "year", "years")},
}
# words that say "time" without a unit
_TIME_WORDS = ("t", "tp", "time", "timepoint")


@dataclass(frozen=True)
class TimeReading:
    """How a column of time labels was read.

    Attributes
    ----------
    time_key
        The ``obs`` column.
    labels, times
        Every distinct label (as a string) and the time it was read as, sorted by time.
    unit
        The unit of the times (``"hours"``, ``"days"``, ``"embryonic days"``, ...), or ``""``
        when the labels name none (numbers, ``time_map``).
    source
        ``"numbers"`` (a numeric column), ``"labels"`` (numbers read from labels) or ``"time_map"``.
    """

    time_key: str
    labels: tuple[str, ...]
    times: tuple[float, ...]
    unit: str
    source: str

    def as_dict(self) -> dict:
        """The reading as plain lists and strings, as stored in ``uns`` (an ``.h5ad`` round trip keeps them).

        Returns
        -------
        A dict with ``time_key``, ``labels``, ``times``, ``unit`` and ``source``.
        """
        return {"time_key": self.time_key, "labels": list(self.labels), "times": list(self.times),
                "unit": self.unit, "source": self.source}


def describe_reading(reading: Mapping | TimeReading) -> str:
    """One line saying how the time labels were read, for printed summaries.

    Parameters
    ----------
    reading
        A :class:`TimeReading`, or its :meth:`TimeReading.as_dict` as :func:`cellflow.tl.fit` stores it
        in ``uns[key_added]["time_reading"]``.

    Returns
    -------
    E.g. ``"times of obs['age'] read from labels (hours): '0h' -> 0, '12h' -> 12, '1d' -> 24"``.
    """
    if isinstance(reading, TimeReading):
        reading = reading.as_dict()
    unit = str(reading.get("unit", "")) or "no unit"
    source = {"numbers": "numbers", "labels": "labels", "time_map": "labels, by time_map"}.get(
        str(reading.get("source", "")), str(reading.get("source", "")))
    pairs = [f"{label!r} -> {float(t):g}" for label, t in zip(reading["labels"], reading["times"])]
    shown = pairs if len(pairs) <= 6 else [*pairs[:4], "...", *pairs[-1:]]
    return f"times of obs[{str(reading.get('time_key', 'time'))!r}] read from {source} ({unit}): {', '.join(shown)}"


def _refuse(label: str, time_key: str, why: str) -> ValueError:
    return ValueError(
        f"cannot read a time from the label {label!r} of obs[{time_key!r}] ({why}); "
        f"pass time_map={{{label!r}: time, ...}} to say which time each label means"
    )


def _read_label(label: str, time_key: str) -> tuple[float, str | None]:
    """The number of one label and its unit (``None`` without one); a ``ValueError`` if it is no time."""
    numbers = list(NUMBER.finditer(label))
    if len(numbers) != 1:
        raise _refuse(label, time_key, "no number in it" if not numbers else "several numbers in it")
    match = numbers[0]
    before = label[: match.start()].strip(_SEPARATORS)
    if before.lower() in _TIME_WORDS:
        before = ""
    words = [w for w in (before, label[match.end():].strip(_SEPARATORS)) if w]
    if len(words) == 2:
        raise _refuse(label, time_key, f"the words {words[0]!r} and {words[1]!r} around its number")
    if not words:
        return float(match.group()), None
    if words[0].lower() not in UNITS:
        raise _refuse(label, time_key, f"{words[0]!r} is not a unit of time, so {match.group()} may count "
                                       "something else, e.g. cells per embryo or a stage")
    return float(match.group()), words[0].lower()


def _common_unit(units: dict[str, str | None], time_key: str) -> tuple[str, dict[str, float]]:
    """The unit of a column whose labels have the units ``units`` (label -> word), and each label's factor."""
    if all(word is None for word in units.values()):
        return "", {label: 1.0 for label in units}
    bare = [label for label, word in units.items() if word is None]
    if bare:
        with_unit = next(label for label, word in units.items() if word is not None)
        raise ValueError(
            f"obs[{time_key!r}] mixes labels without a unit ({bare[0]!r}) and with one ({with_unit!r}); "
            f"pass time_map={{{bare[0]!r}: ..., {with_unit!r}: ...}} to say which time each label means"
        )
    kinds = {label: UNITS[str(word)] for label, word in units.items()}
    names = {unit for unit, _ in kinds.values()}
    if len({kind for _, kind in kinds.values()}) > 1:  # units of one kind other than durations share a name
        first, other = sorted(names)[:2]
        a = next(label for label, (unit, _) in kinds.items() if unit == first)
        b = next(label for label, (unit, _) in kinds.items() if unit == other)
        raise ValueError(
            f"obs[{time_key!r}] mixes {first} ({a!r}) and {other} ({b!r}), which no fixed factor converts; "
            f"pass time_map={{{a!r}: ..., {b!r}: ...}} to say which time each label means"
        )
    if len(names) == 1:
        return names.pop(), {label: 1.0 for label in units}
    finest = min(names, key=_DURATION.__getitem__)
    return finest, {label: _DURATION[unit] / _DURATION[finest] for label, (unit, _) in kinds.items()}


def read_times(values: pd.Series, time_key: str, time_map: Mapping | None = None) -> tuple[np.ndarray, TimeReading]:
    """Read a column of time labels as times, and say how (see the module's notes for the rules).

    Parameters
    ----------
    values
        The column, e.g. ``adata.obs[time_key]``.
    time_key
        Its name, for the error messages.
    time_map
        Optional mapping of every label to a time (stage names, cell counts, mixed units).

    Returns
    -------
    One float per entry of ``values``, in its order, and the :class:`TimeReading`.

    Raises
    ------
    ValueError
        When a label is no time (no number, several, or a word that is no unit of time), the
        units of the column do not convert into one another, two labels read as the same time,
        or ``time_map`` lacks a label; the message names the column and the label and says to pass
        ``time_map={label: time}``.
    """
    if time_map is not None:
        labels = values.astype(str)
        lookup = {str(k): float(v) for k, v in time_map.items()}
        missing = sorted(set(labels) - set(lookup))
        if missing:
            raise ValueError(
                f"time_map has no entry for the labels {missing[:5]} of obs[{time_key!r}]; add them to time_map"
            )
        parsed, unit, source = {label: lookup[label] for label in pd.unique(labels)}, "", "time_map"
    elif pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
        times = values.to_numpy(dtype=float)
        unique = np.unique(times[np.isfinite(times)])
        reading = TimeReading(time_key, tuple(f"{t:g}" for t in unique), tuple(float(t) for t in unique), "", "numbers")
        return times, reading
    else:
        labels = values.astype(str)
        read = {label: _read_label(label, time_key) for label in pd.unique(labels)}
        unit, factors = _common_unit({label: word for label, (_, word) in read.items()}, time_key)
        parsed, source = {label: number * factors[label] for label, (number, _) in read.items()}, "labels"
        label_of_time: dict[float, str] = {}
        for label, time in parsed.items():
            other = label_of_time.setdefault(time, label)
            if other != label:
                raise ValueError(
                    f"the labels {other!r} and {label!r} of obs[{time_key!r}] both read as time {time:g}; "
                    f"pass time_map={{{other!r}: ..., {label!r}: ...}} to say which time each label means"
                )
    order = sorted(parsed, key=parsed.__getitem__)
    reading = TimeReading(time_key, tuple(order), tuple(float(parsed[label]) for label in order), unit, source)
    return labels.map(parsed).to_numpy(dtype=float), reading
