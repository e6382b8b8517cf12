"""Across several intervals: compose the couplings of the measured intervals, or follow the flow.

Between two measured time points ``t_a < t_b`` with measured times in between, an analysis can
answer in two ways (the parameter ``across`` of :func:`cellflow.tl.fate`,
:func:`cellflow.tl.ancestors`, :func:`cellflow.tl.transitions`, :func:`cellflow.tl.push` and
:func:`cellflow.tl.pull`):

- ``"chain"`` (default): the flow is used within each measured interval only. Interval ``k`` has
  the coupling ``T_k = diag(m) W`` (``n_k x n_{k+1}``): each cell of ``t_k`` pushed to ``t_{k+1}``
  with its mass ``m`` and spread over the measured cells there by the neighbour weights ``W`` of
  :mod:`cellflow.tl`. The answer across the span composes them, ``T_a T_{a+1} ... T_{b-1}``
  (the Markov chain of Waddington-OT, moscot and CellRank), so every step restarts on measured
  cells and population sizes are the product of per-interval mass changes read on measured
  cells. A time that is not measured is reached by the flow within its own interval, from the
  measured cells of the time point before it (after it, going backward).
- ``"flow"``: cells are integrated over the whole span at once.

Within one interval both are the same computation. Across several, both answers are computed
and their disagreement is recorded (mean total-variation distance between per-cell
distributions; for push and pull also the ratio of the pushed totals); analyses warn with
:class:`DisagreementWarning` above :data:`DISAGREEMENT_WARNING` (or a ratio of totals beyond
:data:`TOTAL_RATIO_WARNING`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._utils import progress_bar
from ._fitted import _Fitted, _push_and_match, _soft_labels, neighbor_weights

ACROSS = ("chain", "flow")
DISAGREEMENT_WARNING = 0.1  # mean total-variation distance between the chain's and the flow's answers
TOTAL_RATIO_WARNING = 2.0  # ratio of the flow's to the chain's pushed totals (either way) above which push warns
_CHUNK = 8192  # cells integrated together (the chunks of cellflow.tl)


class DisagreementWarning(UserWarning):
    """Across several intervals the chain of couplings and the flow give different answers."""


def checked_across(across) -> str:
    """``across`` if it names a way to cross intervals, else a ``ValueError`` saying what each means."""
    if not isinstance(across, str) or across not in ACROSS:
        raise ValueError(
            f"across={across!r} is unknown; choose 'chain' (compose the couplings of the measured intervals: the flow "
            "within each interval only) or 'flow' (integrate the flow over the whole span)"
        )
    return across


def spans_several(course, t_from: float, t_to: float) -> bool:
    """Whether a measured time point lies strictly between ``t_from`` and ``t_to`` (several intervals)."""
    low, high = min(t_from, t_to), max(t_from, t_to)
    times = course.times
    return bool(((times > low) & (times < high) & ~np.isclose(times, low) & ~np.isclose(times, high)).any())


def mean_total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of half the L1 distance between two row-stochastic arrays (rows with NaN left out)."""
    distance = 0.5 * np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum(axis=1)
    distance = distance[np.isfinite(distance)]
    return float(distance.mean()) if distance.size else 0.0


def warn_disagreement(analysis: str, distance: float, total_ratio: float = 1.0, stacklevel: int = 3) -> None:
    """Warn with :class:`DisagreementWarning` when the chain's and the flow's answers differ."""
    if distance > DISAGREEMENT_WARNING or not 1 / TOTAL_RATIO_WARNING <= total_ratio <= TOTAL_RATIO_WARNING:
        warnings.warn(
            f"{analysis}: across several intervals the chain of interval couplings and the flow disagree (mean "
            f"total-variation distance {distance:.2f}, above {DISAGREEMENT_WARNING:g}; ratio of the flow's to the "
            f"chain's totals {total_ratio:.3g}): the flow's long pushes likely left the data. Trust across='chain', "
            "or refit with rollout fitting (CellFlow(rollout=...))",
            DisagreementWarning,
            stacklevel=stacklevel,
        )


