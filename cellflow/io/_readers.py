"""Read an AnnData time course into time-ordered populations, without modifying it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._times import read_times
from .._units import rate_factor
from ..model import TimeCourse

# Cells farther than this many typical distances from the median of all cells are refused (see get_representation).
_FAR_CELL_RATIO = 1000.0
# Entries of a representation read, converted or checked at a time (float32 blocks of 4 MB).
_BLOCK_VALUES = 2**20


def parse_times(values: pd.Series, time_key: str, time_map: Mapping | None = None) -> np.ndarray:
    """Turn a column of time labels into floats.

    Numbers are taken as they are; strings or categories must hold exactly one number with
    nothing or a unit of time around it (``"day 2.5"``, ``"D3"``, ``"12h"``, ``"E10.5"``, ``"P7"``,
    ``"week 2"``; :mod:`cellflow._times` lists the units and how mixed units are converted)
    unless ``time_map`` maps each label to a number. Labels with other words (``"8C"``, cells per
    embryo; ``"stage 3"``) are refused. A ``-`` or ``+`` in a label is the number's sign only when no
    letter, digit or underscore directly precedes it: ``"day-1"`` and ``"D-3"`` are 1 and 3, while
    ``"-1.5"``, ``"t=-1"`` and ``"day -2"`` (a space before the sign) are negative. Two labels that
    read as the same number (``"day-1"`` and ``"day1"``) are refused: say what they mean with ``time_map``.

    Parameters
    ----------
    values
        The column, e.g. ``adata.obs[time_key]``.
    time_key
        Its name, for the error messages.
    time_map
        Optional mapping of every label to a number (stage names, cell counts).

    Returns
    -------
    One float per entry of ``values``, in its order (:func:`cellflow.io.read_times` also says how
    the labels were read).
    """
    return read_times(values, time_key, time_map)[0]


def _block_rows(n_cols: int) -> int:
    """Rows per block of :data:`_BLOCK_VALUES` entries, for a matrix of ``n_cols`` columns."""
    return max(1, _BLOCK_VALUES // max(n_cols, 1))


def _dense_rows(matrix, order: np.ndarray | None = None) -> np.ndarray:
    """A float32 ``(n, d)`` array of a dense, sparse, memory-mapped or backed matrix.

    The rows are read in blocks (``matrix[start:stop]``; a backed matrix reads only those rows
    from disk), and each block is densified and converted into one preallocated float32 array,
    so no dense or float64 copy of the whole matrix is made (sparse formats without row slicing,
    such as COO, are first converted to CSR). With ``order``, row ``i`` of the result is row
    ``order[i]`` of ``matrix``.
    """
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc"):
        matrix = matrix.tocsr()
    rows_of = matrix.iloc if isinstance(matrix, pd.DataFrame) else matrix
    n, d = matrix.shape
    out = np.empty((n, d), dtype=np.float32)
    where = None
    if order is not None:
        where = np.empty(n, dtype=np.intp)
        where[order] = np.arange(n)
    rows = _block_rows(d)
    for start in range(0, n, rows):
        block = rows_of[start : start + rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        out[slice(start, start + rows) if where is None else where[start : start + rows]] = block
    return out


def _first_cell(rows: np.ndarray, order: np.ndarray | None) -> tuple[int, int]:
    """Of the result rows ``rows`` (``order`` as in :func:`_dense_rows`), the one whose cell comes first in
    the AnnData: its position in ``rows`` and the AnnData row of its cell.
    """
    cells = rows if order is None else order[rows]
    position = int(np.argmin(cells))
    return position, int(cells[position])


def _refuse_far_cells(rep: np.ndarray, name: str, obs_names: pd.Index, order: np.ndarray | None) -> None:
    """Raise a ``ValueError`` naming the cells that lie too far out (rule in :func:`get_representation`)."""
    if rep.shape[0] == 0:
        return
    centre = np.median(rep[:: max(1, rep.shape[0] // 10_000)], axis=0).astype(np.float64)
    rows = _block_rows(rep.shape[1])
    distances = np.concatenate(
        [np.linalg.norm(rep[start : start + rows] - centre, axis=1) for start in range(0, rep.shape[0], rows)]
    )
    off_centre = distances[distances > 0]
    if off_centre.size == 0:
        return
    ratio = distances / np.median(off_centre)
    far = np.flatnonzero(ratio > _FAR_CELL_RATIO)
    if far.size:
        position, cell = _first_cell(far, order)
        raise ValueError(
            f"{far.size} cell(s) of the representation {name!r} lie more than {_FAR_CELL_RATIO:g} times as far "
            "from the coordinate-wise median of all cells as the typical cell "
            f"(first: {obs_names[cell]!r}, {ratio[far[position]]:.3g} times); "
            "remove them, or check that every coordinate of the representation is in the same unit"
        )


def get_representation(adata: AnnData, use_rep, order: np.ndarray | None = None) -> np.ndarray:
    """The representation ``use_rep`` as a dense ``(n_obs, d)`` float32 array.

    ``use_rep`` is an ``obsm`` key, ``"X"``, a layer name, or a matrix with one row per cell:
    dense, sparse, a numpy memmap, an h5py dataset or a backed matrix of AnnData. It is read in
    blocks of rows straight into the float32 result (:func:`_dense_rows`); nothing else of
    ``adata`` is read (``X`` only for ``use_rep="X"``). ``order`` (a permutation of the cells)
    puts row ``order[i]`` of the representation in row ``i`` of the result.

    It must have at least one column and finite values, and no cell may lie absurdly far from the
    others (one cell at 1e30 would set the scale of every velocity): a cell is refused when its
    distance from the centre, the coordinate-wise median of the cells (in data of 20,000 cells or
    more, of every k-th cell, 10,000 to 20,000 of them), exceeds 1000 times the median of that
    distance over the cells not on the centre. The shipped data sets stay below 5 times, so rare
    cell types and long trajectories pass.

    Parameters
    ----------
    adata
        The AnnData to read from; it is not changed.
    use_rep
        ``obsm`` key, ``"X"``, a layer name, or a matrix with one row per cell.
    order
        Optional permutation of the cells: row ``order[i]`` goes to row ``i``.

    Returns
    -------
    A dense float32 array of shape ``(n_obs, d)``.
    """
    if isinstance(use_rep, str):
        if use_rep == "X":
            source = adata.X
        elif use_rep in adata.obsm:
            source = adata.obsm[use_rep]
        elif use_rep in adata.layers:
            source = adata.layers[use_rep]
        else:
            hint = " (run scanpy.pp.pca first)" if use_rep == "X_pca" else ""
            raise KeyError(
                f"use_rep={use_rep!r} is neither 'X', an obsm key {list(adata.obsm.keys())} "
                f"nor a layer {list(adata.layers.keys())}{hint}"
            )
    else:
        source = use_rep if hasattr(use_rep, "shape") else np.asarray(use_rep)
    shape = tuple(source.shape)
    if len(shape) != 2 or shape[0] != adata.n_obs:
        raise ValueError(
            f"the representation has shape {shape}, but the AnnData has {adata.n_obs} cells; "
            "it needs one row per cell"
        )
    name = use_rep if isinstance(use_rep, str) else "array"
    if shape[1] == 0:
        raise ValueError(
            f"the representation {name!r} has 0 columns (shape {shape}); "
            "compute it with at least one component (e.g. scanpy.pp.pca) or choose another use_rep"
        )
    rep = _dense_rows(source, order)
    rows = _block_rows(shape[1])
    bad = np.zeros(shape[0], dtype=bool)
    for start in range(0, shape[0], rows):
        bad[start : start + rows] = ~np.isfinite(rep[start : start + rows]).all(axis=1)
    if bad.any():
        cell = _first_cell(np.flatnonzero(bad), order)[1]
        raise ValueError(
            f"the representation {name!r} has NaN or inf values in {int(bad.sum())} cells "
            f"(first: {adata.obs_names[cell]!r}); remove or impute them first"
        )
    _refuse_far_cells(rep, name, adata.obs_names, order)
    return rep


def _per_cell(adata: AnnData, key: str | None, argument: str, positive: bool) -> np.ndarray | None:
    """A finite numeric ``obs`` column (positive if asked), or ``None`` when ``key`` is ``None``."""
    if key is None:
        return None
    if key not in adata.obs:
        raise KeyError(f"{argument}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")
    values = adata.obs[key].to_numpy(dtype=float)
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    if bad.any():
        first = adata.obs_names[np.flatnonzero(bad)[0]]
        need = "positive and finite" if positive else "finite"
        raise ValueError(f"obs[{key!r}] must be {need} for every cell (first offending cell: {first!r})")
    return values


def _population_sizes(adata: AnnData, population_size, times: np.ndarray, unique: np.ndarray,
                      time_key: str, time_map: Mapping | None) -> np.ndarray:
    """Each time point's known size relative to the first (``population_size`` of :func:`read_time_course`)."""
    if isinstance(population_size, str):
        values = _per_cell(adata, population_size, "population_size", positive=True)
        assert values is not None
        sizes = np.array([values[times == t][0] for t in unique])
        for t, size in zip(unique, sizes):
            if not np.allclose(values[times == t], size):
                raise ValueError(f"obs[{population_size!r}] must hold one population size per time point, "
                                 f"but differs between the cells of time point {t:g}")
    else:
        if not isinstance(population_size, Mapping):
            raise TypeError("population_size must be a mapping {time: size} or the name of an obs column, "
                            f"not {type(population_size).__name__}")
        mapped = {str(k): float(v) for k, v in (time_map or {}).items()}
        lookup = {mapped[str(k)] if str(k) in mapped else float(parse_times(pd.Series([k]), "population_size")[0]): v
                  for k, v in population_size.items()}
        missing = [t for t in unique.tolist() if not any(np.isclose(t, k) for k in lookup)]
        if missing:
            raise ValueError(f"population_size has no size for the time point(s) {missing} of obs[{time_key!r}]; "
                             f"give one for every time point ({unique.tolist()})")
        sizes = np.array([float(next(v for k, v in lookup.items() if np.isclose(t, k))) for t in unique])
        if not (np.isfinite(sizes).all() and (sizes > 0).all()):
            raise ValueError(f"population_size must be positive and finite for every time point, got {sizes.tolist()}")
    return sizes / sizes[0]


