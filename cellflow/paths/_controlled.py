"""The entropy-controlled path: straight lines with the least bridge noise that keeps the entropy of the cells
on them from falling faster than a given rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from .. import _distributed as distributed
from ._entropy import displacement_factor, noise_level
from ._paths import BrownianBridgePath, PathSample

if TYPE_CHECKING:
    from ..transport import PairSampler

CALIBRATION_PAIRS = 1024  # most coupled pairs per interval on which the entropy-controlled path sets its noise
FEWEST_PAIRS = 16  # fewest distinct pairs whose entropy it estimates


def distinct_pairs(sampler: PairSampler, n_source: int, n_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs drawn from ``sampler`` in which no cell appears twice, at most :data:`CALIBRATION_PAIRS`.

    Four times as many pairs as the larger population are drawn in proportion to the plan; of
    those, each source cell keeps its first pair and then each target cell its first remaining
    one. Repeated cells would put several points of the straight lines at one place near an end,
    an entropy of minus infinity that the cells themselves do not have. Pairs of cells that die
    (unbalanced couplings) are left out.
    """
    pairs = sampler.sample(4 * max(n_source, n_target))
    keep = torch.ones_like(pairs.i, dtype=torch.bool) if pairs.died is None else ~pairs.died
    source, target = pairs.i[keep].cpu().numpy(), pairs.j[keep].cpu().numpy()
    first = np.sort(np.unique(source, return_index=True)[1])
    source, target = source[first], target[first]
    first = np.sort(np.unique(target, return_index=True)[1])
    source, target = source[first], target[first]
    return source[:CALIBRATION_PAIRS], target[:CALIBRATION_PAIRS]


class EntropyControlledPath(BrownianBridgePath):
    """Straight lines with the least noise that keeps the cells' entropy from collapsing mid-way.

    On interval ``k`` of length ``dt_k``: ``x_s = (1-s) x0 + s x1 + c_k sqrt(s (1-s)) L_k eps``,
    with target ``u = x1 - x0 + c_k (1 - 2s) / (2 sqrt(s (1-s))) L_k eps`` (a Brownian bridge
    whose noise has the covariance ``c_k^2 L_k L_k^T``; exact at both ends). ``L_k`` is a square
    root of the covariance of the interval's displacements ``x1 - x0``
    (:func:`cellflow.paths.displacement_factor`) and ``c_k`` the least level for which the
    entropy of the cells on the path stays above the straight line between its two ends less
    ``d * entropy_rate * dt_k * min(s, 1-s)`` (:func:`cellflow.paths.noise_level`): where
    the straight lines keep their entropy, ``c_k = 0`` and the path is the straight line.
    Both are set by :meth:`calibrate`, from up to :data:`CALIBRATION_PAIRS` distinct pairs
    per interval (:func:`distinct_pairs`), before training (in a distributed fit, where each
    process holds its share of the plan, as the mean over the processes).

    Parameters
    ----------
    entropy_rate
        How fast the entropy may fall below the straight line between the two ends, in nats
        per dimension per unit of real time (see :mod:`cellflow.paths`).
    """

    settings: ClassVar[tuple[str, ...]] = ("entropy_rate",)
    makes_score: ClassVar[bool] = False  # the noise is shaped per interval: -eps is not its score

    def __init__(self, entropy_rate: float):
        if not entropy_rate >= 0:
            raise ValueError(f"entropy_rate must be >= 0, got {entropy_rate}")
        self.entropy_rate, self.sigma = float(entropy_rate), 0.0
        self.levels: np.ndarray | None = None
        self.factors: torch.Tensor | None = None

    def calibrate(self, populations: Sequence[torch.Tensor], times: Sequence[float] | np.ndarray,
                  samplers: Sequence[PairSampler]) -> None:
        """Choose ``c_k`` and ``L_k`` of every interval from its coupled cells."""
        widths = np.diff(np.asarray(times, dtype=np.float64))
        levels, factors = [], []
        for k, sampler in enumerate(samplers):
            i, j = distinct_pairs(sampler, len(populations[k]), len(populations[k + 1]))
            if len(i) < FEWEST_PAIRS:
                raise ValueError(f"the entropy-controlled path estimates entropies from distinct coupled cells, and "
                                 f"interval {k} (times {times[k]:g} to {times[k + 1]:g}) has only {len(i)} "
                                 f"(at least {FEWEST_PAIRS} needed); use path='linear' for so few cells")
            x0 = populations[k][torch.as_tensor(i, device=populations[k].device)].to(torch.float64)
            x1 = populations[k + 1][torch.as_tensor(j, device=populations[k].device)].to(torch.float64)
            factor = displacement_factor(x0, x1)
            shaped = torch.randn_like(x0) @ factor.T
            allowed = x0.shape[1] * self.entropy_rate * widths[k]
            levels.append(noise_level(x0, x1, shaped, allowed))
            factors.append(levels[-1] * factor)
        self.levels = distributed.mean(levels)
        self.calibration = {"noise_levels": self.levels}
        # (d, K d): eps @ factors gives every interval's shaped noise side by side
        side_by_side = distributed.mean(torch.cat([f.T for f in factors], dim=1).cpu().numpy())
        self.factors = torch.as_tensor(side_by_side, dtype=populations[0].dtype, device=populations[0].device)
        self.sigma = 1.0 if self.levels.any() else 0.0  # a unit bridge whose eps carries the level

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        """Points and targets, the noise of each sample shaped and scaled for its interval (``segment``)."""
        if self.factors is None:
            raise RuntimeError("the entropy-controlled path sets its noise from the coupled cells: call calibrate()")
        if self.sigma > 0:
            n, d = eps.shape
            side_by_side = (eps @ self.factors.to(eps)).view(n, -1, d)
            eps = side_by_side[torch.arange(n, device=eps.device), segment]
        return dataclasses.replace(super().sample(points, segment, s, eps, m0, m1), score=None, noise_scale=None)
