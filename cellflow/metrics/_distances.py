"""Distances between point clouds: exact Wasserstein (weighted) and MMD."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch


def _masses(weights: npt.ArrayLike | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return weights / weights.sum()


def wasserstein(x: npt.ArrayLike, y: npt.ArrayLike, p: int = 1, x_weights: npt.ArrayLike | None = None,
                y_weights: npt.ArrayLike | None = None) -> float:
    """Exact ``p``-Wasserstein distance (``ot.emd2``) with Euclidean ground metric.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    p
        1 (earth mover's distance) or 2.
    x_weights, y_weights
        Optional non-negative masses, normalised to sum to one (uniform when ``None``).

    Notes
    -----
    Forms the ``n x m`` cost matrix: meant for evaluation-sized samples.
    """
    import ot
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cost = ot.dist(x, y, metric="euclidean" if p == 1 else "sqeuclidean")
    value = ot.emd2(_masses(x_weights, len(x)), _masses(y_weights, len(y)), cost, numItermax=10_000_000)
    return float(value if p == 1 else np.sqrt(max(value, 0.0)))


def w1(x: npt.ArrayLike, y: npt.ArrayLike, x_weights: npt.ArrayLike | None = None,
       y_weights: npt.ArrayLike | None = None) -> float:
    """Exact earth mover's distance; see :func:`wasserstein`."""
    return wasserstein(x, y, 1, x_weights, y_weights)


def w2(x: npt.ArrayLike, y: npt.ArrayLike, x_weights: npt.ArrayLike | None = None,
       y_weights: npt.ArrayLike | None = None) -> float:
    """Exact 2-Wasserstein distance; see :func:`wasserstein`."""
    return wasserstein(x, y, 2, x_weights, y_weights)


def mmd(x: npt.ArrayLike, y: npt.ArrayLike, x_weights: npt.ArrayLike | None = None,
        y_weights: npt.ArrayLike | None = None, bandwidths: Sequence[float] | None = None) -> float:
    """Maximum mean discrepancy with a sum of RBF kernels ``exp(-|a-b|^2 / (2 h^2))``.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    x_weights, y_weights
        Optional masses (uniform when ``None``).
    bandwidths
        Kernel widths ``h``. Default: the median distance between all pooled points times
        0.5, 1 and 2.

    Returns
    -------
    The (biased, V-statistic) MMD, the square root of the squared discrepancy.
    """
    import ot
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a, b = _masses(x_weights, len(x)), _masses(y_weights, len(y))
    sq = {
        "xx": ot.dist(x, x),
        "yy": ot.dist(y, y),
        "xy": ot.dist(x, y),
    }
    if bandwidths is None:
        pooled = np.concatenate([sq["xx"].ravel(), sq["yy"].ravel(), sq["xy"].ravel()])
        median = float(np.sqrt(np.median(pooled))) or 1.0
        bandwidths = (0.5 * median, median, 2 * median)
    total = 0.0
    for h in bandwidths:
        gamma = 1.0 / (2.0 * h**2)
        total += (
            a @ np.exp(-gamma * sq["xx"]) @ a
            + b @ np.exp(-gamma * sq["yy"]) @ b
            - 2 * a @ np.exp(-gamma * sq["xy"]) @ b
        )
    return float(np.sqrt(max(total, 0.0)))


def energy_distance(x: torch.Tensor, x_weights: torch.Tensor, y: torch.Tensor,
                    y_weights: torch.Tensor) -> torch.Tensor:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` of two weighted point clouds (torch tensors).

    Zero exactly when the two distributions agree; cheap (three distance matrices, no solver),
    so it is what training measures when it decides when to stop. Weights sum to one.
    """
    import torch

    def mean_distance(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        return wa @ torch.cdist(a, b) @ wb

    return 2 * mean_distance(x, x_weights, y, y_weights) - mean_distance(x, x_weights, x, x_weights) - \
        mean_distance(y, y_weights, y, y_weights)


def straightness(field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t0: float, t1: float,
                 *, method: str = "dopri5", step_size: float | None = None) -> float:
    """Kinetic energy over squared displacement of the paths of ``dx/dt = field(x, t)`` from ``t0`` to ``t1``.

    ``E[integral |v|^2 dt] (t1 - t0) / E|x(t1) - x(t0)|^2``, the energy integrated along each
    path by the same solver that moves it. By the Cauchy-Schwarz inequality each path's
    ``|x(t1) - x(t0)|^2`` is at most ``(t1 - t0) integral |v|^2 dt``, with equality for a
    straight path at constant speed, so the value is at least one and equals one for a field
    whose paths are all straight at constant speed; the straightness error is the value minus
    one. Curved paths need many solver steps, straight ones a single Euler step. The value does
    not depend on the units of ``x`` or of time.

    Parameters
    ----------
    field
        ``field(x, t) -> dx/dt`` on torch tensors (``x`` ``(n, d)``, ``t`` a scalar tensor).
    x
        Starting points at ``t0``: a tensor ``(n, d)``.
    t0, t1
        Start and end times.
    method, step_size
        Solver and fixed step, as for :func:`cellflow.solvers.integrate`.
    """
    import torch

    from ..solvers import integrate

    def with_energy(state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = field(state[:, :-1], t)
        return torch.cat([v, (v**2).sum(dim=1, keepdim=True)], dim=1)

    with torch.no_grad():
        start = torch.cat([x, torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        times = torch.tensor([float(t0), float(t1)], dtype=x.dtype)
        end = integrate(with_energy, start, times, method=method, step_size=step_size)[-1]
        displacement = ((end[:, :-1] - x) ** 2).sum(dim=1).mean()
        energy = end[:, -1].mean() * (float(t1) - float(t0))  # both negative when integrating backward
    if not displacement > torch.finfo(x.dtype).eps * (x**2).sum(dim=1).mean():  # above rounding of the positions
        raise ValueError("the paths do not move between t0 and t1, so their straightness is undefined")
    return float(energy / displacement)


def mass_error(predicted_ratio: float, n_start: float, n_end: float) -> float:
    """Relative error of a predicted population-size ratio: ``|M_hat - n_end/n_start| / (n_end/n_start)``."""
    truth = n_end / n_start
    return abs(predicted_ratio - truth) / truth
