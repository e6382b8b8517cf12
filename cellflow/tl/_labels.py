"""Label transfer: carry a cell annotation from one measured time point to another."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _checks
from .._utils import copy_option, renamed_arguments
from ..model import CellFlow
from . import _keys as keys
from ._fate import _label_probabilities
from ._fitted import _fitted
from ._mapping import _obs_column


@renamed_arguments(label_key="groupby")
@copy_option
def transfer_labels(
    adata: AnnData,
    groupby: str,
    from_time: float,
    to_time: float,
    *,
    key: str = "cellflow",
    key_added: str | None = None,
    n_neighbors: int = 15,
    overwrite: bool = False,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
) -> pd.DataFrame | AnnData:
    """Carry a categorical annotation from the cells of one time point to those of another.

    Each cell of ``to_time`` is integrated to ``from_time`` (backward when ``to_time`` is later,
    forward when earlier) and takes the labels of the real cells it lands next to, with the
    neighbour weights of :mod:`cellflow.tl`: the probabilities of
    :func:`cellflow.tl.ancestors` or :func:`cellflow.tl.fate`. Every cell of ``to_time`` gets
    the label of highest probability.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    groupby
        ``obs`` column of labels (formerly ``label_key``); cells of ``from_time`` without a label
        are not used.
    from_time, to_time
        Two different measured time points: the labels of ``from_time`` go to the cells of
        ``to_time``.
    key, n_neighbors, model, solver, step_size, progress
        As for :func:`cellflow.tl.fate`.
    key_added
        ``obs`` column of the labels (categorical, the categories of ``groupby``, NaN at cells
        of other times); default ``f"{groupby}_transferred"``. The probability of each
        assigned label goes to ``obs[f"{key_added}_probability"]``; both are recorded in the
        ledger of the fit.
    overwrite
        Replace ``obs`` columns of those names that another tool (or another fit) wrote.
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).

    Returns
    -------
    A DataFrame indexed by ``obs_names`` with one column per label present at ``from_time``:
    each cell of ``to_time``'s probability of each label (rows of other cells are NaN). With
    ``copy=True``, the copy written into instead.
    """
    from_time, to_time = _checks.number("from_time", from_time), _checks.number("to_time", to_time)
    if from_time == to_time:
        raise ValueError(f"from_time and to_time are both {from_time:g}; pass two different time points")
    labels = _obs_column(adata, groupby, "groupby")
    if pd.api.types.is_float_dtype(labels):
        raise ValueError(
            f"groupby={groupby!r} holds numbers, not labels; transfer a categorical column, "
            "or carry numeric weights with cellflow.tl.push / cellflow.tl.pull"
        )
    n_neighbors = _checks.integer("n_neighbors", n_neighbors)
    fitted = _fitted(adata, key, model)
    key_added = key_added or f"{groupby}_transferred"
    written = [f"obs/{key_added}", f"obs/{key_added}_probability"]
    keys.claim(adata, key, written, overwrite)
    rows, probs, groups, _ = _label_probabilities(
        adata, fitted, groupby, to_time, from_time, n_neighbors, solver, step_size, progress, "transfer"
    )
    categories = labels.astype("category").cat.categories
    by_name = {str(c): c for c in categories}
    best = probs.argmax(axis=1)
    assigned = pd.Categorical([None] * adata.n_obs, categories=categories)
    assigned[rows] = [by_name[groups[b]] for b in best]
    probability = np.full(adata.n_obs, np.nan)
    probability[rows] = probs[np.arange(len(rows)), best]
    # labels of the default string dtype (object in pandas 2, str in pandas 3), as an .h5ad reads them back
    table = pd.DataFrame(np.nan, index=adata.obs_names.copy(), columns=pd.Index(groups))
    table.iloc[rows] = probs
    adata.obs[key_added] = assigned
    adata.obs[f"{key_added}_probability"] = probability
    keys.record(adata, key, written)
    return table
