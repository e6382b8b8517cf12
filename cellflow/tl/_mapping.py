"""Move populations between time points: push and pull.

A distribution over the cells of one measured time point (a group, a score, any non-negative
weights) is carried through a fitted flow to other times, forward (:func:`push`) or backward
(:func:`pull`). Cells
carry their mass: for methods that learn growth a cell's weight is multiplied by its growth on
the way, so totals tell how a population grows.

Push and pull share one coupling between two measured time points ``s < t``: every cell ``i``
of ``s`` is pushed to ``t`` with its mass ``m_i`` and spread over its nearest real cells ``j``
of ``t`` with the neighbour weights ``W_ij`` of :mod:`cellflow.tl` (each row sums to
one), so it sends ``P_ij = m_i W_ij`` to cell ``j``, which receives ``c_j = sum_i P_ij`` in all.

- Push of weights ``w`` on the cells of ``s``: cell ``j`` of ``t`` gets ``q_j = sum_i w_i P_ij``.
- Pull of weights ``q`` on the cells of ``t``: each cell ``j`` hands its weight back to the
  cells that send it mass, in proportion to what they send, counted in cells of ``s``:
  ``p_i = sum_j W_ij q_j / c_j``. Pulling what a push gave thus returns where it came from:
  uniform weights push to ``q = c`` and pull back to ``p_i = sum_j W_ij = 1``, with or without
  growth. Weight on cells of ``t`` that no cell of ``s`` reaches (``c_j = 0``) cannot be handed
  back; its share is reported (:attr:`Moved.unreached`).

A time with no measured cells has no coupling: there, the cells that carry the weight are
integrated to it, and their positions and weights are returned (nothing is written).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import integer, number
from .._utils import copy_option
from ..model import CellFlow
from . import _chain as chain
from . import _keys as keys
from ._fitted import _fitted
from ._support import warn_beyond_times, warn_off_data

_UNREACHED_WARNING = 0.05  # share of pulled weight lost to unreached cells above which pull warns


@dataclass(repr=False)
class Moved:
    """A distribution over cells carried through the flow: what :func:`push` and :func:`pull` return.

    Attributes
    ----------
    from_time
        The measured time point the weights started from.
    times, measured
        The target times, as given, and whether each is a measured time point.
    distribution
        DataFrame indexed by ``obs_names`` with one column per measured target time (labelled by
        the time): the weight arriving at that time's cells, normalised to sum to one there; NaN
        at the cells of other times.
    mass
        ``distribution`` before normalising, in the units of the starting weights (for a group:
        its number of cells). Push: what the population has become (with growth). Pull: how many
        cells of that earlier time it took.
    cells, points, masses
        ``obs_names`` of the cells of ``from_time`` that carry weight, their positions
        ``(len(times), n_cells, d)`` in ``use_rep`` at each target time, and the weight each
        carries there ``(len(times), n_cells)``: its starting weight times its change of mass.
    unreached
        One per target time: for a pull to a measured time, the share of the weight on cells that
        no earlier cell reaches (left out); otherwise 0.
    use_rep
        The representation of ``points``.
    across
        How several intervals were crossed, ``"chain"`` or ``"flow"`` (see :mod:`cellflow.tl`).
    off_data_share
        One per target time: the share of the cells pushed to it that left the data
        (:mod:`cellflow.tl`).
    disagreement, total_ratio
        One per target time across several intervals (0 and 1 within one): the total-variation
        distance between the chain's and the flow's distributions (NaN at a time not measured)
        and the ratio of the flow's total mass to the chain's.
    """

    from_time: float
    times: np.ndarray
    measured: np.ndarray
    distribution: pd.DataFrame
    mass: pd.DataFrame
    cells: pd.Index
    points: np.ndarray
    masses: np.ndarray
    unreached: np.ndarray
    use_rep: str
    across: str = "flow"
    off_data_share: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    total_ratio: np.ndarray | None = None

    def __repr__(self) -> str:
        times = ", ".join(f"{t:g}" for t in self.times)
        return f"Moved({len(self.cells)} cells of {self.from_time:g} to [{times}], {int(self.measured.sum())} measured)"

    def to_frame(self) -> pd.DataFrame:
        """The population's trajectory: one row per target time with ``time``, ``measured``, its
        total ``mass`` and its mass-weighted mean position (one column per dimension).
        """
        total = self.masses.sum(axis=1)
        weighted = np.einsum("tn,tnd->td", self.masses, np.nan_to_num(self.points))
        centre = weighted / np.where(total > 0, total, np.nan)[:, None]
        basis = self.use_rep[2:] if self.use_rep.startswith("X_") else self.use_rep
        frame = pd.DataFrame({"time": self.times, "measured": self.measured, "mass": total})
        coords = pd.DataFrame(centre, columns=[f"{basis}{i + 1}" for i in range(centre.shape[1])])
        return pd.concat([frame, coords], axis=1)


# -- arguments ---------------------------------------------------------------------------------
def _target_times(to_time, from_time: float, later: bool, other: str) -> tuple[np.ndarray, bool]:
    """The target times as floats, and whether a single time (not a list) was given."""
    single = np.ndim(to_time) == 0
    values = [to_time] if single else list(to_time)
    if not values:
        raise ValueError("to_time is an empty list; pass a time or a list of times")
    times = np.array([number("to_time", t) for t in values])
    wrong = times[times <= from_time] if later else times[times >= from_time]
    if wrong.size:
        raise ValueError(
            f"to_time={wrong[0]:g} must be {'later' if later else 'earlier'} than from_time={from_time:g}; "
            f"for the other direction use cellflow.tl.{other}"
        )
    if np.unique(times).size != times.size:
        raise ValueError(f"to_time={values} repeats a time; give each time once")
    return times, single


def _obs_column(adata: AnnData, column: str, argument: str) -> pd.Series:
    """``adata.obs[column]``, else a ``KeyError`` naming ``argument``."""
    if column not in adata.obs:
        raise KeyError(
            f"{argument}={column!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); "
            "name an obs column"
        )
    return adata.obs[column]


def _source_weights(adata: AnnData, source, rows: np.ndarray, from_time: float) -> np.ndarray:
    """Non-negative weights on the cells ``rows`` of ``from_time`` (see :func:`push` for the forms)."""
    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], str):
            raise ValueError(f"source={source!r}: a tuple must be (obs column, category or list of categories)")
        column, wanted = source
        labels = _obs_column(adata, column, "source")
        wanted = [str(w) for w in np.atleast_1d(np.asarray(wanted, dtype=object))]
        known = sorted({str(v) for v in labels.dropna().unique()})
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(
                f"source={source!r}: {unknown} are not values of obs[{column!r}] (values: {known[:20]}); "
                "pass categories of that column"
            )
        values = (labels.notna() & labels.astype(str).isin(wanted)).to_numpy()[rows]
    elif isinstance(source, str):
        labels = _obs_column(adata, source, "source")
        if not (pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels)):
            raise ValueError(
                f"source={source!r} is a column of labels, not of weights; pass source=({source!r}, 'a category') "
                "or a list of categories in place of 'a category'"
            )
        values = labels.to_numpy(dtype=float, na_value=np.nan)[rows]
    else:
        array = np.asarray(source)
        if array.ndim != 1 or len(array) not in (adata.n_obs, len(rows)) or array.dtype.kind not in "biuf":
            raise ValueError(
                f"source is an array of dtype {array.dtype} and shape {array.shape}; pass numbers or booleans with "
                f"one entry per cell ({adata.n_obs}) or per cell of from_time={from_time:g} ({len(rows)}), "
                "an obs column name, or (obs column, categories)"
            )
        values = array[rows] if len(array) == adata.n_obs else array
    values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=np.inf, neginf=-np.inf)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"source has negative or infinite weights at from_time={from_time:g}; use finite weights >= 0")
    if values.sum() <= 0:
        raise ValueError(
            f"source puts no weight on the {len(rows)} cells of from_time={from_time:g}; choose cells of that time"
        )
    return values


# -- computation -------------------------------------------------------------------------------
def _move(adata, source, from_time, to_time, later, key, key_added, n_neighbors, overwrite, model, solver,
          step_size, progress, across) -> Moved:
    """Push (``later``) or pull the weights ``source`` of ``from_time`` to ``to_time``; see :func:`push`."""
    direction = "push" if later else "pull"
    from_time = number("from_time", from_time)
    times, single = _target_times(to_time, from_time, later, "pull" if later else "push")
    n_neighbors, across = integer("n_neighbors", n_neighbors), chain.checked_across(across)
    fitted = _fitted(adata, key, model)
    course = fitted.course
    rows = course.indices[course.index_of(from_time)]
    weights = _source_weights(adata, source, rows, from_time)
    warn_beyond_times(times, course.times, direction, course.time_unit, stacklevel=5)
    measured = np.array([np.isclose(course.times, t).any() for t in times])
    key_added = key_added or f"{key}_{direction}"
    names = {k: key_added if single else f"{key_added}_{times[k]:g}" for k in np.flatnonzero(measured)}
    written = [f"obs/{name}" for name in names.values()]
    keys.claim(adata, key, written, overwrite)

    settings = (fitted, rows, weights, times, measured, later, n_neighbors, solver, step_size, progress)
    answers = {"flow": chain.flow_carry(*settings)}
    several = [chain.spans_several(course, from_time, t) for t in times]
    if any(several):
        answers["chain"] = chain.chain_carry(*settings)
    result = answers[across if any(several) else "flow"]
    disagreement, total_ratio = chain.compare_carried(answers, weights, several, measured)
    mass = pd.DataFrame(index=adata.obs_names.copy())
    for k in names:
        column = np.full(adata.n_obs, np.nan)
        column[course.indices[course.index_of(times[k])]] = result.received[k]
        mass[times[k]] = column
    if result.unreached.max() > _UNREACHED_WARNING:
        warnings.warn(
            f"pull: {result.unreached.max():.0%} of the weight sits on cells of from_time={from_time:g} that no cell "
            "of the earlier time reaches, and is left out; raise n_neighbors to reach more of them",
            stacklevel=4,
        )
    warn_off_data(float(result.off_data_share.max()), direction, stacklevel=5)
    farthest = np.abs(np.log(total_ratio)).argmax()
    chain.warn_disagreement(direction, np.nan_to_num(disagreement).max(), total_ratio[farthest], stacklevel=5)
    distribution = mass / mass.sum(axis=0)
    carriers = weights > 0
    for k, name in names.items():
        adata.obs[name] = distribution[times[k]].to_numpy()
    keys.record(adata, key, written)
    return Moved(
        from_time=from_time, times=times, measured=measured, distribution=distribution, mass=mass,
        cells=adata.obs_names[rows[carriers]].copy(), points=result.points[:, carriers],
        masses=weights[carriers] * result.masses[:, carriers], unreached=result.unreached, use_rep=fitted.use_rep,
        across=across, off_data_share=result.off_data_share, disagreement=disagreement, total_ratio=total_ratio,
    )


# -- public functions --------------------------------------------------------------------------
@copy_option
def push(
    adata: AnnData,
    source,
    from_time: float,
    to_time,
    *,
    key: str = "cellflow",
    key_added: str | None = None,
    n_neighbors: int = 15,
    overwrite: bool = False,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
    across: str = "chain",
) -> Moved | AnnData:
    """Carry a distribution over the cells of ``from_time`` forward through the flow.

    Every cell of ``from_time`` is integrated to the target times (so results do not depend on
    which cells carry weight) and, at a measured time, hands its weight, times its growth, to
    its nearest real cells there (see :mod:`cellflow.tl`). Pushing a group one-hot gives,
    summed over the groups of ``to_time``, its rows of :func:`cellflow.tl.transitions`.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    source
        The weights, read at the cells of ``from_time`` (other cells are ignored, missing values
        count as zero): an ``obs`` column of numbers (or booleans); ``(column, category)`` or
        ``(column, [categories])`` for the cells of those categories, one each; a boolean mask
        or numeric array with one entry per cell, or per cell of ``from_time``.
    from_time
        A measured time point.
    to_time
        A time after ``from_time``, measured or not, or a list of such times.
    key
        ``key_added`` of the fit.
    key_added
        ``obs`` column of the result at a measured ``to_time``; default ``"{key}_push"``. For a
        list of times, one column per measured time, ``f"{key_added}_{t:g}"``. The columns hold
        the normalised distribution (summing to one over that time's cells, NaN at other cells)
        and are recorded in the ledger of the fit, as for :func:`cellflow.tl.fate`.
    n_neighbors
        Real cells per pushed cell.
    overwrite
        Replace ``obs`` columns of those names that another tool (or another fit) wrote.
    model, solver, step_size, progress, across
        As for :func:`cellflow.tl.fate`. Across measured times, ``"chain"`` carries the weights
        interval by interval on the measured cells (:mod:`cellflow.tl`), so population sizes
        are products of one-interval mass changes; ``points`` are then mass-weighted means of the
        descendants' positions.
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).

    Returns
    -------
    A :class:`Moved`: ``distribution`` and ``mass`` (unnormalised, with growth) per measured
    target time, the carried cells' ``points`` and ``masses`` at every target time (all there
    is at an unmeasured time, where nothing is written), and :meth:`Moved.to_frame`, the
    population's trajectory. Nothing is written when a check fails. With ``copy=True``, the
    copy written into instead.
    """
    return _move(adata, source, from_time, to_time, True, key, key_added, n_neighbors, overwrite, model, solver,
                 step_size, progress, across)


@copy_option
def pull(
    adata: AnnData,
    source,
    from_time: float,
    to_time,
    *,
    key: str = "cellflow",
    key_added: str | None = None,
    n_neighbors: int = 15,
    overwrite: bool = False,
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
    progress: bool | None = None,
    across: str = "chain",
) -> Moved | AnnData:
    """Carry a distribution over the cells of ``from_time`` backward: where it came from.

    At a measured earlier time each cell's weight is handed back to the cells that send it mass
    under the forward coupling of :func:`push`, in proportion to what they send (see
    :mod:`cellflow.tl`), so pulling a pushed distribution returns the one pushed. The
    cells that carry weight are also integrated backward to every target time (``points``,
    ``masses``: their weight times their change of mass, e.g. below one for dividing cells).

    Parameters
    ----------
    adata, source, key, n_neighbors, overwrite, model, solver, step_size, progress, across, copy
        As for :func:`push`.
    from_time
        A measured time point.
    to_time
        A time before ``from_time``, measured or not, or a list of such times.
    key_added
        As for :func:`push`; default ``"{key}_pull"``.

    Returns
    -------
    A :class:`Moved`, as for :func:`push`; ``mass`` counts cells of the earlier time, and
    ``unreached`` the share of the weight that no earlier cell reaches (a warning names it
    when above 5%). With ``copy=True``, the copy written into instead.
    """
    return _move(adata, source, from_time, to_time, False, key, key_added, n_neighbors, overwrite, model, solver,
                 step_size, progress, across)
