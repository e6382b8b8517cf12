"""Trust signals of a fitted flow: how far its long pushes drift from the data, and why.

Two measurements, both cheap enough to run at the end of every fit:

* :func:`horizon`, WFR-FM's in-sample protocol: the cells of the first time point pushed once
  through every later measured time and scored there (W1, relative mass error), beside the
  one-interval score (pushed from the time point before) and the largest pushed norm over the
  data's. A field that stays on the data keeps the two W1 close.
* :func:`interval_gain`: how much each interval's map enlarges a small offset from the measured
  cells. A gain well above one compounds over several intervals into the drift :func:`horizon`
  shows.

Both take any ``model`` with ``transport(x, times) -> (positions, masses)`` (positions
``(len(times), n, d)``, masses ``(len(times), n)`` starting at one), such as
:class:`cellflow.CellFlow`, and a :class:`cellflow.model.TimeCourse` in the representation the
model was fitted on. Costs are bounded by ``max_cells`` per time point (a seeded subsample).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from .. import metrics
from ..metrics import mass_error
from ._course import TimeCourse

#: Keys that :func:`horizon_history` returns, as ``model.history`` stores them.
HISTORY_KEYS = ("horizon_times", "horizon_w1_first", "horizon_w1_previous", "horizon_mass_error",
                "horizon_norm_ratio", "interval_gain")
#: Cells per time point that the trust signals of a fit are measured on.
DEFAULT_MAX_CELLS = 1000
#: Offset of :func:`interval_gain`, in units of the median nearest-neighbour distance of the cells moved.
DEFAULT_OFFSET = 0.5


class Transporter(Protocol):
    """What the trust signals push cells with: a fitted :class:`cellflow.CellFlow`, or any model with this method."""

    def transport(self, x: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(len(times), n, d)`` and masses ``(len(times), n)`` (starting at one) of cells ``x``."""
        ...


#: Cells and masses of each time point's subsample; the positions, masses and gain (``None`` without an offset)
#: of each interval's push.
Samples = list[tuple[np.ndarray, np.ndarray]]
Pushes = list[tuple[np.ndarray, np.ndarray, float | None]]


def _check(model: Transporter, course: TimeCourse, max_cells: int) -> None:
    """Raise unless ``course`` has two time points or more inside the model's time range."""
    if not hasattr(model, "transport"):
        raise TypeError(f"model must have a transport(x, times) method (e.g. a fitted cellflow.CellFlow); "
                        f"got a {type(model).__name__}")
    if len(course.times) < 2:
        raise ValueError(f"the horizon needs at least 2 time points; the course has {course.times.tolist()}")
    if int(max_cells) < 2:
        raise ValueError(f"max_cells={max_cells!r} must be at least 2 (cells per time point)")
    fitted = getattr(model, "times", None)
    if fitted is not None and (course.times[0] < fitted[0] - 1e-9 or course.times[-1] > fitted[-1] + 1e-9):
        raise ValueError(f"the course's times {course.times.tolist()} reach beyond the model's fitted range "
                         f"[{fitted[0]:g}, {fitted[-1]:g}]; pass the time course the model was fitted on")


