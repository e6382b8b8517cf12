"""The shared pieces of every analysis: the fit an AnnData holds, neighbour weights, and cells pushed and matched.

Every analysis of :mod:`cellflow.tl` (fates and ancestors, transitions, push and pull, trajectories,
label transfer, gene trends) moves real cells through a fitted flow (with their mass, for methods that
learn growth) and reads off where they land by their nearest real neighbours.

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

from .._utils import progress_bar
from ..io._readers import TimeCourse, read_time_course
from ..model import CellFlow, Ensemble
from . import _keys as keys
from ._support import Support

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
        model = CellFlow.from_dict(state, device=device)
    except ValueError as err:
        raise ValueError(f"adata.uns[{key!r}]: {err}") from err
    if "time_reading" in state:
        model.time_reading = dict(state["time_reading"])
    return model


def _stored_ensemble(adata: AnnData, key: str, device: str = "auto") -> Ensemble:
    """The bootstrap ensemble that :func:`cellflow.tl.fit` stored in ``adata.uns[key]["ensemble"]``; errors name it."""
    state = keys.fit_state(adata, key)
    if "ensemble" not in state:
        raise KeyError(f"adata.uns[{key!r}] holds no ensemble: fit with cellflow.tl.fit(..., n_fits=10) first")
    try:
        return Ensemble.from_dict(state["ensemble"], device=device)
    except ValueError as err:
        raise ValueError(f"adata.uns[{key!r}]['ensemble']: {err}") from err


def ensemble_members(adata: AnnData, key: str, model: CellFlow | None) -> tuple[list[CellFlow], float]:
    """The bootstrap members of the fit ``key`` (:func:`cellflow.tl.fit` with ``n_fits``) and the level of
    their intervals; none when the fit has no ensemble or another ``model`` is given.
    """
    state = keys.fit_state(adata, key)
    if model is not None or "ensemble" not in state:
        return [], 0.0
    return _stored_ensemble(adata, key).members, float(state["ensemble"].get("interval", 0.9))


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
    errors name the argument ``name``.
    """
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


def neighbor_weights(points: np.ndarray, reference: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
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
    neighbours' indices and weights, each pushed cell's mass and whether it is off the data.
    """
    ref_points = fitted.rep[reference]
    indices, weights, masses, off = [], [], [], []
    bar = progress_bar(len(sources), desc, progress)
    for start in range(0, len(sources), _CHUNK):
        rows = sources[start : start + _CHUNK]
        pushed, mass = fitted.model.push(
            fitted.rep[rows], float(t_from), float(t_to), return_mass=True, solver=solver, step_size=step_size
        )
        index, weight = neighbor_weights(pushed, ref_points, n_neighbors)
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
