"""Entropy of a point cloud, and the noise that keeps a path's entropy from collapsing.

:func:`knn_entropy` estimates the differential entropy of a cloud of cells (Kozachenko and
Leonenko's nearest-neighbour estimator). :func:`noise_level` uses it to choose, for one interval
of a time course, how much noise the entropy-controlled path
(:class:`cellflow.paths.EntropyControlledPath`) adds to the straight lines between its coupled
cells: the least that keeps the entropy ``H(s)`` of the cells on the lines above the bound

    ``H(s) >= (1 - s) H(0) + s H(1) - d * entropy_rate * dt * min(s, 1 - s)``

at every fraction ``s`` of the interval of length ``dt`` in ``d`` dimensions. In the limit of many
cells, the straight lines of an exact OT plan never fall below the straight line between the
two ends' entropies (entropy is concave along such displacement interpolations); between finite
samples in many dimensions they do, as the midpoints of imperfectly matched cells regress to
their mean. ``entropy_rate`` is how fast, per unit of time and per dimension, the entropy may
fall below that line, counted from the nearer observed time point: ``exp(-entropy_rate * t)`` is
the factor by which the population's geometric-mean spread may shrink in time ``t``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

NEIGHBOUR = 3  # the k of the k-th nearest neighbour
ROWS_PER_BLOCK = 1024  # rows of the distance matrix formed at once
GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # fractions of an interval where the bound is checked
DEFAULT_SHRINK = 0.95  # default: spread may shrink to 95% of the line by the middle of a median interval
MAX_LEVEL = 4.0  # the most noise chosen, in units of the pairs' own displacement spread
BISECTION_STEPS = 12


def knn_entropy(points: torch.Tensor, k: int = NEIGHBOUR) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy (nats) of the cloud ``points``.

    ``H = psi(n) - psi(k) + log V_d + d * mean(log r_k)``, with ``r_k`` each point's Euclidean
    distance to its ``k``-th nearest neighbour among the others, ``V_d`` the volume of the unit
    ball in ``d`` dimensions and ``psi`` the digamma function. Repeated points are counted once
    (a cloud's entropy is that of its distinct positions). Distances are computed in float64
    on the points' device, ``ROWS_PER_BLOCK`` rows at a time.

    Parameters
    ----------
    points
        ``(n, d)`` tensor.
    k
        Neighbour whose distance is used; larger ``k`` lowers the variance and raises the bias.

    Returns
    -------
    The estimate; for a Gaussian of covariance ``S`` it approaches ``0.5 log det(2 pi e S)``.
    """
    x = torch.unique(torch.as_tensor(points).to(torch.float64), dim=0)
    n, d = x.shape
    if n <= k:
        raise ValueError(f"the entropy of {n} distinct points needs more than k={k} of them")
    logs = []
    for start in range(0, n, ROWS_PER_BLOCK):
        block = x[start : start + ROWS_PER_BLOCK]
        distance = torch.cdist(block, x)
        rows = torch.arange(len(block), device=x.device)
        distance[rows, rows + start] = math.inf  # a point is not its own neighbour
        logs.append(torch.log(distance.topk(k, dim=1, largest=False).values[:, -1]))
    log_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    digamma = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return float(digamma[0] - digamma[1] + log_ball + d * torch.cat(logs).mean())


def default_entropy_rate(times: npt.ArrayLike) -> float:
    """``entropy_rate`` when none is given: ``2 log(1 / 0.95) / median interval``.

    By the middle of an interval of median length the geometric-mean spread of the cells may
    then shrink to 95% of the straight line between its two ends, and no further: a bound in
    the time course's own unit of time, and per dimension, so that it means the same whatever
    the units and the dimension of the representation. The 5% leave room for the estimator's
    own spread and for real contraction that the data show.
    """
    return 2 * math.log(1 / DEFAULT_SHRINK) / float(np.median(np.diff(np.asarray(times, dtype=np.float64))))


def displacement_factor(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` (``L L^T = C``) of the covariance ``C`` of the displacements ``x1 - x0``.

    The path's noise is ``L eps`` times a level: shaped like the pairs' own spread in
    displacement, which is what a straight line between imperfectly matched cells loses (for
    two samples of one distribution with correlation ``rho``, the cells on the lines at ``s``
    lack ``s (1 - s) C`` of its covariance). A ridge of ``1e-6`` of the mean variance keeps
    ``C`` positive definite.
    """
    steps = (x1 - x0).to(torch.float64)
    covariance = torch.cov(steps.T).reshape(steps.shape[1], steps.shape[1])
    ridge = 1e-6 * float(covariance.diagonal().mean()) + 1e-12
    covariance += ridge * torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
    return torch.linalg.cholesky(covariance)


def noise_level(x0: torch.Tensor, x1: torch.Tensor, shaped_noise: torch.Tensor, allowed: float) -> float:
    """The least level ``c`` for which the cells ``(1-s) x0 + s x1 + c sqrt(s (1-s)) shaped_noise``
    keep the entropy bound at every fraction ``s`` of :data:`GRID`.

    Parameters
    ----------
    x0, x1
        ``(n, d)`` coupled cells at the two ends of the interval.
    shaped_noise
        ``(n, d)`` noise of unit level (e.g. ``eps @ L.T`` of :func:`displacement_factor`), held
        fixed while the level is searched, so the entropy grows steadily with the level.
    allowed
        How far, in nats, the entropy may fall below the line between the ends per unit
        fraction of the interval (``d * entropy_rate * dt``).

    Returns
    -------
    ``c`` in ``[0, MAX_LEVEL]``, to ``MAX_LEVEL / 2**12`` (bisection, with the
    estimator's own randomness held fixed); 0 when the straight lines keep the bound.
    """
    start, end = knn_entropy(x0), knn_entropy(x1)
    bounds = [(1 - s) * start + s * end - allowed * min(s, 1 - s) for s in GRID]

    def keeps_bound(level: float) -> bool:
        for s, bound in zip(GRID, bounds):
            cells = (1 - s) * x0 + s * x1 + level * math.sqrt(s * (1 - s)) * shaped_noise
            if knn_entropy(cells) < bound:
                return False
        return True

    if keeps_bound(0.0):
        return 0.0
    low, high = 0.0, MAX_LEVEL
    if not keeps_bound(high):
        return high
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if keeps_bound(middle) else (middle, high)
    return high
