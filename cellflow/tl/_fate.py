"""What comes after the velocity field: fates and ancestors.

The pieces every analysis shares (the fit an AnnData holds, neighbour weights, cells pushed and
matched) are in :mod:`cellflow.tl`; they are importable from here as well.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import integer, number
from .._utils import copy_option
from ..model import CellFlow, interval
from . import _chain as chain
from . import _keys as keys
from ._fitted import _fitted, _group_codes, _push_and_match, _soft_labels, ensemble_members
from ._support import warn_off_data


def _checked_times(
    earlier, later, earlier_name: str, later_name: str, other: str, hint: str = ""
) -> tuple[float, float]:
    """Two finite times, ``earlier < later``, else a ``ValueError`` naming the arguments."""
    earlier, later = number(earlier_name, earlier), number(later_name, later)
    if not earlier < later:
        raise ValueError(
            f"{earlier_name}={earlier!r} must be earlier than {later_name}={later!r}; "
            f"for the other direction use cellflow.tl.{other}{hint}"
        )
    return earlier, later


def _label_probabilities(
    adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc, across=None
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Rows of the cells of ``t_start``, their probability of each group of ``t_end``, the group names,
    and a record of how they were found: ``across``, ``off_data_share`` and ``disagreement``.

    With ``across`` (``"chain"`` or ``"flow"``) and measured times between the two, both answers of
    :mod:`cellflow.tl` are computed, ``across`` is returned and ``disagreement`` is the mean
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
    ``uns[f"{key_added}_params"]``.
    """
    n_neighbors = integer("n_neighbors", n_neighbors)
    across = chain.checked_across(across)
    fitted = _fitted(adata, key, model)
    members, level = ensemble_members(adata, key, model)
    written = [f"obsm/{key_added}", f"obs/{key_added}_label", f"uns/{key_added}_params"]
    if members:
        written += [f"obsm/{key_added}_low", f"obsm/{key_added}_high"]
    keys.claim(adata, key, written, overwrite)
    sources, probs, groups, record = _label_probabilities(
        adata, fitted, groupby, t_start, t_end, n_neighbors, solver, step_size, progress, desc, across
    )
    bounds = []
    if members:  # the same question put to every bootstrap member: the interval of the answer
        answers = [_label_probabilities(adata, dataclasses.replace(fitted, model=member), groupby, t_start, t_end,
                                        n_neighbors, solver, step_size, False, desc, across)[1] for member in members]
        bounds = list(interval(np.stack(answers), level))
        record["interval"] = level
    warn_off_data(record["off_data_share"], desc, stacklevel=5)
    chain.warn_disagreement(desc, record["disagreement"], stacklevel=5)
    # labels of the default string dtype (object in pandas 2, str in pandas 3), as an .h5ad reads them back
    table = pd.DataFrame(np.nan, index=adata.obs_names.copy(), columns=pd.Index(groups))
    table.iloc[sources] = probs
    codes = np.full(adata.n_obs, -1)
    codes[sources] = probs.argmax(axis=1)
    adata.obsm[key_added] = table
    for name in ("low", "high"):  # an earlier call's interval must not stand beside this answer
        if f"obsm/{key_added}_{name}" in keys.written_keys(adata, key) and f"{key_added}_{name}" in adata.obsm:
            del adata.obsm[f"{key_added}_{name}"]
    for name, values in zip(("low", "high"), bounds):
        bound = pd.DataFrame(np.nan, index=adata.obs_names.copy(), columns=pd.Index(groups))
        bound.iloc[sources] = values
        adata.obsm[f"{key_added}_{name}"] = bound
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
    (see :mod:`cellflow.tl`) of its ``n_neighbors`` nearest real cells that belong to
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
        Integrator (see :func:`cellflow.solvers.integrate`).
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    across
        With measured time points between the two: ``"chain"`` (default) composes the couplings of
        the measured intervals, the flow used within each interval only (mass-weighted, so
        descendants count as often as cells divide); ``"flow"`` integrates over the whole span
        (see :mod:`cellflow.tl`). Within one interval both are the same. Across several both
        are computed: ``uns[f"{key_added}_params"]`` records ``across``, ``disagreement`` (mean
        total-variation distance between the two per-cell distributions; a
        :class:`cellflow.tl._chain.DisagreementWarning` above 0.1) and ``off_data_share``, the share
        of pushed cells off the data (:mod:`cellflow.tl`; a
        :class:`cellflow.tl._support.OffDataWarning` above 5%).

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with one column per group of ``to_time``; rows of cells
    not measured at ``from_time`` are NaN. It is also written to ``adata.obsm[key_added]`` (a
    DataFrame in ``obsm`` survives ``write_h5ad``), its row-wise argmax to
    ``adata.obs[f"{key_added}_label"]``; nothing is written when a check fails. When the fit has
    a bootstrap ensemble (:func:`cellflow.tl.fit` with ``n_fits``) and no other ``model`` is given,
    every member answers too, and the central interval of their answers (at the fit's ``interval``)
    goes to ``adata.obsm[f"{key_added}_low"]`` and ``adata.obsm[f"{key_added}_high"]``. With
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
    """Where each cell of ``from_time`` came from at the earlier ``to_time``, as probabilities over groups.

    The pull-back of :func:`fate`: each cell of ``from_time`` is pushed backward through the flow
    to ``to_time`` and its ancestor's groups are read off its nearest real cells there. As in
    every tool, ``from_time`` is the time of the cells the tool starts from and ``to_time`` the
    time they are carried to (here backward, as in :func:`cellflow.tl.pull`).

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    from_time, to_time
        Measured time points, ``to_time < from_time``: the cells of ``from_time`` get the
        probabilities, over the groups of ``to_time``. Changed in 0.2: the later time was called
        ``to_time`` and came first, so positional calls (``ancestors(adata, 11, 10)``) read the
        same as before, while calls by keyword must swap the two names (the times are checked:
        a ``to_time`` later than ``from_time`` is an error, never a silent swap).
    groupby, key, n_neighbors, overwrite, model, solver, step_size, copy, progress
        As for :func:`fate`.
    across
        As for :func:`fate`; the chain composes, from ``from_time`` back, each interval's neighbour
        weights of cells pushed backward (each cell has one ancestor, so no mass).
    key_added
        ``obsm`` key to write; default ``"{key}_ancestors"``; the most likely group goes to
        ``obs[f"{key_added}_label"]`` (both recorded as for :func:`fate`).

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with one column per group of ``to_time``; rows of cells
    not measured at ``from_time`` are NaN. Also written to ``adata.obsm[key_added]``, and the two
    times to ``uns[f"{key_added}_params"]`` as given (``from_time`` the later); with
    ``copy=True``, the copy written into instead.
    """
    to_time, from_time = _checked_times(
        to_time, from_time, "to_time", "from_time", "fate",
        " (since cellflow 0.2 ancestors, like pull, reads from_time as the time of the cells, the later one: "
        "ancestors(adata, from_time=11, to_time=10))",
    )
    return _group_probabilities(
        adata, key, key_added or f"{key}_ancestors", overwrite, model, groupby, from_time, to_time,
        n_neighbors, solver, step_size, progress, "ancestors", across,
    )
