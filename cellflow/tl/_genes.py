"""Genes along the flow: mean expression over continuous time.

The expression of a pushed cell is read off the measured cells near it (``expression="neighbors"``,
the default; the rule of :func:`cellflow.tl.interpolate`), so a gene that changes at a fixed position
in the representation still changes along the path, and genes outside the representation are
read as well as those in it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import choice, integer, number
from ..model import CellFlow
from . import _keys as keys
from ._expression import expression_matrix, neighbor_readout, select
from ._fitted import _fitted
from ._support import warn_beyond_times, warn_off_data
from ._trajectories import _follow

_CELLS_PER_CHUNK = 2048  # cells followed together: bounds the (times, cells, dims) array of their paths


# -- expression ------------------------------------------------------------------------------
def _gene_columns(adata: AnnData, genes, argument: str = "genes") -> tuple[list[str], np.ndarray]:
    """Names and column positions of ``genes`` (one name or several) in ``var_names``."""
    names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not names:
        raise ValueError(f"{argument} is empty: name at least one gene of adata.var_names")
    columns = adata.var_names.get_indexer(pd.Index(names))
    if (columns < 0).any():
        missing = [n for n, c in zip(names, columns) if c < 0]
        raise KeyError(
            f"{argument}: {missing[:5]} {'is' if len(missing) == 1 else 'are'} not in adata.var_names "
            f"(e.g. {list(adata.var_names[:5])}); use the gene names of var_names"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} names a gene more than once: {names}")
    return names, columns


# -- the cells followed ----------------------------------------------------------------------
def _fate_column(adata: AnnData, fate_key: str, fate) -> np.ndarray:
    """One column of the fate table in ``obsm[fate_key]`` as floats (NaN: no probability)."""
    if fate_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{fate_key!r}] does not exist: run cellflow.tl.fate first (or pass fate_key= the "
            f"obsm key of its table; obsm keys: {list(adata.obsm.keys())})"
        )
    table = adata.obsm[fate_key]
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"adata.obsm[{fate_key!r}] is not a table with one column per fate; run cellflow.tl.fate")
    if fate not in table.columns:
        raise KeyError(f"fate={fate!r} is not a column of adata.obsm[{fate_key!r}] (fates: {list(table.columns)})")
    return table[fate].to_numpy(dtype=float)


def _at_time(obs_times: np.ndarray, rows: np.ndarray, time, measured: np.ndarray, what: str) -> np.ndarray:
    """``rows`` restricted to the cells of one time point: ``time``, or the only one they have."""
    present = np.unique(obs_times[rows])
    if time is None:
        if present.size > 1:
            raise ValueError(
                f"{what} has cells at several time points {present.tolist()}; pass time= the one to follow"
            )
        return rows
    time = number("time", time)
    if not np.isclose(measured, time).any():
        raise ValueError(f"time={time!r} is not a measured time point; measured: {measured.tolist()}")
    rows = rows[np.isclose(obs_times[rows], time)]
    if rows.size == 0:
        raise ValueError(f"{what} has no cell at time={time:g}; its cells are at {present.tolist()}")
    return rows


def _followed_cells(adata, fitted, groupby, group, fate_key, fate, time) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows of the cells to follow, their starting weights, and a label saying which cells they are."""
    by_group, by_fate = groupby is not None or group is not None, fate is not None
    if by_group == by_fate:
        raise ValueError(
            "follow either a group (groupby= an obs column and group= one of its labels) or a fate "
            "(fate= a column of the table of cellflow.tl.fate), and not both"
        )
    obs_times, measured = fitted.course.obs_times, fitted.course.times
    if by_fate:
        probability = _fate_column(adata, fate_key, fate)
        rows = np.flatnonzero(np.isfinite(probability) & (probability > 0))
        if rows.size == 0:
            raise ValueError(f"no cell has a positive probability of fate={fate!r} in adata.obsm[{fate_key!r}]")
        rows = _at_time(obs_times, rows, time, measured, f"the fate table {fate_key!r}")
        return rows, probability[rows], f"fate {fate}"
    if groupby is None or group is None:
        raise ValueError(f"pass both groupby= (an obs column) and group= (one of its labels); got {groupby=}, {group=}")
    if groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")
    labels = adata.obs[groupby].astype(str).to_numpy()
    rows = np.flatnonzero(labels == str(group))
    if rows.size == 0:
        raise ValueError(f"group={group!r} is not a label of obs[{groupby!r}] (labels: {sorted(set(labels))[:10]})")
    rows = _at_time(obs_times, rows, time, measured, f"group {group!r} of obs[{groupby!r}]")
    return rows, np.ones(rows.size), f"{groupby} {group} at {obs_times[rows[0]]:g}"


