"""What comes after the velocity field: fates, ancestors, group transitions and cell paths.

Every function here moves real cells through a fitted flow (with their mass, for methods that
learn growth) and reads off where they land by their nearest real neighbours.

Neighbour weights, used throughout: a pushed cell is compared with the ``n_neighbors`` nearest
real cells of the time point it was pushed to, and each neighbour gets the Gaussian weight
``exp(-d**2 / (2 h**2))`` of its distance ``d``, with ``h`` the median distance of that cell's
``n_neighbors`` neighbours; the weights of a pushed cell sum to one.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import keys
from ._checks import integer, number
from ._utils import copy_option, progress_bar
from .model import CellFlow
from .readers import TimeCourse, read_time_course

_CHUNK = 8192  # cells pushed and matched together; bounds memory and paces the progress bar


# -- shared pieces ---------------------------------------------------------------------------
@dataclass
class _Fitted:
    """What a fit left in ``adata``: the model, the time course it read, the representation."""

    model: CellFlow
    course: TimeCourse
    n_obs: int
    use_rep: str
    time_key: str

    @functools.cached_property
    def rep(self) -> np.ndarray:
        """The representation of every cell in the AnnData's row order (built on first use only)."""
        return _representation(self.course, self.n_obs)


def _representation(course: TimeCourse, n_obs: int) -> np.ndarray:
    """The representation of every cell, in the AnnData's row order (every cell has a time point)."""
    rep = np.empty((n_obs, course.n_dims), dtype=np.float32)
    for rows, cells in zip(course.indices, course.populations):
        rep[rows] = cells
    return rep


def _stored_model(adata: AnnData, key: str, device: str = "auto") -> CellFlow:
    """The model that :func:`cellflow.tl.fit` stored in ``adata.uns[key]``; errors name that entry."""
    state = keys.fit_state(adata, key)
    try:
        return CellFlow.from_dict(state, device=device)
    except ValueError as err:
        raise ValueError(f"adata.uns[{key!r}]: {err}") from err


def _fitted(adata: AnnData, key: str, model: CellFlow | None) -> _Fitted:
    """Read back the fit stored in ``adata.uns[key]``, with ``model`` in place of the stored one if given."""
    state = keys.fit_state(adata, key)
    use_rep, time_key = str(state["use_rep"]), str(state["time_key"])
    course = read_time_course(adata, time_key, use_rep, time_map=state.get("time_map"))
    whose = "the model given" if model is not None else f"the model of adata.uns[{key!r}]"
    model = model if model is not None else _stored_model(adata, key)
    if course.n_dims != model.center.size:
        raise ValueError(
            f"use_rep={use_rep!r} has {course.n_dims} columns now, but {whose} was fitted on "
            f"{model.center.size}: the representation changed after fitting; fit again with cellflow.tl.fit "
            "(or restore the representation)"
        )
    return _Fitted(model, course, adata.n_obs, use_rep, time_key)


def _group_codes(
    adata: AnnData, groupby: str, rows: np.ndarray, name: str = "groupby"
) -> tuple[np.ndarray, list[str]]:
    """Integer group of each row (-1 where the label is missing) and the group names present;
    errors name the argument ``name``."""
    if groupby not in adata.obs:
        raise KeyError(
            f"{name}={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); "
            "name the column with the cell groups (e.g. cell types or clusters)"
        )
    labels = adata.obs[groupby].iloc[rows]
    present = labels.dropna()
    if isinstance(labels.dtype, pd.CategoricalDtype):
        seen = set(present)
        names = [c for c in labels.cat.categories if c in seen]
    else:
        names = sorted(pd.unique(present), key=str)
    codes = pd.Categorical(labels.to_numpy(), categories=names).codes.astype(np.int64)  # -1: no label
    return codes, [str(n) for n in names]