def _subsamples(course: TimeCourse, max_cells: int, seed: int) -> Samples:
    """Cells and masses of each time point: at most ``max_cells`` drawn without replacement, each
    time point from its own stream of ``seed`` (so one time point's draw does not depend on another's).
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(course.times))]
    out = []
    for k, (cells, rng) in enumerate(zip(course.populations, streams)):
        cells = np.asarray(cells, dtype=np.float64)
        masses = np.ones(len(cells)) if course.weights is None else np.asarray(course.weights[k], dtype=np.float64)
        if len(cells) > max_cells:
            keep = np.sort(rng.choice(len(cells), int(max_cells), replace=False))
            cells, masses = cells[keep], masses[keep]
        out.append((cells, masses))
    return out


def _w1(predicted: np.ndarray, masses: np.ndarray, observed: np.ndarray, observed_masses: np.ndarray) -> float:
    """Exact W1 with predicted points weighted by their normalised masses; ``inf`` when the push diverged
    (positions or masses that are not finite, or no mass left).
    """
    if not (np.isfinite(predicted).all() and np.isfinite(masses).all() and masses.sum() > 0):
        return float("inf")
    return metrics.w1(predicted, observed, masses, observed_masses)


def _measured_mass(course: TimeCourse, k: int) -> float:
    """Size of the population at time point ``k``: its number of cells, or its total weight."""
    return float(len(course.populations[k]) if course.weights is None else np.sum(course.weights[k]))


def horizon(model: Transporter, course: TimeCourse, *, max_cells: int = DEFAULT_MAX_CELLS,
            seed: int = 0) -> pd.DataFrame:
    """In-sample horizon: the first time point pushed through every later one, against one-interval pushes.

    Parameters
    ----------
    model
        A fitted :class:`cellflow.CellFlow`, or any object with ``transport(x, times)`` returning
        positions ``(len(times), n, d)`` and masses ``(len(times), n)`` (masses start at one), and
        optionally ``has_growth`` (whether its masses are a prediction; default false).
    course
        The time course the model was fitted on, in the same representation (or a course whose
        times lie within the fitted range, e.g. with a held-out time point put back).
    max_cells
        Cells per time point, a subsample drawn without replacement (seeded): the cells pushed
        from a time point and the cells scored against there.
    seed
        Seed of the subsamples.

    Returns
    -------
    One row per time point after the first, with columns

    ``time``
        The measured time.
    ``w1_first``
        Exact W1 (``ot.emd2``, Euclidean cost, :func:`cellflow.metrics.w1`) between the cells of
        the first time point pushed once to ``time``, weighted by their normalised masses (times
        the course's cell weights, if any), and the measured cells there.
    ``w1_previous``
        The same for the cells of the time point before, pushed over the one interval.
    ``ratio``
        ``w1_first / w1_previous``: one at the second time point up to solver differences; a flow
        that stays on the data keeps it near one.
    ``mass_error``
        Relative mass error ``|M_hat(t)/M_hat(t_0) - n_t/n_0| / (n_t/n_0)``
        (:func:`cellflow.metrics.mass_error`) of the push from the first time point, ``n`` the
        number of cells (or total weight) measured; ``NaN`` for a model without growth, whose
        masses are not a prediction.
    ``norm_ratio``
        Largest distance of a cell pushed from the first time point from the data's centre (the
        mean of every measured cell, all time points pooled) over the largest distance of a
        measured cell (any time point) from that centre; every pushed cell counts, whatever its
        mass. Above one: cells pushed beyond the data.

    Values are ``inf`` where a push diverged (positions or masses not finite).
    """
    _check(model, course, max_cells)
    samples = _subsamples(course, max_cells, seed)
    return _table(model, course, samples, _interval_pushes(model, course, samples, None, seed))


def _table(model: Transporter, course: TimeCourse, samples: Samples, pushes: Pushes) -> pd.DataFrame:
    """The rows of :func:`horizon` from the subsamples and the one-interval pushes of :func:`_interval_pushes`."""
    pooled = np.concatenate([np.asarray(x, dtype=np.float64) for x in course.populations])
    centre = pooled.mean(axis=0)
    data_norm = float(np.linalg.norm(pooled - centre, axis=1).max()) or 1.0
    growth = bool(getattr(model, "has_growth", False))
    start, start_masses = samples[0]
    positions, masses = model.transport(start, course.times)
    rows = []
    for k, (one_step, one_step_masses, _) in zip(range(1, len(course.times)), pushes):
        observed, observed_masses = samples[k]
        pushed_masses = masses[k] * start_masses
        w1_first = _w1(positions[k], pushed_masses, observed, observed_masses)
        w1_previous = _w1(one_step, one_step_masses * samples[k - 1][1], observed, observed_masses)
        mass_ratio = pushed_masses.sum() / start_masses.sum()
        truth = (_measured_mass(course, 0), _measured_mass(course, k))
        rows.append(dict(
            time=float(course.times[k]), w1_first=w1_first, w1_previous=w1_previous,
            ratio=w1_first / w1_previous if w1_previous > 0 else float("inf"),
            mass_error=mass_error(mass_ratio, *truth) if growth and np.isfinite(mass_ratio) else
            (float("inf") if growth else float("nan")),
            norm_ratio=float(np.linalg.norm(positions[k] - centre, axis=1).max()) / data_norm
            if np.isfinite(positions[k]).all() else float("inf"),
        ))
    return pd.DataFrame(rows, columns=["time", "w1_first", "w1_previous", "ratio", "mass_error", "norm_ratio"])


def _median_neighbour_distance(cells: np.ndarray) -> float:
    """Median distance from each distinct cell to its nearest other one (repeated cells, as in a bootstrap
    resample, count once).
    """
    import ot
    cells = np.unique(cells, axis=0)
    squared = ot.dist(cells, cells)
    np.fill_diagonal(squared, np.inf)
    return float(np.sqrt(np.median(squared.min(axis=1))))


def interval_gain(model: Transporter, course: TimeCourse, *, offset: float = DEFAULT_OFFSET,
                  max_cells: int = DEFAULT_MAX_CELLS, seed: int = 0) -> np.ndarray:
    """Gain of each interval's map on cells moved slightly off the data.

    For each interval ``[t_k, t_{k+1}]``: every cell of ``t_k`` (a subsample of at most
    ``max_cells``) gets a copy moved by ``offset`` times the median nearest-neighbour distance of
    those cells, in a uniformly random direction; both are pushed to ``t_{k+1}``, and the gain is
    the median over cells of their distance there over their distance at ``t_k``. One: the map
    neither spreads nor gathers nearby cells; above one it enlarges errors off the data, and the
    gains of successive intervals multiply along a long push (on kouno_thp1, 1.5-1.85 per interval
    for a map learned by flow matching alone, 1.0-1.3 for the closed-form Gaussian OT map).

    Parameters
    ----------
    model
        As for :func:`horizon`.
    course
        As for :func:`horizon`.
    offset
        Length of the move, in units of the median nearest-neighbour distance of the cells of
        ``t_k`` (the subsample), so that it is small on the data's own scale.
    max_cells
        Cells of each time point moved (a seeded subsample).
    seed
        Seed of the subsamples and of the directions.

    Returns
    -------
    One gain per interval, ``len(course.times) - 1`` values; ``inf`` where a push diverged.
    """
    _check(model, course, max_cells)
    samples = _subsamples(course, max_cells, seed)
    return np.array([gain for _, _, gain in _interval_pushes(model, course, samples, offset, seed)])


def _interval_pushes(model: Transporter, course: TimeCourse, samples: Samples, offset: float | None,
                     seed: int) -> Pushes:
    """For each interval ``[t_{k-1}, t_k]``: the positions and masses of the subsampled cells of
    ``t_{k-1}`` pushed over it and, with ``offset``, the gain of its map (else ``None``), the moved
    copies pushed in the same solver call as the cells.
    """
    if offset is not None and not float(offset) > 0:
        raise ValueError(f"offset={offset!r} must be positive (a fraction of the nearest-neighbour distance)")
    directions_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(len(course.times) + 1)[-1])
    pushes: Pushes = []
    for k in range(1, len(course.times)):
        cells = samples[k - 1][0]
        batch, length = cells, None
        if offset is not None:
            distance = _median_neighbour_distance(cells)
            if not distance > 0:
                raise ValueError(f"the cells of time {course.times[k - 1]:g} all coincide with a neighbour, so the "
                                 "offset has no scale; remove duplicated cells")
            directions = directions_rng.normal(size=cells.shape)
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            length = float(offset) * distance
            batch = np.concatenate([cells, cells + length * directions])
        positions, masses = model.transport(batch, course.times[k - 1 : k + 1])
        ends, n = positions[-1], len(cells)
        gain = None
        if length is not None:  # an offset was given
            separation = np.linalg.norm(ends[:n] - ends[n:], axis=1)
            gain = float(np.median(separation)) / length if np.isfinite(ends).all() else float("inf")
        pushes.append((ends[:n], masses[-1][:n], gain))
    return pushes


def horizon_history(model: Transporter, course: TimeCourse, *, offset: float = DEFAULT_OFFSET,
                    max_cells: int = DEFAULT_MAX_CELLS, seed: int = 0) -> dict[str, np.ndarray]:
    """The trust signals of a fit, as ``model.history`` stores them (the keys of :data:`HISTORY_KEYS`).

    ``horizon_times`` are the time points after the first; ``horizon_w1_first``,
    ``horizon_w1_previous``, ``horizon_mass_error`` and ``horizon_norm_ratio`` the columns of
    :func:`horizon` at those times, and ``interval_gain`` the gain of each interval
    (:func:`interval_gain`), one per time point after the first as well. The values are those of
    the two functions with the same arguments (up to the solver's tolerance), at one solver call
    per interval less: the one-interval pushes and the moved cells share it.
    """
    _check(model, course, max_cells)
    samples = _subsamples(course, max_cells, seed)
    pushes = _interval_pushes(model, course, samples, offset, seed)
    table = _table(model, course, samples, pushes)
    return {
        "horizon_times": table.time.to_numpy(),
        "horizon_w1_first": table.w1_first.to_numpy(),
        "horizon_w1_previous": table.w1_previous.to_numpy(),
        "horizon_mass_error": table.mass_error.to_numpy(),
        "horizon_norm_ratio": table.norm_ratio.to_numpy(),
        "interval_gain": np.array([gain for _, _, gain in pushes]),
    }
