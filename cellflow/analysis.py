"""What comes after the velocity field: fates and ancestors, and the shared pieces of every analysis.

Every analysis (here, and in :mod:`cellflow.transitions`, :mod:`cellflow.trajectories`,
:mod:`cellflow.mapping` and :mod:`cellflow.genes`) moves real cells through a fitted flow
(with their mass, for methods that learn growth) and reads off where they land by their
nearest real neighbours.

Neighbour weights, used throughout: a pushed cell is compared with the ``n_neighbors`` nearest
real cells of the time point it was pushed to, and each neighbour gets the Gaussian weight
``exp(-d**2 / (2 h**2))`` of its distance ``d``, with ``h`` the median distance of that cell's
``n_neighbors`` neighbours; the weights of a pushed cell sum to one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from . import chain, keys
from ._checks import integer, number
from ._utils import copy_option, progress_bar
from .model import CellFlow
from .readers import TimeCourse, read_time_course
from .support import Support, warn_off_data

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

    @functools.cached_property
    def support(self) -> Support:
        """The measured populations, for telling pushed cells on the data from those off it."""
        return Support(self.course.populations, self.course.times)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Push ``sources`` (rows of the representation) and match them with ``reference`` rows: the
    neighbours' indices and weights, each pushed cell's mass and whether it is off the data."""
    ref_points = fitted.rep[reference]
    indices, weights, masses, off = [], [], [], []
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
        off.append(fitted.support.off_data(pushed, t_to))
        bar.update(len(rows))
    bar.close()
    return np.concatenate(indices), np.concatenate(weights), np.concatenate(masses), np.concatenate(off)


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
    adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc, across=None
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Rows of the cells of ``t_start``, their probability of each group of ``t_end``, the group names,
    and a record of how they were found: ``across``, ``off_data_share`` and ``disagreement``.

    With ``across`` (``"chain"`` or ``"flow"``) and measured times between the two, both answers of
    :mod:`cellflow.chain` are computed, ``across`` is returned and ``disagreement`` is the mean
    total-variation distance between them; otherwise (or within one interval) the flow's answer.
    """
    course = fitted.course
    sources = course.indices[course.index_of(t_start)]
    targets = course.indices[course.index_of(t_end)]
    codes, groups = _group_codes(adata, groupby, targets)
    labelled = codes >= 0
    if not labelled.any():
        raise ValueError(f"no cell at time {t_end:g} has a label in obs[{groupby!r}]; label them first")
    index, weights, _, off = _push_and_match(
        fitted, sources, t_start, t_end, targets[labelled], n_neighbors, solver, step_size, progress, desc
    )
    probs = _soft_labels(index, weights, codes[labelled], len(groups))
    record = {"across": across or "flow", "off_data_share": float(off.mean()), "disagreement": 0.0}
    if across is not None and chain.spans_several(course, t_start, t_end):
        chained, chain_off = chain.chained_labels(
            fitted, course.index_of(t_start), course.index_of(t_end), targets[labelled], codes[labelled], len(groups),
            n_neighbors, solver, step_size, progress,
        )
        record["disagreement"] = chain.mean_total_variation(probs, chained)
        if across == "chain":
            probs, record["off_data_share"] = chained, chain_off
    return sources, probs, groups, record


def _group_probabilities(
    adata, key, key_added, overwrite, model, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc,
    across,
) -> pd.DataFrame:
    """Per cell of ``t_start``, the probability of each group of ``t_end``, written to ``obsm[key_added]``,
    the most likely group to ``obs[f"{key_added}_label"]`` and the two times (``from_time``: the cells',
    ``to_time``: the groups') with ``groupby`` and the record of :func:`_label_probabilities` to
    ``uns[f"{key_added}_params"]``."""
    n_neighbors = integer("n_neighbors", n_neighbors)
    across = chain.checked_across(across)
    fitted = _fitted(adata, key, model)
    written = [f"obsm/{key_added}", f"obs/{key_added}_label", f"uns/{key_added}_params"]
    keys.claim(adata, key, written, overwrite)
    sources, probs, groups, record = _label_probabilities(
        adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc, across
    )
    warn_off_data(record["off_data_share"], desc, stacklevel=4)
    chain.warn_disagreement(desc, record["disagreement"], stacklevel=4)
    table = pd.DataFrame(np.nan, index=adata.obs_names.copy(), columns=pd.Index(groups, dtype=object))
    table.iloc[sources] = probs
    codes = np.full(adata.n_obs, -1)
    codes[sources] = probs.argmax(axis=1)
    adata.obsm[key_added] = table
    adata.obs[f"{key_added}_label"] = pd.Categorical.from_codes(codes, categories=groups)
    adata.uns[f"{key_added}_params"] = {"from_time": t_start, "to_time": t_end, "groupby": groupby, **record}
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
    across: str = "chain",
) -> pd.DataFrame | AnnData:
    """Where each cell of ``from_time`` ends up at ``to_time``, as probabilities over groups.

    Each cell of ``from_time`` is pushed through the flow to ``to_time`` and compared with the
    real cells measured there: its probability of group ``B`` is the summed neighbour weight
    (see :mod:`cellflow.analysis`) of its ``n_neighbors`` nearest real cells that belong to
    ``B``. A cell's probabilities sum to one; its mass (growth of unbalanced methods) does not
    change them, but weights it in :func:`cellflow.tl.transitions`.

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
    across
        With measured time points between the two: ``"chain"`` (default) composes the couplings of
        the measured intervals, the flow used within each interval only (mass-weighted, so
        descendants count as often as cells divide); ``"flow"`` integrates over the whole span
        (see :mod:`cellflow.chain`). Within one interval both are the same. Across several both
        are computed: ``uns[f"{key_added}_params"]`` records ``across``, ``disagreement`` (mean
        total-variation distance between the two per-cell distributions; a
        :class:`cellflow.chain.DisagreementWarning` above 0.1) and ``off_data_share``, the share
        of pushed cells off the data (:mod:`cellflow.support`; a
        :class:`cellflow.support.OffDataWarning` above 5%).

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
        n_neighbors, solver, step_size, progress, "fate", across,
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
    across: str = "chain",
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
    across
        As for :func:`fate`; the chain composes, from ``to_time`` back, each interval's neighbour
        weights of cells pushed backward (each cell has one ancestor, so no mass).
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
        n_neighbors, solver, step_size, progress, "ancestors", across,
    )
