"""Choosing ``delta``, the length scale of Wasserstein-Fisher-Rao transport, from the data.

Unit: every function here takes positions in one unit (e.g. the representation's) and gives
``delta`` in that same unit; the WFR cost and geodesics depend on distances only through
``distance / delta``, so scaling the data scales the chosen ``delta`` and nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from ..metrics import w1
from ..paths import WFRPath
from ..transport import ExactOTCoupling, WFRCoupling


def default_delta(populations: Sequence[npt.ArrayLike], quantile: float = 0.9, block_size: int = 2048,
                  seed: int = 0) -> float:
    """Default ``delta`` of the WFR cost, from the data.

    The exact balanced OT plan between each pair of neighbouring populations gives
    displacement lengths; ``delta = 2 q / pi`` with ``q`` their ``quantile`` (over all
    intervals), so that 90% of balanced displacements have ``cos^2 >= 1/2`` in the cost and
    the transport horizon ``pi * delta`` is twice that quantile.

    Notes
    -----
    ``delta`` is the model's trade-off between moving and growing, and the snapshots alone do
    not fix it. A pair at distance ``d`` follows a geodesic whose log-mass rate (per interval)
    is ``2 (sqrt(m1/m0) cos(phi) - 1)`` at its start and ``2 (1 - sqrt(m0/m1) cos(phi))`` at
    its end, ``phi = d / (2 delta)``: even a cell that neither divides nor dies (``m0 = m1``)
    loses and regains mass on the way (rates ``-2 (1 - cos(phi))`` and ``+2 (1 - cos(phi))``
    at the two time points), and the coupling weighs the cost ``-log cos^2(phi)`` of moving
    against the log-mass changes. Where cells travel a good part of ``delta`` between time
    points, the growth field therefore reflects displacement as well as proliferation; a
    larger ``delta`` separates the two, at the price of explaining a population change by
    moving mass rather than by local birth and death (``delta -> inf``: balanced OT-CFM).
    Which matters more depends on the data: set ``delta`` explicitly when it does.
    """
    rng = np.random.default_rng(seed)
    lengths, masses = [], []
    for x0, x1 in zip(populations[:-1], populations[1:]):
        plan = ExactOTCoupling(block_size).plan(np.asarray(x0), np.asarray(x1), rng=rng).tocoo()
        lengths.append(np.linalg.norm(np.asarray(x0)[plan.row] - np.asarray(x1)[plan.col], axis=1))
        masses.append(plan.data / plan.data.sum())
    length, mass = np.concatenate(lengths), np.concatenate(masses)
    order = np.argsort(length)
    cumulative = np.cumsum(mass[order]) / mass.sum()
    q = length[order][min(int(np.searchsorted(cumulative, quantile)), length.size - 1)]
    return float(2 * q / np.pi) if q > 0 else 1.0


def wfr_interpolation(x0: npt.ArrayLike, x1: npt.ArrayLike, s: float, delta: float, *, reg: float | None = None,
                      n_points: int = 1000, block_size: int = 2048,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, float]:
    """Cells on the static WFR geodesic between two populations, at fraction ``s`` of the interval.

    Solves the WFR coupling (unit mass per cell), follows every pair, and every source cell that
    dies in place, along the closed-form geodesic to ``s``, and draws ``n_points`` positions in
    proportion to the mass there.

    Returns
    -------
    Positions ``(n_points, d)`` and the total mass at ``s`` (``len(x0)`` at ``s = 0``).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    x0, x1 = np.asarray(x0, dtype=np.float64), np.asarray(x1, dtype=np.float64)
    reg = WFRCoupling.default_reg(0.0) if reg is None else reg
    pairs = WFRCoupling(delta, reg=reg, block_size=block_size).sampler(x0, x1, rng=rng).all_pairs()
    assert pairs.m0 is not None and pairs.m1 is not None and pairs.died is not None, "WFR pairs carry masses"
    i, j, died = pairs.i.numpy(), pairs.j.numpy(), pairs.died.numpy()
    start = torch.from_numpy(x0[i])
    end = torch.from_numpy(np.where(died[:, None], x0[i], x1[j]))
    m0 = pairs.m0
    point = WFRPath(delta).pair(
        start, end, torch.full((len(start), 1), float(s), dtype=torch.float64), torch.zeros_like(start), m0, pairs.m1,
    )
    assert point.weight is not None, "a path with masses weighs its points"
    mass = (point.weight * m0).numpy()
    pick = rng.choice(mass.size, n_points, p=mass / mass.sum())
    return point.x.numpy()[pick], float(mass.sum())


DELTA_FACTORS = tuple(2.0 ** (k / 2) for k in range(-2, 5))  # 0.5 to 4 times the displacement rule


def cross_validated_delta(populations: Sequence[npt.ArrayLike], times: Sequence[float] | np.ndarray,
                          factors: Sequence[float] = DELTA_FACTORS, *, reg: float | None = None,
                          n_points: int = 1000, block_size: int = 2048, seed: int = 0) -> float:
    """The ``delta`` whose WFR geodesics best predict every inner time point from its neighbours.

    For each inner time point ``t_k``, the static WFR interpolation between the populations of
    ``t_{k-1}`` and ``t_{k+1}`` (:func:`wfr_interpolation`, at the real-time fraction of ``t_k``)
    is scored by W1 against the cells measured at ``t_k``; the candidates are ``factors`` times
    :func:`default_delta`, and the one with the lowest mean W1 wins. This is leave-one-out on
    the training data itself, with no network trained, on at most ``2 n_points`` cells per time
    point (``n_points`` for the held-out one). With only two time points there is nothing to
    hold out, and :func:`default_delta` is returned. ``reg`` is the WFR coupling's (its default
    when ``None``).
    """
    base = default_delta(populations, block_size=block_size, seed=seed)
    if len(populations) < 3:
        return base
    rng = np.random.default_rng(seed)

    def subsample(x: npt.ArrayLike, n: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]

    truth = [subsample(x, n_points) for x in populations]
    populations = [subsample(x, 2 * n_points) for x in populations]  # a sample suffices to rank candidates
    scores = []
    for factor in factors:
        errors = []
        for k in range(1, len(populations) - 1):
            s = (times[k] - times[k - 1]) / (times[k + 1] - times[k - 1])
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                # the smallest candidates can leave Sinkhorn with underflowing rows: they score badly
                warnings.simplefilter("ignore")
                predicted, _ = wfr_interpolation(populations[k - 1], populations[k + 1], s, factor * base,
                                                 reg=reg, n_points=n_points, block_size=block_size, rng=rng)
            errors.append(w1(predicted, truth[k]))
        scores.append(np.mean(errors))
    return float(base * factors[int(np.argmin(scores))])