def neighbour_weights(points: np.ndarray, reference: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """The nearest reference cells of each point and their Gaussian weights.

    Parameters
    ----------
    points
        ``(n, d)`` query positions (e.g. pushed cells).
    reference
        ``(m, d)`` real cells.
    n_neighbors
        How many reference cells to use per point (at most ``m``).

    Returns
    -------
    Indices into ``reference`` ``(n, k)`` and weights ``(n, k)`` whose rows sum to one (see the
    module's notes for the kernel).
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(n_neighbors, len(reference)))
    if k < 1:
        raise ValueError("there are no reference cells to match the pushed cells with")
    distance, index = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(points)
    width = np.median(distance, axis=1, keepdims=True)
    width = np.where(width > 0, width, np.maximum(distance.max(axis=1, keepdims=True), 1e-12))
    # subtracting the nearest distance changes nothing after normalising, but avoids underflow
    logits = -(distance**2 - distance[:, :1] ** 2) / (2 * width**2)
    weights = np.exp(logits)
    return index, weights / weights.sum(axis=1, keepdims=True)


def _push_and_match(
    fitted: _Fitted,
    sources: np.ndarray,
    t_from: float,
    t_to: float,
    reference: np.ndarray,
    n_neighbors: int,
    solver: str,
    step_size: float | None,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Push ``sources`` (rows of the representation) and match them with ``reference`` rows."""
    ref_points = fitted.rep[reference]
    indices, weights, masses = [], [], []
    bar = progress_bar(len(sources), desc, progress)
    for start in range(0, len(sources), _CHUNK):
        rows = sources[start : start + _CHUNK]
        pushed, mass = fitted.model.push(
            fitted.rep[rows], float(t_from), float(t_to), return_mass=True, method=solver, step_size=step_size
        )
        index, weight = neighbour_weights(pushed, ref_points, n_neighbors)
        indices.append(index)
        weights.append(weight)
        masses.append(mass)
        bar.update(len(rows))
    bar.close()
    return np.concatenate(indices), np.concatenate(weights), np.concatenate(masses)


def _soft_labels(index: np.ndarray, weights: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per pushed cell, the summed weight of its neighbours in each group."""
    probs = np.zeros((len(index), n_groups))
    rows = np.repeat(np.arange(len(index)), index.shape[1])
    np.add.at(probs, (rows, codes[index].ravel()), weights.ravel())
    return np.minimum(probs, 1.0)  # a sum of normalised weights may round to just above one


def _checked_times(earlier, later, earlier_name: str, later_name: str, other: str) -> tuple[float, float]:
    """Two finite times, ``earlier < later``, else a ``ValueError`` naming the arguments."""
    earlier, later = number(earlier_name, earlier), number(later_name, later)
    if not earlier < later:
        raise ValueError(
            f"{earlier_name}={earlier!r} must be earlier than {later_name}={later!r}; "
            f"for the other direction use cellflow.tl.{other}"
        )
    return earlier, later


def _label_probabilities(
    adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of the cells of ``t_start`` and their probability of each group of ``t_end`` (the names)."""
    course = fitted.course
    sources = course.indices[course.index_of(t_start)]
    targets = course.indices[course.index_of(t_end)]
    codes, groups = _group_codes(adata, groupby, targets)
    labelled = codes >= 0
    if not labelled.any():
        raise ValueError(f"no cell at time {t_end:g} has a label in obs[{groupby!r}]; label them first")
    index, weights, _ = _push_and_match(
        fitted, sources, t_start, t_end, targets[labelled], n_neighbors, solver, step_size, progress, desc
    )
    return sources, _soft_labels(index, weights, codes[labelled], len(groups)), groups


def _group_probabilities(
    adata, key, key_added, overwrite, model, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc
) -> pd.DataFrame:
    """Per cell of ``t_start``, the probability of each group of ``t_end``, written to ``obsm[key_added]``,
    the most likely group to ``obs[f"{key_added}_label"]`` and the two times (``from_time``: the cells',
    ``to_time``: the groups') with ``groupby`` to ``uns[f"{key_added}_params"]``."""
    n_neighbors = integer("n_neighbors", n_neighbors)
    fitted = _fitted(adata, key, model)
    written = [f"obsm/{key_added}", f"obs/{key_added}_label", f"uns/{key_added}_params"]
    keys.claim(adata, key, written, overwrite)
    sources, probs, groups = _label_probabilities(
        adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc
    )
    table = pd.DataFrame(np.nan, index=adata.obs_names.copy(), columns=pd.Index(groups, dtype=object))
    table.iloc[sources] = probs
    codes = np.full(adata.n_obs, -1)
    codes[sources] = probs.argmax(axis=1)
    adata.obsm[key_added] = table
    adata.obs[f"{key_added}_label"] = pd.Categorical.from_codes(codes, categories=groups)
    adata.uns[f"{key_added}_params"] = {"from_time": t_start, "to_time": t_end, "groupby": groupby}
    keys.record(adata, key, written)
    return table


# -- public functions ------------------------------------------------------------------------
@copy_option
def fate(
    adata: AnnData,
    from_time: float,
    to_time: float,
    groupby: str = "cell_type",
    *,
    key: str = "cellflow",
    n_neighbors: int = 15,
    key_added: str | None = None,
    overwrite: bool = False,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
) -> pd.DataFrame | AnnData:
    """Where each cell of ``from_time`` ends up at ``to_time``, as probabilities over groups.

    Each cell of ``from_time`` is pushed through the flow to ``to_time`` and compared with the
    real cells measured there: its probability of group ``B`` is the summed neighbour weight
    (see :mod:`cellflow.analysis`) of its ``n_neighbors`` nearest real cells that belong to
    ``B``. A cell's probabilities sum to one; its mass (growth of unbalanced methods) does not
    change them, but weights it in :func:`transitions`.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    from_time, to_time
        Measured time points, ``from_time < to_time`` (for the reverse, see :func:`ancestors`).
    groupby
        ``obs`` column of groups (cell types, clusters). Cells of ``to_time`` without a label
        are not used as neighbours.
    key
        ``key_added`` of the fit.
    n_neighbors
        Real cells per pushed cell.
    key_added
        ``obsm`` key of the probabilities; default ``"{key}_fate"``. The most likely group goes to
        the categorical ``obs[f"{key_added}_label"]`` (NaN for cells not at ``from_time``), the times
        and ``groupby`` to ``uns[f"{key_added}_params"]`` (read by :func:`cellflow.pl.fate`). All
        are recorded in the ledger of the fit (``uns[key]["written_keys"]``), so a later call may
        replace them and a refit of ``key`` removes them.
    overwrite
        Replace keys of those names that another tool (or another fit) wrote.
    model
        Use this model instead of the one stored in ``adata.uns[key]``.
    solver, step_size
        Integrator (see :func:`cellflow.integration.integrate`).
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with one column per group of ``to_time``; rows of cells
    not measured at ``from_time`` are NaN. It is also written to ``adata.obsm[key_added]`` (a
    DataFrame in ``obsm`` survives ``write_h5ad``), its row-wise argmax to
    ``adata.obs[f"{key_added}_label"]``; nothing is written when a check fails. With
    ``copy=True``, the copy written into instead.
    """
    from_time, to_time = _checked_times(from_time, to_time, "from_time", "to_time", "ancestors")
    return _group_probabilities(
        adata, key, key_added or f"{key}_fate", overwrite, model, groupby, from_time, to_time,
        n_neighbors, solver, step_size, progress, "fate",
    )


@copy_option
def ancestors(
    adata: AnnData,
    to_time: float,
    from_time: float,
    groupby: str = "cell_type",
    *,
    key: str = "cellflow",
    n_neighbors: int = 15,
    key_added: str | None = None,
    overwrite: bool = False,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
) -> pd.DataFrame | AnnData:
    """Where each cell of ``to_time`` came from at ``from_time``, as probabilities over groups.

    The pull-back of :func:`fate`: each cell of ``to_time`` is pushed backward through the flow
    to ``from_time`` and its ancestor's groups are read off its nearest real cells there.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    to_time, from_time
        Measured time points, ``from_time < to_time``: the cells of ``to_time`` get the
        probabilities, over the groups of ``from_time``.
    groupby, key, n_neighbors, overwrite, model, solver, step_size, copy, progress
        As for :func:`fate`.
    key_added
        ``obsm`` key to write; default ``"{key}_ancestors"``; the most likely group goes to
        ``obs[f"{key_added}_label"]`` (both recorded as for :func:`fate`).

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with one column per group of ``from_time``; rows of cells
    not measured at ``to_time`` are NaN. Also written to ``adata.obsm[key_added]``; with
    ``copy=True``, the copy written into instead.
    """
    from_time, to_time = _checked_times(from_time, to_time, "from_time", "to_time", "fate")
    return _group_probabilities(
        adata, key, key_added or f"{key}_ancestors", overwrite, model, groupby, to_time, from_time,
        n_neighbors, solver, step_size, progress, "ancestors",
    )


@dataclass(repr=False)
class Transitions:
    """Group-to-group transitions between two time points, and the cell-to-cell coupling.

    Attributes
    ----------
    t1, t2
        The two time points.
    groupby, groupby_target
        The ``obs`` columns of the groups at ``t1`` (rows) and at ``t2`` (columns).
    counts
        Mass moving from each group of ``t1`` (rows) to each group of ``t2`` (columns), in cells
        of ``t1`` (times their growth, for unbalanced methods).
    row_normalised
        Where the cells of a group at ``t1`` go: ``counts`` with rows summing to one.
    column_normalised
        Where the cells of a group at ``t2`` come from: ``counts`` with columns summing to one.
    coupling
        AnnData of shape ``(n_t1, n_t2)``: ``X`` a sparse CSR matrix from each cell of ``t1``
        (``obs_names``) to the real cells of ``t2`` (``var_names``) next to where it lands, rows
        summing to the cell's pushed mass, and ``uns["{key}_coupling"]`` the two times, ``key`` and
        ``n_neighbors``. CellRank takes it as it is:
        ``RealTimeKernel(adata, time_key=..., couplings={(t1, t2): transitions.coupling})``.
    """

    t1: float
    t2: float
    groupby: str
    counts: pd.DataFrame
    row_normalised: pd.DataFrame
    column_normalised: pd.DataFrame
    coupling: AnnData
    groupby_target: str | None = None

    def __repr__(self) -> str:
        by = repr(self.groupby)
        if self.groupby_target not in (None, self.groupby):
            by += f" and {self.groupby_target!r}"
        return (
            f"Transitions({self.t1:g} -> {self.t2:g} by {by}: {self.counts.shape[0]} x "
            f"{self.counts.shape[1]} groups; coupling {self.coupling.n_obs} x {self.coupling.n_vars} cells, "
            f"{self.coupling.X.nnz} entries)"
        )


def _normalise(table: pd.DataFrame, axis: int) -> pd.DataFrame:
    totals = table.sum(axis=axis)
    return table.div(totals.where(totals > 0), axis=1 - axis)


def _onehot(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Sparse ``(len(codes), n_groups)`` indicator of each row's group (rows with code -1 stay empty)."""
    rows = np.flatnonzero(codes >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, codes[rows])), shape=(len(codes), n_groups))


def _in_subset(adata, subset, name: str, groupby: str, rows, codes, groups, time: float) -> np.ndarray:
    """Which of ``rows`` (cells of ``time``) a subset keeps: given as groups of ``groupby`` or a boolean mask."""
    if subset is None:
        return np.ones(len(rows), dtype=bool)
    values = np.asarray(subset)
    if values.dtype == bool:
        if values.shape != (adata.n_obs,):
            raise ValueError(
                f"{name} is a boolean mask of shape {values.shape}; it needs one entry per cell ({adata.n_obs},)"
            )
        keep = values[rows]
    else:
        wanted = [str(g) for g in np.atleast_1d(values)]
        unknown = [g for g in wanted if g not in groups]
        if unknown:
            raise ValueError(
                f"{name}={unknown} are not groups of obs[{groupby!r}] at time {time:g} (groups: {groups}); "
                "pass groups of that column or a boolean mask over all cells"
            )
        keep = np.isin(codes, [groups.index(g) for g in wanted])
    if not keep.any():
        raise ValueError(f"{name} keeps no cell of time {time:g}; choose groups or cells of that time")
    return keep


def transitions(
    adata: AnnData,
    t1: float,
    t2: float,
    groupby: str = "cell_type",
    *,
    groupby_target: str | None = None,
    source_subset=None,
    target_subset=None,
    key: str = "cellflow",
    n_neighbors: int = 15,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
) -> Transitions:
    """Transitions between the groups of two time points, and a sparse cell-to-cell coupling.

    The cells of ``t1`` are pushed through the flow to ``t2`` with their mass; each spreads its
    mass over its ``n_neighbors`` nearest real cells of ``t2`` with Gaussian weights (see
    :mod:`cellflow.analysis`). Summing that coupling over groups gives the tables. Nothing is
    written into ``adata``.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    t1, t2
        Measured time points, ``t1 < t2``.
    groupby
        ``obs`` column of groups; cells without a label are left out of the group tables (not of
        the coupling).
    groupby_target
        ``obs`` column of the groups at ``t2``, when they differ from those at ``t1`` (e.g.
        clusters of each time point annotated apart); default ``groupby``.
    source_subset, target_subset
        Keep only these cells of ``t1`` / ``t2``: a list of groups (of ``groupby`` /
        ``groupby_target``) or a boolean mask over all cells. The coupling is that of all cells
        (the same numbers as without subsets), restricted to the rows of the kept cells of
        ``t1``; the tables count only the mass that reaches kept cells of ``t2``, so
        ``row_normalised`` reads "where they go, among the kept target cells".
    key, n_neighbors, model, solver, step_size, progress
        As for :func:`fate`.

    Returns
    -------
    A :class:`Transitions` with ``counts``, ``row_normalised`` (where cells go),
    ``column_normalised`` (where cells come from) and ``coupling``.
    """
    t1, t2 = _checked_times(t1, t2, "t1", "t2", "transitions with the times swapped")
    n_neighbors = integer("n_neighbors", n_neighbors)
    groupby_target = groupby if groupby_target is None else groupby_target
    fitted = _fitted(adata, key, model)
    course = fitted.course
    sources = course.indices[course.index_of(t1)]
    targets = course.indices[course.index_of(t2)]
    src_codes, src_groups = _group_codes(adata, groupby, sources)
    tgt_codes, tgt_groups = _group_codes(adata, groupby_target, targets, "groupby_target")
    if not src_groups or not tgt_groups:
        raise ValueError(
            f"obs[{groupby!r}] has no labels at time {t1:g} or obs[{groupby_target!r}] none at {t2:g}; "
            "label the cells first"
        )
    src_kept = _in_subset(adata, source_subset, "source_subset", groupby, sources, src_codes, src_groups, t1)
    tgt_kept = _in_subset(adata, target_subset, "target_subset", groupby_target, targets, tgt_codes, tgt_groups, t2)
    index, weights, mass = _push_and_match(
        fitted, sources, t1, t2, targets, n_neighbors, solver, step_size, progress, "transitions"
    )
    rows = np.repeat(np.arange(len(sources)), index.shape[1])
    matrix = sp.csr_matrix(
        ((weights * mass[:, None]).ravel(), (rows, index.ravel())), shape=(len(sources), len(targets))
    )
    matrix.sum_duplicates()
    matrix, sources, src_codes = matrix[src_kept], sources[src_kept], src_codes[src_kept]
    tgt_codes = np.where(tgt_kept, tgt_codes, -1)
    counts = pd.DataFrame(
        np.asarray((_onehot(src_codes, len(src_groups)).T @ matrix @ _onehot(tgt_codes, len(tgt_groups))).todense()),
        index=pd.Index(src_groups, name=f"{groupby} at {t1:g}"),
        columns=pd.Index(tgt_groups, name=f"{groupby_target} at {t2:g}"),
    )
    counts = counts.iloc[np.unique(src_codes[src_codes >= 0]), np.unique(tgt_codes[tgt_codes >= 0])]  # kept groups

    keep = list(dict.fromkeys([fitted.time_key, groupby, groupby_target]))
    obs = adata.obs.iloc[sources][keep].copy()
    var = adata.obs.iloc[targets][keep].copy()
    coupling = AnnData(X=matrix, obs=obs, var=var)
    coupling.uns[f"{key}_coupling"] = {"t1": t1, "t2": t2, "key": key, "n_neighbors": n_neighbors}
    return Transitions(
        t1=t1,
        t2=t2,
        groupby=groupby,
        counts=counts,
        row_normalised=_normalise(counts, axis=1),
        column_normalised=_normalise(counts, axis=0),
        coupling=coupling,
        groupby_target=groupby_target,
    )


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
    """

    cells: pd.Index
    start_times: np.ndarray
    times: np.ndarray
    positions: np.ndarray
    masses: np.ndarray
    use_rep: str

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
    ``(len(times), n_cells)``; :meth:`Trajectories.to_frame` gives a tidy table.
    """
    grid = np.atleast_1d(np.asarray(times, dtype=float))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"times must be a non-empty list of finite numbers, got {times!r}")
    fitted = _fitted(adata, key, model)
    rows = _rows_of(adata, cells)
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
            path, mass = fitted.model.transport(x, np.r_[start, targets], method=solver, step_size=step_size)
            for t, p, m in zip(targets, path[1:], mass[1:]):
                hits = np.flatnonzero(side & (grid == t))
                positions[np.ix_(hits, members)] = p
                masses[np.ix_(hits, members)] = m
    return Trajectories(
        cells=adata.obs_names[rows].copy(),
        start_times=starts.astype(float),
        times=grid,
        positions=positions,
        masses=masses,
        use_rep=fitted.use_rep,
    )
