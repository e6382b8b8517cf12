"""Preprocessing of time courses: numeric times and prior growth rates from marker genes."""

from ._preprocess import birth_rate, death_rate, growth_markers, numeric_time, score_growth

__all__ = ["birth_rate", "death_rate", "growth_markers", "numeric_time", "score_growth"]


def __dir__() -> list[str]:
    """The public functions only."""
    return list(__all__)
