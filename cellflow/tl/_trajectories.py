"""Paths of chosen cells through the fitted flow, forward and backward from their own time point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from ..model import CellFlow
from ._fitted import _fitted
from ._support import warn_beyond_times, warn_off_data


@dataclass(repr=False)
class Trajectories:
    """Paths of chosen cells through the flow.

    Attributes
    ----------
    cells
        ``obs_names`` of the cells, in the order asked for.
    start_times
        Each cell's own measured time, where its path starts (mass one there).
    times
        The time grid, as given.
    positions
        ``(len(times), n_cells, d)`` positions in the representation ``use_rep``.
    masses
        ``(len(times), n_cells)`` relative masses (one at each cell's start time; always one for
        methods without growth).
    use_rep
        The representation of ``positions``.
    off_data
        ``(len(times), n_cells)``: whether each position left the data (:mod:`cellflow.tl`;
        False at each cell's own start time).
    """

    cells: pd.Index
    start_times: np.ndarray
    times: np.ndarray
    positions: np.ndarray
    masses: np.ndarray
    use_rep: str
    off_data: np.ndarray | None = None

    @property
    def off_data_share(self) -> float:
        """The share of the pushed positions (every time but each cell's own) that left the data."""
        pushed = ~np.isclose(self.times[:, None], self.start_times[None, :])
        return float(self.off_data[pushed].mean()) if pushed.any() else 0.0

    def __repr__(self) -> str:
        return f"Trajectories({len(self.cells)} cells x {len(self.times)} times in {self.use_rep!r})"

    def to_frame(self) -> pd.DataFrame:
        """One row per cell and time: ``cell``, ``start_time``, ``time``, ``mass`` and one column per dimension."""
        n_times, n_cells, n_dims = self.positions.shape
        prefix = self.use_rep[2:] if self.use_rep.startswith("X_") else self.use_rep
        frame = pd.DataFrame(
            {
                "cell": np.tile(np.asarray(self.cells), n_times),
                "start_time": np.tile(self.start_times, n_times),
                "time": np.repeat(self.times, n_cells),
                "mass": self.masses.ravel(),
            }
        )
        coords = pd.DataFrame(
            self.positions.reshape(n_times * n_cells, n_dims), columns=[f"{prefix}{i + 1}" for i in range(n_dims)]
        )
        return pd.concat([frame, coords], axis=1)


def _rows_of(adata: AnnData, cells) -> np.ndarray:
    """Row positions of cells given as obs names or integer positions."""
    cells = [cells] if isinstance(cells, (str, int, np.integer)) else list(cells)
    if not cells:
        raise ValueError("cells is empty: pass obs names or integer positions of the cells to follow")
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in cells):
        rows = np.asarray(cells, dtype=np.int64)
        bad = rows[(rows < -adata.n_obs) | (rows >= adata.n_obs)]
        if bad.size:
            raise IndexError(f"cell position {int(bad[0])} is out of range for {adata.n_obs} cells")
        return rows % adata.n_obs
    names = pd.Index([str(c) for c in cells])
    rows = adata.obs_names.get_indexer(names)
    if (rows < 0).any():
        missing = list(names[rows < 0][:3])
        raise KeyError(f"cells {missing} are not in adata.obs_names; pass obs names or integer positions")
    return rows


def trajectories(
    adata: AnnData,
    cells,
    times: Sequence[float],
    *,
    key: str = "cellflow",
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
) -> Trajectories:
    """Follow chosen cells through the flow over a grid of times.

    Each cell starts where it was measured, at its own time point, and is integrated forward to
    the grid times after it and backward to those before it, so cells of different time points
    can be followed together. Nothing is written into ``adata``.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    cells
        Obs names, or integer positions, of the cells to follow (one or several).
    times
        Times of the grid (any real times, in any order; the output keeps this order).
    key, model, solver, step_size
        As for :func:`fate`.

    Returns
    -------
    A :class:`Trajectories` with positions ``(len(times), n_cells, d)`` and masses
    ``(len(times), n_cells)``; :meth:`Trajectories.to_frame` gives a tidy table, and
    :attr:`Trajectories.off_data_share` the share of pushed positions that left the data (an
    :class:`cellflow.tl._support.OffDataWarning` above 5%).
    """
    grid = np.atleast_1d(np.asarray(times, dtype=float))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"times must be a non-empty list of finite numbers, got {times!r}")
    fitted = _fitted(adata, key, model)
    warn_beyond_times(grid, fitted.course.times, "trajectories", fitted.course.time_unit)
    paths = _follow(adata, fitted, _rows_of(adata, cells), grid, solver, step_size)
    warn_off_data(paths.off_data_share, "trajectories")
    return paths


def _follow(adata: AnnData, fitted, rows: np.ndarray, grid: np.ndarray, solver: str, step_size) -> Trajectories:
    """The paths of the cells ``rows`` over ``grid`` (see :func:`trajectories`), without warning."""
    starts = fitted.course.obs_times[rows]
    positions = np.empty((grid.size, rows.size, fitted.rep.shape[1]))
    masses = np.ones((grid.size, rows.size))
    for start in np.unique(starts):
        members = np.flatnonzero(starts == start)
        x = fitted.rep[rows[members]]
        at_start = np.isclose(grid, start)
        positions[np.ix_(at_start, members)] = x
        for side in (grid > start, grid < start):
            side &= ~at_start
            if not side.any():
                continue
            targets = np.unique(grid[side])
            if targets[0] < start:
                targets = targets[::-1]  # backward in time: decreasing
            path, mass = fitted.model.transport(x, np.r_[start, targets], solver=solver, step_size=step_size)
            for t, p, m in zip(targets, path[1:], mass[1:]):
                hits = np.flatnonzero(side & (grid == t))
                positions[np.ix_(hits, members)] = p
                masses[np.ix_(hits, members)] = m
    off = np.array([fitted.support.off_data(p, t) for t, p in zip(grid, positions)]).reshape(masses.shape)
    off &= ~np.isclose(grid[:, None], starts[None, :])
    return Trajectories(
        cells=adata.obs_names[rows].copy(),
        start_times=starts.astype(float),
        times=grid,
        positions=positions,
        masses=masses,
        use_rep=fitted.use_rep,
        off_data=off,
    )
