"""Hand-offs to other tools: the cell-to-cell couplings that CellRank's real-time kernel reads."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from ..model import CellFlow
from ._fitted import _Fitted, _fitted
from ._transitions import transitions


def _category_of_each_time(adata: AnnData, time_key: str, fitted: _Fitted) -> list:
    """The one category of ``obs[time_key]`` that the cells of each fitted time point carry."""
    if time_key not in adata.obs:
        raise KeyError(
            f"time_key={time_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); "
            "name the categorical column of time points that CellRank will read"
        )
    column = adata.obs[time_key]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        raise TypeError(
            f"obs[{time_key!r}] is {column.dtype}, but CellRank's RealTimeKernel needs a categorical time "
            f'column; convert it first: adata.obs[{time_key!r}] = adata.obs[{time_key!r}].astype("category")'
        )
    course = fitted.course
    labels = []
    for time, rows in zip(course.times, course.indices):
        present = column.iloc[rows]
        found = list(present.dropna().unique())
        if len(found) != 1 or present.isna().any():
            raise ValueError(
                f"the cells of time {time:g} of the fit (obs[{fitted.time_key!r}]) carry the categories "
                f"{found[:5]}{' and missing values' if present.isna().any() else ''} in obs[{time_key!r}]; "
                "each measured time point needs exactly one category: pass the time column the model was fitted on"
            )
        labels.append(found[0])
    if len(set(labels)) != len(labels) or set(column.dropna().unique()) != set(labels):
        raise ValueError(
            f"the categories of obs[{time_key!r}] ({list(column.cat.categories)}) do not match the fitted time "
            f"points {course.times.tolist()} one to one; pass the time column the model was fitted on"
        )
    try:
        last = sorted(labels)[-1]
    except TypeError:
        last = None
    if last != labels[-1]:
        raise ValueError(
            f"the categories {labels} of obs[{time_key!r}] do not sort in time order, and CellRank takes the "
            "largest one as the last time point; use categories that sort like the times, e.g. "
            f"adata.obs[{time_key!r}] = adata.obs[{fitted.time_key!r}].astype(float).astype('category') when the "
            "fit read numbers from the labels"
        )
    return labels


def cellrank_couplings(
    adata: AnnData,
    *,
    key: str = "cellflow",
    time_key: str | None = None,
    n_neighbors: int = 15,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
) -> dict[tuple, AnnData]:
    """Couplings between consecutive time points, keyed as CellRank's ``RealTimeKernel`` expects.

    Each value is the ``coupling`` of :func:`cellflow.tl.transitions` for one pair of consecutive
    measured time points: the cells of the earlier time pushed through the flow and spread over
    the real cells of the later one (rows sum to the pushed mass; CellRank normalises them).
    Nothing is written into ``adata``.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    key
        ``key_added`` of the fit.
    time_key
        Categorical ``obs`` column that CellRank will read, one category per measured time point
        (categories that sort in time order, since CellRank takes the largest as the last time).
        Default: the column the model was fitted on.
    n_neighbors, model, solver, step_size, progress
        As for :func:`cellflow.tl.transitions`.

    Returns
    -------
    ``{(category_k, category_k+1): coupling}`` for every pair of consecutive time points, the
    categories being the values of ``obs[time_key]``, so that
    ``cellrank.kernels.RealTimeKernel(adata, time_key=time_key, couplings=...)`` takes it as it is.
    """
    fitted = _fitted(adata, key, model)
    time_key = fitted.time_key if time_key is None else time_key
    labels = _category_of_each_time(adata, time_key, fitted)
    times = fitted.course.times
    couplings = {}
    for k in range(len(times) - 1):
        coupling = transitions(
            adata, times[k], times[k + 1], groupby=fitted.time_key, key=key, n_neighbors=n_neighbors,
            model=fitted.model, solver=solver, step_size=step_size, progress=progress,
        ).coupling
        couplings[labels[k], labels[k + 1]] = coupling
    return couplings
