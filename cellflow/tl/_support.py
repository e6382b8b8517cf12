"""Whether pushed cells stay on the data: the share of them that left every measured population.

A pushed cell at time ``t`` is *off the data* when it is farther from every measured cell of
the measured time point nearest to ``t`` than that population's own 99th-percentile
nearest-neighbour distance (the distance from each measured cell to its nearest other measured
cell, 99th percentile). An analysis that rests on many such cells reads the learned field where
no cell was measured and it was never trained; every analysis that integrates across intervals
records the share (:func:`off_data_share`) and warns (:class:`OffDataWarning`) above
:data:`OFF_DATA_WARNING`.

An analysis asked for a time before the first or after the last measured time point integrates
the field where no population constrains it at all: it warns with :class:`ExtrapolationWarning`,
saying how far beyond the measured range it goes, in the time unit of the labels and as a
multiple of the mean interval between the measured time points (:func:`warn_beyond_times`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

OFF_DATA_QUANTILE = 99.0  # percentile of a population's nearest-neighbour distances that bounds "on the data"
OFF_DATA_WARNING = 0.05  # share of pushed cells off the data above which an analysis warns


class OffDataWarning(UserWarning):
    """An analysis rests on pushed cells that left the measured data (filter it with ``warnings``)."""


class ExtrapolationWarning(UserWarning):
    """An analysis integrates the flow to a time outside the measured range (filter it with ``warnings``)."""


def warn_beyond_times(times, measured, analysis: str, unit: str = "", stacklevel: int = 3) -> None:
    """Warn with :class:`ExtrapolationWarning` when any of ``times`` lies outside the ``measured`` time points.

    Parameters
    ----------
    times
        The times asked for (one or several).
    measured
        The measured time points, increasing.
    analysis
        Its name, to begin the message with.
    unit
        The unit of the times (``"hours"``, ...), ``""`` when unknown.
    stacklevel
        As for :func:`warnings.warn`, counted from this function.
    """
    times = np.atleast_1d(np.asarray(times, dtype=float))
    measured = np.asarray(measured, dtype=float)
    first, last = float(measured[0]), float(measured[-1])
    tolerance = 1e-9 * max(1.0, abs(first), abs(last))
    before, after = first - times, times - last
    gap = np.maximum(before, after)
    k = int(np.argmax(gap))
    if gap[k] <= tolerance:
        return
    side, edge = ("after the last", last) if after[k] >= before[k] else ("before the first", first)
    units = f" {unit}" if unit else " time units"
    mean = (last - first) / max(len(measured) - 1, 1)
    warnings.warn(
        f"{analysis}: time {times[k]:g} lies {gap[k]:g}{units} {side} measured time {edge:g} "
        f"({gap[k] / mean:.2g} times the mean interval of {mean:g}{units} between the measured time points): "
        "there the flow is extrapolated, never fitted to measured cells; read the result as a guess",
        ExtrapolationWarning,
        stacklevel=stacklevel,
    )


class Support:
    """The measured populations of a time course, with a search tree and a distance bound per time point.

    Trees and bounds are built on first use of each time point only.

    Parameters
    ----------
    populations
        One ``(n_k, d)`` array of measured cells per time point.
    times
        The time points, increasing, one per population.
    """

    def __init__(self, populations: Sequence[np.ndarray], times: Sequence[float]):
        self.populations = list(populations)
        self.times = np.asarray(times, dtype=float)
        if len(self.populations) != len(self.times) or not len(self.times):
            raise ValueError(f"{len(self.populations)} populations for {len(self.times)} times; give one per time")
        self._trees: dict[int, object] = {}
        self._bounds: dict[int, float] = {}

    def _tree(self, k: int):
        from scipy.spatial import cKDTree

        if k not in self._trees:
            self._trees[k] = cKDTree(np.asarray(self.populations[k], dtype=np.float64))
        return self._trees[k]

    def bound(self, k: int) -> float:
        """The 99th percentile of the distance from each cell of population ``k`` to its nearest other cell."""
        if k not in self._bounds:
            cells = np.asarray(self.populations[k], dtype=np.float64)
            if len(cells) < 2:
                raise ValueError(f"the population at time {self.times[k]:g} has {len(cells)} cell(s); at least 2 "
                                 "are needed to measure how close its cells lie")
            distance, _ = self._tree(k).query(cells, k=2)
            self._bounds[k] = float(np.percentile(distance[:, 1], OFF_DATA_QUANTILE))
        return self._bounds[k]

    def nearest_time(self, times) -> np.ndarray:
        """Index of the measured time point nearest to each of ``times`` (the earlier one on a tie)."""
        times = np.atleast_1d(np.asarray(times, dtype=float))
        return np.abs(times[:, None] - self.times[None, :]).argmin(axis=1)

    def off_data(self, points: np.ndarray, times) -> np.ndarray:
        """Whether each of ``points`` ``(n, d)`` at ``times`` (one, or one per point) is off the data."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, self.populations[0].shape[1])
        nearest = np.broadcast_to(self.nearest_time(times), (len(points),))
        off = np.zeros(len(points), dtype=bool)
        for k in np.unique(nearest):
            rows = np.flatnonzero(nearest == k)
            distance, _ = self._tree(int(k)).query(points[rows], k=1)
            off[rows] = distance > self.bound(int(k))
        return off


def off_data_share(points, times, populations=None, population_times=None, *, support: Support | None = None) -> float:
    """The share of ``points`` that lie off the measured data (see the module's notes).

    Parameters
    ----------
    points
        ``(n, d)`` pushed positions.
    times
        Their time: one number, or one per point.
    populations, population_times
        The measured cells of each time point and those times (increasing).
    support
        A :class:`Support` of those populations, whose trees and bounds are reused, in place of
        ``populations`` and ``population_times``.

    Returns
    -------
    The share in ``[0, 1]``; 0 for no points.
    """
    if support is None:
        if populations is None or population_times is None:
            raise ValueError("pass the measured populations and their times, or support=")
        support = Support(populations, population_times)
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        return 0.0
    return float(support.off_data(points, times).mean())


def warn_off_data(share: float, analysis: str, stacklevel: int = 3) -> None:
    """Warn with :class:`OffDataWarning` when ``share`` of the cells ``analysis`` pushed left the data."""
    if share > OFF_DATA_WARNING:
        warnings.warn(
            f"{analysis}: {share:.0%} of the pushed cells left the data (each farther from every measured cell of the "
            f"nearest time point than {OFF_DATA_QUANTILE:g}% of those cells are from their nearest neighbour), above "
            f"{OFF_DATA_WARNING:.0%}: there the result reads the learned field where it was never fitted. Use "
            "across='chain' where the analysis offers it (the flow within single intervals only), or refit with "
            "rollout fitting (CellFlow(rollout=...)) so that long pushes stay on the measured populations",
            OffDataWarning,
            stacklevel=stacklevel,
        )
