"""What a fit chooses from its time course: the frame, delta, entropy rate, batch size, widths, source masses."""

from __future__ import annotations

import numpy as np

from ..paths import default_entropy_rate
from ._config import Config, Resolved
from ._course import TimeCourse
from ._delta import cross_validated_delta
from ._methods import Method

# largest |prior growth rate x interval| accepted: a factor e^20 (5e8) per interval, beyond any plausible growth;
# rates per day read per hour (x 24) pass it for |rate| > 0.83 per day, and the fit then overflows
MAX_LOG_GROWTH = 20.0


def pooled_moments(populations: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Mean of all cells and one overall scale (root mean variance over coordinates), in one pass
    of float64 sums per population (no pooled copy).
    """
    n = sum(len(x) for x in populations)
    total = sum(np.asarray(x, dtype=np.float64).sum(axis=0) for x in populations)
    center = total / n
    squares = sum(((np.asarray(x, dtype=np.float64) - center) ** 2).sum(axis=0) for x in populations)
    return center, float(np.sqrt((squares / n).mean())) or 1.0


def default_batch_size(course: TimeCourse) -> int:
    """Pairs per interval and step of ``batch_size="auto"``: 256, or the number of cells of the smallest
    source population when that is smaller (at least 64). A balanced plan between ``n`` cells and the next
    time point has about ``n`` entries, so a larger batch only draws the same pairs again.
    """
    return int(min(256, max(64, min(len(x) for x in course.populations[:-1]))))


def default_hidden(n_dims: int) -> list[int]:
    """Hidden widths of ``hidden="auto"``: three layers of ``16 (d + 1)`` units, rounded up to a power
    of two, between 64 and 256 (64 up to 3 dimensions, 128 up to 7, 256 from 15).
    """
    width = 2 ** int(np.ceil(np.log2(16 * (n_dims + 1))))
    return [int(min(256, max(64, width)))] * 3


def source_masses(course: TimeCourse) -> list[np.ndarray]:
    """Source marginal of each interval: the cells' mass times their prior growth over it.

    Raises a ``ValueError`` naming the ``growth_key`` when a prior would change a cell's mass by more
    than ``e^20`` over an interval, the sign of rates given per another unit than the time column's.
    """
    mass = course.weights or [np.ones(len(x)) for x in course.populations]
    if course.growth is None:
        return mass[:-1]
    masses = []
    for k, dt in enumerate(np.diff(course.times)):
        log_growth = course.growth[k] * dt
        worst = float(np.abs(log_growth).max())
        if not worst <= MAX_LOG_GROWTH:
            key = "growth_key" if course.growth_key is None else f"growth_key={course.growth_key!r}"
            raise ValueError(
                f"the prior growth rates ({key}) of time point {course.times[k]:g} reach "
                f"{worst / dt:g} per time unit, a change of e^{worst:.0f} in mass by the next time point "
                f"({dt:g} units of obs[{course.time_key!r}] later; at most e^{MAX_LOG_GROWTH:.0f} is accepted, "
                "and a fit with more would overflow); give log growth rates per unit of the time "
                "column: for rates per day (cellflow.pp.score_growth's default) and a time column in hours, pass "
                "growth_unit='day', time_unit='hour' (or score_growth(..., time_unit='hour'))"
            )
        masses.append(mass[k] * np.exp(log_growth))
    return masses


def target_masses(course: TimeCourse, sources: list[np.ndarray]) -> list[np.ndarray]:
    """Target marginal of each interval: the next time point's cell masses.

    With known population sizes (:attr:`TimeCourse.sizes`) the masses already carry them. Without
    them but with a growth prior, the next time point's masses are scaled to the total of the
    interval's source marginal (:func:`source_masses`), so that the prior, not the number of cells
    sequenced, sets how much the population grows (a constant prior of ``log 2`` doubles it per
    unit time); without either, the cell numbers do.
    """
    mass = course.weights or [np.ones(len(x)) for x in course.populations]
    if course.growth is None or course.sizes is not None:
        return mass[1:]
    return [mass[k + 1] * (sources[k].sum() / mass[k + 1].sum()) for k in range(len(sources))]


def resolve(config: Config, method: Method, course: TimeCourse) -> Resolved:
    """What this fit chooses from the course, before training (the clock is set once the objective exists)."""
    c = config
    center, scale = pooled_moments(course.populations)
    delta = c.delta
    if method.needs_delta and delta is None:
        delta = cross_validated_delta(
            [np.asarray(x, dtype=np.float64) for x in course.populations], course.times,
            reg=c.reg if "delta" in method.coupling_class.settings else None,
            block_size=c.block_size, seed=c.seed,
        )
    rate = c.entropy_rate
    if "entropy_rate" in method.path_class.settings and rate is None:
        rate = default_entropy_rate(course.times)
    return Resolved(
        delta=delta, entropy_rate=rate,
        batch_size=default_batch_size(course) if c.batch_size == "auto" else c.batch_size,
        hidden=tuple(default_hidden(course.n_dims) if c.hidden == "auto" else c.hidden),
        center=np.asarray(center, dtype=np.float64), scale=float(scale),
        times=np.asarray(course.times, dtype=np.float64), clock=None,
        reflow=0,
    )
