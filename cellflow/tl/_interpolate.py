"""Predict a population at any time: the cells of a measured time point pushed through the flow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import choice, integer, number
from ..model import CellFlow
from . import _keys as keys
from ._expression import expression_at, expression_matrix, gene_means, gene_space
from ._fitted import _fitted
from ._support import off_data_share, warn_beyond_times, warn_off_data


def interpolate(
    adata: AnnData,
    from_time: float,
    to_time: float,
    *,
    key: str = "cellflow",
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    expression: str = "neighbors",
    layer: str | None = None,
    n_neighbors: int = 15,
) -> AnnData:
    """Push the cells measured at ``from_time`` to any time ``to_time``, with their expression of every gene.

    Parameters
    ----------
    adata
        The AnnData that :func:`fit` wrote into (in memory or backed); it is not changed.
    from_time
        A measured time point (its cells are the starting population).
    to_time
        Any real time, between, before or beyond the measured ones; before the first or beyond
        the last an :class:`cellflow.ExtrapolationWarning` says how far.
    key
        Where :func:`fit` stored the model (its ``key_added``); also the prefix of the keys of
        the result.
    model
        Use this model instead of the stored one.
    solver, step_size
        Integrator (see :func:`cellflow.solvers.integrate`); ``step_size`` in time units.
    stochastic
        Draw one path per cell of the SDE with the flow's marginals rather than follow the flow
        (methods with a learned score, e.g. ``"sbcfm"``; see :meth:`cellflow.CellFlow.transport`):
        Euler-Maruyama with ``step_size``, by default 1/100 of each measured interval, between
        the first and the last measured time.
    seed
        Seed of the SDE's noise (default: the model's seed); the same seed gives the same cells.
    expression
        How ``X`` of the result is read, for every gene of ``adata``: ``"neighbors"`` (default) at each
        measured time point around ``to_time``, the neighbour-weighted mean expression of the
        ``n_neighbors`` measured cells nearest to where the predicted cell's path (the flow's, also with
        ``stochastic=True``) passes (weights as in :mod:`cellflow.tl`), blended linearly in time (at a
        measured time its cells alone; beyond the first or last, theirs), so only measured values are
        reported: non-negative where ``X`` is, sparse where it is sparse, and right for genes outside the
        representation too; ``"pca"`` the linear reconstruction ``mean + position
        @ varm["PCs"].T`` of a fit in ``use_rep="X_pca"``, exact only for the genes the PCs describe
        (others get their mean over all cells) and possibly negative; ``"none"``, no genes.
    layer
        The layer to read expression from (default ``X``), with ``expression="neighbors"``.
    n_neighbors
        Measured cells per reading, with ``expression="neighbors"``.

    Returns
    -------
    A new AnnData with one row per starting cell: predicted positions in ``obsm[use_rep]``,
    expression in ``X`` (see ``expression``; ``var`` as ``adata``'s), ``obs["time"]``, ``obs["{key}_mass"]``
    (how many cells each row stands for: one at ``from_time``, changed by the growth field of
    unbalanced methods, so that its sum predicts the population size), ``obs["source_cell"]``
    and ``uns["{key}_interpolation"]`` (the two times, ``key``, ``stochastic`` and ``off_data_share``,
    the share of the predicted cells off the data of the nearest measured time, see
    :mod:`cellflow.tl`; an :class:`cellflow.tl._support.OffDataWarning` above 5%).
    """
    from_time, to_time = number("from_time", from_time), number("to_time", to_time)
    expression = choice("expression", expression, ["neighbors", "pca", "none"])
    n_neighbors = integer("n_neighbors", n_neighbors)
    matrix = expression_matrix(adata, layer) if expression == "neighbors" else None
    fitted = _fitted(adata, key, model)
    loadings = keys.pca_loadings(adata, fitted.use_rep, fitted.course.n_dims)
    if expression == "pca" and loadings is None:
        raise ValueError(
            f'expression="pca" needs a fit in use_rep="X_pca" and adata.varm["PCs"]; this fit used '
            f'use_rep={fitted.use_rep!r}{"" if "PCs" in adata.varm else " and varm has no PCs"}: use '
            'expression="neighbors"'
        )
    k = fitted.course.index_of(from_time)
    warn_beyond_times(to_time, fitted.course.times, "interpolate", fitted.course.time_unit)
    positions, mass = fitted.model.push(
        fitted.course.populations[k], from_time, to_time, return_mass=True, solver=solver, step_size=step_size,
        stochastic=stochastic, seed=seed,
    )
    source = adata.obs_names[fitted.course.indices[k]]
    obs = pd.DataFrame(
        {"time": to_time, f"{key}_mass": mass, "source_cell": np.asarray(source)},
        index=[f"{name}@{to_time:g}" for name in source],
    )
    off_data = off_data_share(positions, to_time, support=fitted.support)
    warn_off_data(off_data, "interpolate")
    if expression == "neighbors":
        def path_at(t: float) -> np.ndarray:
            """The flow's path of the starting cells at measured time ``t`` (the prediction at ``to_time``)."""
            if np.isclose(t, to_time) and not stochastic:
                return positions
            if np.isclose(t, from_time):
                return fitted.course.populations[k]
            return fitted.model.push(fitted.course.populations[k], from_time, t, solver=solver, step_size=step_size)

        genes = expression_at(fitted.course, path_at, to_time, matrix, n_neighbors)
    elif expression == "pca":
        genes = gene_space(positions, fitted.use_rep, loadings)
        genes += gene_means(adata).astype(np.float32)
    else:
        genes = None
    out = AnnData(
        X=genes if genes is not None else sp.csr_matrix((len(obs), 0), dtype=np.float32),
        obs=obs,
        var=adata.var.copy() if genes is not None else None,
    )
    out.obsm[fitted.use_rep if fitted.use_rep != "X" else "X_cellflow"] = positions.astype(np.float32)
    out.uns[f"{key}_interpolation"] = {"from_time": from_time, "to_time": to_time, "key": key,
                                       "stochastic": bool(stochastic), "off_data_share": off_data,
                                       "expression": expression}
    return out
