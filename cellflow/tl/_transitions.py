"""Transitions between the groups of two time points, and the cell-to-cell coupling behind them.

The cells of the earlier time point are pushed through the fitted flow with their mass and
spread it over their nearest real cells of the later one (the neighbour weights of
:mod:`cellflow.tl`); summing that coupling over groups gives the tables.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import integer
from .._utils import renamed_arguments
from ..model import CellFlow, interval
from . import _chain as chain
from ._fate import _checked_times
from ._fitted import _fitted, _group_codes, _push_and_match, ensemble_members
from ._support import warn_off_data


@dataclass(repr=False)
class Transitions:
    """Group-to-group transitions between two time points, and the cell-to-cell coupling.

    Attributes
    ----------
    from_time, to_time
        The two time points, ``from_time < to_time``.
    groupby, groupby_target
        The ``obs`` columns of the groups at ``from_time`` (rows) and at ``to_time`` (columns).
    counts
        Mass moving from each group of ``from_time`` (rows) to each group of ``to_time`` (columns),
        in cells of ``from_time`` (times their growth, for unbalanced methods).
    row_normalized
        Where the cells of a group at ``from_time`` go: ``counts`` with rows summing to one.
    column_normalized
        Where the cells of a group at ``to_time`` come from: ``counts`` with columns summing to one.
    coupling
        AnnData of shape ``(n_from, n_to)``: ``X`` a sparse CSR matrix from each cell of
        ``from_time`` (``obs_names``) to the real cells of ``to_time`` (``var_names``) next to where
        it lands, rows summing to the cell's pushed mass, and ``uns["{key}_coupling"]`` the two
        times (``from_time``, ``to_time``), ``key`` and ``n_neighbors``. CellRank takes it as it is:
        ``RealTimeKernel(adata, time_key=..., couplings={(from_time, to_time): transitions.coupling})``.
    across
        How measured times between ``from_time`` and ``to_time`` were crossed: ``"chain"`` (the
        coupling is the product of the interval couplings) or ``"flow"`` (see :mod:`cellflow.tl`).
    off_data_share
        The share of the pushed cells behind the coupling that left the data (:mod:`cellflow.tl`).
    disagreement
        Across several intervals, the mean total-variation distance between the chain's and the
        flow's per-cell distributions over the groups of ``to_time``; 0 within one interval.
    row_normalized_low, row_normalized_high
        For a fit with a bootstrap ensemble (:func:`cellflow.tl.fit` with ``n_fits``): the central
        interval (at the fit's ``interval``) of :attr:`row_normalized` over the members, else ``None``.

    The old names ``t1``, ``t2``, ``row_normalised`` and ``column_normalised`` still read the same
    values, with a ``FutureWarning``, for one release.
    """

    from_time: float
    to_time: float
    groupby: str
    counts: pd.DataFrame
    row_normalized: pd.DataFrame
    column_normalized: pd.DataFrame
    coupling: AnnData
    groupby_target: str | None = None
    across: str = "flow"
    off_data_share: float = 0.0
    disagreement: float = 0.0
    row_normalized_low: pd.DataFrame | None = None
    row_normalized_high: pd.DataFrame | None = None

    def table(self) -> pd.DataFrame:
        """:attr:`row_normalized` as a tidy table: one row per pair of groups, with ``estimate`` and, for a fit
        with a bootstrap ensemble, ``low`` and ``high``.

        Returns
        -------
        Columns ``source``, ``target``, ``estimate`` (and ``low``, ``high``).
        """
        frames = {"estimate": self.row_normalized, "low": self.row_normalized_low,
                  "high": self.row_normalized_high}
        long = {name: frame.rename_axis(index="source", columns="target").stack(future_stack=True)
                for name, frame in frames.items() if frame is not None}
        return pd.DataFrame(long).reset_index()

    def __repr__(self) -> str:
        by = repr(self.groupby)
        if self.groupby_target not in (None, self.groupby):
            by += f" and {self.groupby_target!r}"
        return (
            f"Transitions({self.from_time:g} -> {self.to_time:g} by {by}: {self.counts.shape[0]} x "
            f"{self.counts.shape[1]} groups; coupling {self.coupling.n_obs} x {self.coupling.n_vars} cells, "
            f"{self.coupling.X.nnz} entries)"
        )


def _renamed_attribute(old: str, new: str) -> property:
    """A read-only attribute under its old name, which warns and reads the new one."""

    def read(self):
        warnings.warn(f"Transitions.{old} is renamed Transitions.{new}; {old} still works in this release but will "
                      "be removed in the next one", FutureWarning, stacklevel=2)
        return getattr(self, new)

    return property(read, doc=f"Old name of :attr:`{new}` (deprecated).")


for _old, _new in (("t1", "from_time"), ("t2", "to_time"), ("row_normalised", "row_normalized"),
                   ("column_normalised", "column_normalized")):
    setattr(Transitions, _old, _renamed_attribute(_old, _new))


def _normalize(table: pd.DataFrame, axis: int) -> pd.DataFrame:
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


def _coupling(fitted, sources, targets, tgt_codes, n_groups, t1, t2, n_neighbors, solver, step_size, across,
              progress) -> tuple[sp.csr_matrix, float, float]:
    """The cell-to-cell coupling of :func:`transitions` (mass-weighted neighbour weights), the share of its pushed
    cells off the data, and across several intervals the disagreement of chain and flow.
    """
    index, weights, mass, off = _push_and_match(
        fitted, sources, t1, t2, targets, n_neighbors, solver, step_size, progress, "transitions"
    )
    rows = np.repeat(np.arange(len(sources)), index.shape[1])
    matrix = sp.csr_matrix(
        ((weights * mass[:, None]).ravel(), (rows, index.ravel())), shape=(len(sources), len(targets))
    )
    matrix.sum_duplicates()
    course, off_data_share, disagreement = fitted.course, float(off.mean()), 0.0
    if chain.spans_several(course, t1, t2):
        chained, chain_off = chain.chained_coupling(
            fitted, course.index_of(t1), course.index_of(t2), n_neighbors, solver, step_size, progress
        )
        fates = [np.asarray((m @ _onehot(tgt_codes, n_groups)).todense()) for m in (matrix, chained)]
        with np.errstate(invalid="ignore", divide="ignore"):  # cells whose mass reaches no labelled cell: NaN, left out
            disagreement = chain.mean_total_variation(*[f / f.sum(axis=1, keepdims=True) for f in fates])
        if across == "chain":
            matrix, off_data_share = chained, chain_off
    return matrix, off_data_share, disagreement


def _group_counts(matrix: sp.csr_matrix, src_codes: np.ndarray, tgt_codes: np.ndarray, names) -> pd.DataFrame:
    """The coupling summed over the groups of its rows and columns."""
    onehots = [_onehot(codes, len(index)) for codes, index in zip((src_codes, tgt_codes), names)]
    return pd.DataFrame(np.asarray((onehots[0].T @ matrix @ onehots[1]).todense()), index=names[0], columns=names[1])


@renamed_arguments(t1="from_time", t2="to_time")
def transitions(
    adata: AnnData,
    from_time: float,
    to_time: float,
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
    across: str = "chain",
) -> Transitions:
    """Transitions between the groups of two time points, and a sparse cell-to-cell coupling.

    The cells of ``from_time`` are pushed through the flow to ``to_time`` with their mass; each
    spreads its mass over its ``n_neighbors`` nearest real cells of ``to_time`` with Gaussian
    weights (see :mod:`cellflow.tl`). Summing that coupling over groups gives the tables.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    from_time, to_time
        Measured time points, ``from_time < to_time`` (formerly ``t1``, ``t2``).
    groupby
        ``obs`` column of groups; cells without a label are left out of the group tables (not of
        the coupling).
    groupby_target
        ``obs`` column of the groups at ``to_time``, when they differ from those at ``from_time``
        (e.g. clusters of each time point annotated apart); default ``groupby``.
    source_subset, target_subset
        Keep only these cells of ``from_time`` / ``to_time``: a list of groups (of ``groupby`` /
        ``groupby_target``) or a boolean mask over all cells. The coupling is that of all cells
        (the same numbers as without subsets), restricted to the rows of the kept cells of
        ``from_time``; the tables count only the mass that reaches kept cells of ``to_time``, so
        ``row_normalized`` reads "where they go, among the kept target cells".
    key, n_neighbors, model, solver, step_size, progress
        As for :func:`fate`.
    across
        As for :func:`fate`: with ``"chain"`` (default) and measured times between
        ``from_time`` and ``to_time`` the coupling is the product of the couplings of the measured intervals (mass
        multiplies along it), with ``"flow"`` the cells are pushed over the whole span. Both
        are computed across several intervals and compared (``disagreement``).

    Returns
    -------
    A :class:`Transitions` with ``counts``, ``row_normalized`` (where cells go),
    ``column_normalized`` (where cells come from) and ``coupling``. Nothing is
    written into ``adata``, so there is no ``copy=``.
    """
    t1, t2 = _checked_times(from_time, to_time, "from_time", "to_time", "transitions with the times swapped")
    n_neighbors, across = integer("n_neighbors", n_neighbors), chain.checked_across(across)
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
    pieces = (sources, targets, tgt_codes, len(tgt_groups), t1, t2, n_neighbors, solver, step_size, across)
    matrix, off_data_share, disagreement = _coupling(fitted, *pieces, progress)
    warn_off_data(off_data_share, "transitions", stacklevel=4)  # past renamed_arguments, to the caller
    chain.warn_disagreement("transitions", disagreement, stacklevel=4)
    sources, src_codes = sources[src_kept], src_codes[src_kept]
    tgt_codes = np.where(tgt_kept, tgt_codes, -1)
    names = (pd.Index(src_groups, name=f"{groupby} at {t1:g}"),
             pd.Index(tgt_groups, name=f"{groupby_target} at {t2:g}"))
    kept = (np.unique(src_codes[src_codes >= 0]), np.unique(tgt_codes[tgt_codes >= 0]))  # the groups kept
    matrix = matrix[src_kept]
    counts = _group_counts(matrix, src_codes, tgt_codes, names).iloc[kept]
    members, level = ensemble_members(adata, key, model)
    bounds: list[pd.DataFrame | None] = [None, None]
    if members:  # the same table from every bootstrap member: the interval of its rows' shares
        shares = [_normalize(_group_counts(_coupling(dataclasses.replace(fitted, model=member), *pieces, False)[0]
                                           [src_kept], src_codes, tgt_codes, names).iloc[kept], axis=1).to_numpy()
                  for member in members]
        bounds = [pd.DataFrame(bound, index=counts.index, columns=counts.columns)
                  for bound in interval(np.stack(shares), level)]

    keep = list(dict.fromkeys([fitted.time_key, groupby, groupby_target]))
    obs = adata.obs.iloc[sources][keep].copy()
    var = adata.obs.iloc[targets][keep].copy()
    coupling = AnnData(X=matrix, obs=obs, var=var)
    coupling.uns[f"{key}_coupling"] = {"from_time": t1, "to_time": t2, "key": key, "n_neighbors": n_neighbors,
                                       "across": across}
    return Transitions(
        from_time=t1,
        to_time=t2,
        groupby=groupby,
        counts=counts,
        row_normalized=_normalize(counts, axis=1),
        column_normalized=_normalize(counts, axis=0),
        coupling=coupling,
        groupby_target=groupby_target,
        across=across,
        off_data_share=off_data_share,
        row_normalized_low=bounds[0],
        row_normalized_high=bounds[1],
        disagreement=disagreement,
    )
