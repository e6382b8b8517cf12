"""Distances between point clouds: exact Wasserstein (weighted) and MMD."""

from __future__ import annotations

import numpy as np
import ot


def _masses(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return weights / weights.sum()


def wasserstein(x, y, p: int = 1, x_weights=None, y_weights=None) -> float:
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
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cost = ot.dist(x, y, metric="euclidean" if p == 1 else "sqeuclidean")
    value = ot.emd2(_masses(x_weights, len(x)), _masses(y_weights, len(y)), cost, numItermax=10_000_000)
    return float(value if p == 1 else np.sqrt(max(value, 0.0)))


def w1(x, y, x_weights=None, y_weights=None) -> float:
    """Exact earth mover's distance; see :func:`wasserstein`."""
    return wasserstein(x, y, 1, x_weights, y_weights)


def w2(x, y, x_weights=None, y_weights=None) -> float:
    """Exact 2-Wasserstein distance; see :func:`wasserstein`."""
    return wasserstein(x, y, 2, x_weights, y_weights)


def mmd(x, y, x_weights=None, y_weights=None, bandwidths=None) -> float:
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


def energy_distance(x, x_weights, y, y_weights):
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` of two weighted point clouds (torch tensors).

    Zero exactly when the two distributions agree; cheap (three distance matrices, no solver),
    so it is what training measures when it decides when to stop. Weights sum to one.
    """
    import torch

    def mean_distance(a, wa, b, wb):
        return wa @ torch.cdist(a, b) @ wb

    return 2 * mean_distance(x, x_weights, y, y_weights) - mean_distance(x, x_weights, x, x_weights) - \
        mean_distance(y, y_weights, y, y_weights)