def read_time_course(
    adata: AnnData,
    time_key: str = "time",
    use_rep="X_pca",
    weight_key: str | None = None,
    time_map: Mapping | None = None,
    growth_key: str | None = None,
    *,
    population_size: Mapping | str | None = None,
    time_unit: str | None = None,
    growth_unit: str | None = None,
) -> TimeCourse:
    """Group the cells of ``adata`` by time point.

    Parameters
    ----------
    adata
        The time course; it is read, never modified. Only ``obs`` and ``use_rep`` are read, the
        latter in blocks of rows (a backed ``X``, a memmap or an h5py dataset stays on disk).
    time_key
        ``obs`` column with the time of each cell: numbers, or labels holding one number and
        nothing or a unit of time around it (see :func:`parse_times`).
    use_rep
        ``obsm`` key, ``"X"``, a layer, or an ``(n_obs, d)`` matrix (see :func:`get_representation`).
    weight_key
        Optional ``obs`` column of positive per-cell weights (mass).
    time_map
        Optional mapping from time labels (e.g. stage names, cells per embryo) to numbers.
    growth_key
        Optional ``obs`` column of prior growth rates (log growth per unit time), e.g. from
        :func:`cellflow.pp.score_growth`.
    population_size
        Optional known population size of each time point, in any unit (cells per embryo, flask
        counts, a growth curve): a mapping ``{time: size}`` (times as in ``time_key``, labels or
        numbers), or an ``obs`` column holding each cell's time point's size. Only the sizes
        relative to the first time point matter. Each cell of time point ``k`` (``n_k`` cells) then
        carries the mass ``(size_k / size_0) * n_0 / n_k``, times its ``weight_key`` weight divided by
        the mean weight of its time point (the weights share the time point's mass among its cells),
        so that the unbalanced couplings, the learned growth and the predicted population sizes
        follow the sizes, not how many cells were sequenced.
    time_unit, growth_unit
        The unit of the time column and that of the rates in ``growth_key`` (``"hour"``, ``"day"``,
        ``"week"``, ...). Give both when they differ: the rates are converted into the time
        column's unit (a rate per day is divided by 24 for a time column in hours). Without
        ``growth_unit`` the rates are taken as per unit of the time column.

    Returns
    -------
    The populations, sorted by time: float32 slices of one array holding the representation
    once, the cells of each time point in their AnnData order; ``time_reading`` says how the
    labels were read (:class:`cellflow.io.TimeReading`).
    """
    if time_key not in adata.obs:
        raise KeyError(
            f"time_key={time_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); "
            "name the column that holds each cell's time point"
        )
    times, reading = read_times(adata.obs[time_key], time_key, time_map)
    if not np.isfinite(times).all():
        first = adata.obs_names[np.flatnonzero(~np.isfinite(times))[0]]
        raise ValueError(f"obs[{time_key!r}] has missing or infinite times (first cell: {first!r}); drop those cells")
    unique, counts = np.unique(times, return_counts=True)
    if unique.size < 2:
        raise ValueError(
            f"obs[{time_key!r}] holds {unique.size} time point(s) ({unique.tolist()}); "
            "at least 2 are needed to learn dynamics"
        )
    if counts.min() < 2:
        t = unique[np.argmin(counts)]
        raise ValueError(
            f"time point {t:g} of obs[{time_key!r}] has {counts.min()} cell; each time point needs "
            "at least 2 cells (drop it or merge it with a neighbour)"
        )
    weights_all = _per_cell(adata, weight_key, "weight_key", positive=True)
    growth_all = _per_cell(adata, growth_key, "growth_key", positive=False)
    if growth_unit is not None:
        if time_unit is None:
            raise ValueError(f"growth_unit={growth_unit!r} needs time_unit=, the unit of obs[{time_key!r}], "
                             "to convert the prior growth rates into it")
        factor = rate_factor(growth_unit, time_unit)
        growth_all = None if growth_all is None else growth_all * factor
    # cells sorted by time (in their AnnData order within a time point): each population is a
    # slice of the one float32 array the representation is read into
    order = np.argsort(times, kind="stable")
    rep = get_representation(adata, use_rep, order)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    slices = [slice(bounds[k], bounds[k + 1]) for k in range(unique.size)]
    indices = [order[s] for s in slices]
    populations = [rep[s] for s in slices]
    weights = None if weights_all is None else [weights_all[idx] for idx in indices]
    growth = None if growth_all is None else [growth_all[idx] for idx in indices]
    sizes = None
    if population_size is not None:
        sizes = _population_sizes(adata, population_size, times, unique, time_key, time_map)
        shares = [np.ones(n) for n in counts] if weights is None else [w / w.mean() for w in weights]
        weights = [share * size * counts[0] / n for share, size, n in zip(shares, sizes, counts)]
    return TimeCourse(
        times=unique.astype(float),
        populations=populations,
        indices=indices,
        weights=weights,
        growth=growth,
        sizes=sizes,
        growth_key=growth_key,
        use_rep=use_rep if isinstance(use_rep, str) else "array",
        time_key=time_key,
        obs_times=times,
        time_reading=reading,
    )