def _matrix(index: np.ndarray, values: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """CSR matrix with ``values[i]`` at columns ``index[i]`` of row ``i`` (both ``(n, k)``)."""
    n_rows, k = index.shape
    matrix = sp.csr_matrix((values.ravel(), index.ravel(), np.arange(n_rows + 1) * k), shape=(n_rows, n_cols))
    matrix.sum_duplicates()
    return matrix


def interval_step(fitted: _Fitted, k: int, j: int, n_neighbors: int, solver, step_size, progress,
                  with_mass: bool = True, reference: np.ndarray | None = None):
    """The coupling of one measured interval: cells of time point ``k`` pushed to the adjacent one ``j``.

    Returns the CSR matrix ``diag(m) W`` (``with_mass``) or ``W`` onto the cells ``reference`` of
    ``j`` (default all of them), and whether each pushed cell is off the data.
    """
    course = fitted.course
    targets = course.indices[j] if reference is None else reference
    index, weights, mass, off = _push_and_match(
        fitted, course.indices[k], course.times[k], course.times[j], targets, n_neighbors, solver, step_size,
        progress, "interval",
    )
    return _matrix(index, weights * mass[:, None] if with_mass else weights, len(targets)), off


def chained_coupling(fitted: _Fitted, a: int, b: int, n_neighbors: int, solver, step_size, progress):
    """``T_a T_{a+1} ... T_{b-1}`` (``a < b``, time point indices) and the off-data share of its pushes."""
    product, offs = None, []
    for k in range(a, b):
        step, off = interval_step(fitted, k, k + 1, n_neighbors, solver, step_size, progress)
        product = step if product is None else (product @ step).tocsr()
        offs.append(off)
    return product, float(np.concatenate(offs).mean())


def chained_labels(fitted: _Fitted, start: int, end: int, reference: np.ndarray, codes: np.ndarray,
                   n_groups: int, n_neighbors: int, solver, step_size, progress) -> tuple[np.ndarray, float]:
    """Per cell of time point ``start``, the probability of each group of ``end`` through the chain.

    Forward (``start < end``) each interval's coupling carries mass, so a cell's descendants count
    as many times as they divide; backward (ancestors) the rows of ``W`` are chained, each cell
    having one ancestor. The last step matches onto the labelled cells ``reference`` of ``end``
    (their group ``codes``). Returns the probabilities and the off-data share of the pushes.
    """
    forward = end > start
    step = 1 if forward else -1
    course = fitted.course
    index, weights, mass, off = _push_and_match(
        fitted, course.indices[end - step], course.times[end - step], course.times[end], reference, n_neighbors,
        solver, step_size, progress, "chain",
    )
    carried = _soft_labels(index, weights, codes, n_groups) * (mass[:, None] if forward else 1.0)
    offs = [off]
    for k in range(end - step, start, -step):
        matrix, off = interval_step(fitted, k - step, k, n_neighbors, solver, step_size, progress, with_mass=forward)
        carried = matrix @ carried
        offs.append(off)
    totals = carried.sum(axis=1, keepdims=True)
    return carried / np.where(totals > 0, totals, np.nan), float(np.concatenate(offs).mean())


# -- push and pull -------------------------------------------------------------------------------
@dataclass
class Carried:
    """What push or pull computed, before it is written: see :class:`cellflow.tl._mapping.Moved`."""

    points: np.ndarray  # (len(times), n_cells, d), every cell of from_time
    masses: np.ndarray  # (len(times), n_cells): each cell's change of mass (its weight not yet applied)
    received: dict  # target position -> weight on the cells of that measured time
    unreached: np.ndarray  # per target time
    off_data_share: np.ndarray  # per target time


def carry(fitted: _Fitted, rows, from_time, times, solver, step_size, progress,
          desc) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(len(times), n, d)`` and masses ``(len(times), n)`` of the cells ``rows`` of
    ``from_time`` integrated to ``times`` (in any order, all on one side of ``from_time``).
    """
    order = np.argsort(times if times[0] > from_time else -times)
    points = np.empty((len(times), len(rows), fitted.rep.shape[1]))
    masses = np.empty((len(times), len(rows)))
    bar = progress_bar(len(rows), desc, progress)
    for start in range(0, len(rows), _CHUNK):  # the chunks of _push_and_match: the same numbers
        chunk = slice(start, start + _CHUNK)
        path, mass = fitted.model.transport(
            fitted.rep[rows[chunk]], np.r_[from_time, times[order]], solver=solver, step_size=step_size
        )
        points[order, chunk], masses[order, chunk] = path[1:], mass[1:]
        bar.update(len(rows[chunk]))
    bar.close()
    return points, masses


def _spread(index: np.ndarray, amounts: np.ndarray, n: int) -> np.ndarray:
    """Per reference cell, the sum of the ``amounts`` sent to it by ``index`` (both ``(m, k)``)."""
    return np.bincount(index.ravel(), weights=amounts.ravel(), minlength=n)


def _pull_step(fitted, earlier: int, later: int, n_neighbors, solver, step_size, progress):
    """The pull of one interval as a matrix from the cells of ``later`` to those of ``earlier``
    (``diag(1 / c) W^T``, see :mod:`cellflow.tl`), and which cells of ``later`` nothing reaches.
    """
    coupling, _ = interval_step(fitted, earlier, later, n_neighbors, solver, step_size, progress)
    reach = np.asarray(coupling.sum(axis=0)).ravel()
    weights = coupling.multiply(1.0 / np.asarray(coupling.sum(axis=1))).tocsr()  # W: rows of diag(m) W over m
    inverse = np.divide(1.0, reach, out=np.zeros_like(reach), where=reach > 0)
    return sp.diags(inverse) @ weights.T.tocsr(), reach <= 0


def flow_carry(fitted: _Fitted, rows, weights, times, measured, later, n_neighbors, solver, step_size,
               progress) -> Carried:
    """Push (``later``) or pull the weights on the cells ``rows`` by integrating over the whole span."""
    course = fitted.course
    from_time = float(course.obs_times[rows[0]])
    direction = "push" if later else "pull"
    points, growth = carry(fitted, rows, from_time, times, solver, step_size, progress, direction)
    carriers = weights > 0
    received, unreached = {}, np.zeros(len(times))
    off = np.array([fitted.support.off_data(points[k][carriers], times[k]).mean() for k in range(len(times))])
    for k in np.flatnonzero(measured):
        targets = course.indices[course.index_of(times[k])]
        if later:
            index, near = neighbor_weights(points[k][carriers], fitted.rep[targets], n_neighbors)
            received[k] = _spread(index, near * (weights[carriers] * growth[k, carriers])[:, None], len(targets))
        else:  # the forward coupling from the cells of times[k] to those of from_time, transposed
            index, near, sent, _ = _push_and_match(
                fitted, targets, times[k], from_time, rows, n_neighbors, solver, step_size, progress, "coupling"
            )
            reach = _spread(index, near * sent[:, None], len(rows))
            share = np.divide(weights, reach, out=np.zeros_like(weights), where=reach > 0)
            received[k] = (near * share[index]).sum(axis=1)
            unreached[k] = weights[reach <= 0].sum() / weights.sum()
    return Carried(points, growth, received, unreached, off)


def compare_carried(answers: dict, weights, several, measured) -> tuple[np.ndarray, np.ndarray]:
    """Per target time, the total-variation distance between the ``"chain"`` and ``"flow"`` answers'
    distributions (NaN at a time not measured, 0 within one interval) and the ratio of the flow's
    total mass to the chain's (1 within one interval).
    """
    disagreement, total_ratio = np.zeros(len(several)), np.ones(len(several))
    for k in np.flatnonzero(several):
        flow, chained = answers["flow"], answers["chain"]
        total_ratio[k] = (weights @ flow.masses[k]) / (weights @ chained.masses[k])
        disagreement[k] = np.nan
        if measured[k]:
            shares = [answer.received[k] / answer.received[k].sum() for answer in (flow, chained)]
            disagreement[k] = 0.5 * np.abs(shares[0] - shares[1]).sum()
    return disagreement, total_ratio


def chain_carry(fitted: _Fitted, rows, weights, times, measured, later, n_neighbors, solver, step_size,
                progress) -> Carried:
    """Push (``later``) or pull the weights on the cells ``rows`` through the chain of interval couplings.

    Going from the starting time point ``s`` toward a target ``t``, the operators of the measured
    intervals passed (push: ``T_k``; pull: ``diag(1 / c) W^T`` of each interval) carry the weights
    ``u`` over the measured cells; at a measured ``t`` the weight arriving is the result. The cells
    of the last measured time point before ``t`` are integrated to ``t`` by the flow (``y``, their
    mass change ``g``), and each starting cell's position there is the mean of ``y`` over its
    descendants (ancestors, for pull), weighted by what it sends them times ``g``.
    """
    course = fitted.course
    start = course.index_of(float(course.obs_times[rows[0]]))
    step = 1 if later else -1
    operators, lost = {}, {}

    def operator(k):  # from the cells of time point k to those of k + step
        if k not in operators:
            if later:
                operators[k], _ = interval_step(fitted, k, k + 1, n_neighbors, solver, step_size, progress)
                lost[k] = np.zeros(operators[k].shape[0], dtype=bool)
            else:
                operators[k], lost[k] = _pull_step(fitted, k - 1, k, n_neighbors, solver, step_size, progress)
        return operators[k]

    n_dims = fitted.rep.shape[1]
    points, masses = np.empty((len(times), len(rows), n_dims)), np.empty((len(times), len(rows)))
    received, unreached, off = {}, np.zeros(len(times)), np.zeros(len(times))
    for i, t in enumerate(times):
        passed = course.times < t if later else course.times > t
        last = int(np.flatnonzero(passed)[-1] if later else np.flatnonzero(passed)[0])  # measured, just before t
        cells = course.indices[last]
        (y,), (g,) = carry(fitted, cells, course.times[last], np.array([t]), solver, step_size, progress, "chain")
        off[i] = fitted.support.off_data(y, t).mean()
        carried = np.column_stack([g, g[:, None] * y])
        for k in range(last - step, start - step, -step):  # back to the starting cells
            carried = operator(k) @ carried
        masses[i] = carried[:, 0]
        points[i] = carried[:, 1:] / np.where(carried[:, :1] > 0, carried[:, :1], np.nan)
        if measured[i]:
            arrived, kept = weights.astype(float), 1.0
            for k in range(start, course.index_of(t), step):
                matrix, total = operator(k), arrived.sum()
                kept *= 1.0 - arrived[lost[k]].sum() / total if total > 0 else 0.0
                arrived = matrix.T @ arrived
            received[i], unreached[i] = arrived, 1.0 - kept
    return Carried(points, masses, received, unreached, off)