def _time_grid(times, n_points, measured: np.ndarray) -> np.ndarray:
    """``times`` sorted, or ``n_points`` even steps from the first to the last measured time plus the measured ones."""
    if times is None:
        n_points = integer("n_points", n_points, minimum=2)
        even = np.linspace(measured[0], measured[-1], n_points)
        tolerance = 1e-9 * (measured[-1] - measured[0])
        even = even[np.abs(even[:, None] - measured[None, :]).min(axis=1) > tolerance]
        return np.union1d(even, measured)
    grid = np.atleast_1d(np.asarray(times, dtype=float))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"times must be a non-empty list of finite numbers, got {times!r}")
    return np.unique(grid)


def gene_trends(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    groupby: str | None = None,
    group=None,
    fate_key: str | None = None,
    fate=None,
    time: float | None = None,
    times: Sequence[float] | None = None,
    n_points: int = 50,
    key: str = "cellflow",
    layer: str | None = None,
    expression: str = "neighbors",
    n_neighbors: int = 15,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
) -> pd.DataFrame:
    """Mean expression of genes along the paths of a group of cells, or of a fate, over continuous time.

    The chosen cells are followed forward and backward through the flow from their own time
    point (:func:`cellflow.tl.trajectories`), each weighted by its mass (growth of unbalanced
    methods) and, for a fate, by its probability of that fate. At every time of the grid the
    expression of each pushed cell is read off as for :func:`cellflow.tl.interpolate`: at the
    measured time points around that time, the neighbour-weighted mean expression of the real
    cells nearest to where its path passes, blended linearly in time between them. Nothing is
    written into ``adata``.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    genes
        One gene or several, names of ``var_names``.
    groupby, group
        Follow the cells whose ``obs[groupby]`` is ``group``.
    fate_key, fate
        Or follow the cells with a probability of ``fate``, a column of the table that
        :func:`cellflow.tl.fate` wrote to ``obsm[fate_key]`` (default ``"{key}_fate"``), each
        weighted by that probability.
    time
        The time point of the cells to follow, needed when they span several.
    times
        Times of the grid; default ``n_points`` even steps from the first to the last measured
        time point, plus the measured time points.
    key
        ``key_added`` of the fit.
    layer
        Layer of expression to read; default ``X``.
    expression
        ``"neighbors"`` (the rule above; the old spelling ``"neighbours"`` still works, with a
        ``FutureWarning``, for one release) or ``"pca"``: the linear reconstruction
        ``mean + position @ varm["PCs"].T`` of a fit in ``use_rep="X_pca"`` (``mean``: the gene's
        mean over all cells, as scanpy centres before its PCA); exact only for genes the PCs
        describe, zero loadings give a flat line.
    n_neighbors
        Real cells per reading.
    model, solver, step_size
        As for :func:`cellflow.tl.fate`.

    Returns
    -------
    One row per gene and grid time: ``gene``, ``time``, ``mean`` and ``std`` (mass-weighted mean
    and standard deviation over the followed cells; a reading is itself an average of
    neighbours, so ``std`` is the spread between paths, smaller than that between cells),
    ``mass`` (the summed weight of the followed cells) and ``measured`` (whether the time is a
    measured time point). ``attrs["cells"]`` says which cells were followed, ``attrs["off_data_share"]``
    the share of their pushed positions that left the data (:mod:`cellflow.tl`; an
    :class:`cellflow.tl._support.OffDataWarning` above 5%).
    """
    if expression == "neighbours":
        warnings.warn('gene_trends(): expression="neighbours" is renamed expression="neighbors"; the old spelling '
                      "still works in this release but will be removed in the next one", FutureWarning, stacklevel=2)
        expression = "neighbors"
    expression = choice("expression", expression, ["neighbors", "pca"])
    n_neighbors = integer("n_neighbors", n_neighbors)
    names, columns = _gene_columns(adata, genes)
    matrix = expression_matrix(adata, layer)
    fitted = _fitted(adata, key, model)
    course = fitted.course
    rows, start_weights, label = _followed_cells(
        adata, fitted, groupby, group, fate_key or f"{key}_fate", fate, time
    )
    grid = _time_grid(times, n_points, course.times)
    warn_beyond_times(grid, course.times, "gene_trends", course.time_unit)
    if expression == "pca":
        loadings = keys.pca_loadings(adata, fitted.use_rep, course.n_dims)
        if loadings is None:
            raise ValueError(
                f'expression="pca" needs a fit in use_rep="X_pca" and adata.varm["PCs"]; this fit used '
                f'use_rep={fitted.use_rep!r}{"" if "PCs" in adata.varm else " and varm has no PCs"}: use '
                'expression="neighbors"'
            )
        loadings = loadings[columns].astype(np.float64)
        gene_means = np.asarray(select(matrix, np.arange(adata.n_obs), columns).mean(axis=0)).ravel()
    else:
        reference = [select(matrix, cells, columns) for cells in course.indices]

    # the paths are followed to the measured time points too, where the neighbours are read
    follow_grid = np.union1d(grid, course.times) if expression == "neighbors" else grid
    on_grid, at_measured = np.searchsorted(follow_grid, grid), np.searchsorted(follow_grid, course.times)
    mass, n_off, n_pushed = np.zeros(grid.size), 0, 0
    first, second = np.zeros((grid.size, len(names))), np.zeros((grid.size, len(names)))
    for start in range(0, rows.size, _CELLS_PER_CHUNK):
        chunk = slice(start, start + _CELLS_PER_CHUNK)
        paths = _follow(adata, fitted, rows[chunk], follow_grid, solver, step_size)
        pushed = ~np.isclose(grid[:, None], paths.start_times[None, :])
        off_data = paths.off_data[on_grid]
        n_off, n_pushed = n_off + int(off_data[pushed].sum()), n_pushed + int(pushed.sum())
        weights = paths.masses[on_grid] * start_weights[chunk]
        if expression == "pca":
            readout = [p @ loadings.T + gene_means for p in paths.positions]
        else:
            readout = neighbor_readout(course, paths.positions[at_measured], grid, reference, n_neighbors)
        for i, values in enumerate(readout):
            mass[i] += weights[i].sum()
            first[i] += weights[i] @ values
            second[i] += weights[i] @ values**2
    mean = first / mass[:, None]
    std = np.sqrt(np.maximum(second / mass[:, None] - mean**2, 0.0))
    frame = pd.DataFrame(
        {
            "gene": np.repeat(names, grid.size),
            "time": np.tile(grid, len(names)),
            "mean": mean.T.ravel(),
            "std": std.T.ravel(),
            "mass": np.tile(mass, len(names)),
            "measured": np.tile(np.isclose(grid[:, None], course.times[None, :]).any(axis=1), len(names)),
        }
    )
    frame.attrs["cells"] = label
    frame.attrs["off_data_share"] = n_off / max(n_pushed, 1)
    warn_off_data(frame.attrs["off_data_share"], "gene_trends")
    return frame
