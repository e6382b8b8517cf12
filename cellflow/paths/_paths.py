"""Conditional probability paths through the cells a coupling pairs or chains.

Every path has one method, :meth:`ConditionalPath.sample`, with one signature:

- ``points`` ``(K + 1, n, d)``: the cells each sample travels through, ``points[k, i]`` the
  cell of sample ``i`` at the ``k``-th time (two rows for a pair, one per time point for a chain);
- ``segment`` ``(n,)`` integers in ``[0, K)``: the interval each sample lies in;
- ``s`` ``(n, 1)``: the fraction of that interval in real time, in ``[0, 1]``;
- ``eps`` ``(n, d)``: standard normal noise;
- ``m0``, ``m1`` ``(n,)`` or ``None``: the masses at the two ends of the segment (unbalanced couplings).

It returns a :class:`PathSample`: the point ``x`` on the path, its velocity ``u = dx/ds``,
where the pair carries masses the growth ``g = d log m / ds`` and the loss weight ``m(s) / m0``
(all per unit fraction of the segment), and for paths with bridge noise the score target.
Pair paths use the two cells that bound the segment; curves (:attr:`ConditionalPath.through_knots`)
use every row of ``points`` and the real times of the time points, so that a chain's curve
depends on the data alone.

Each class declares what it needs from a method's settings in :attr:`ConditionalPath.settings`
(``sigma``, ``delta``, ``times``, ``entropy_rate``), its noise default, and whether it makes growth or
score targets. A path whose noise depends on the coupled cells sets it in
:meth:`ConditionalPath.calibrate`, which the training objective calls once, before training.

Bridge noise and the score
--------------------------
Paths with :attr:`ConditionalPath.makes_score` add to their mean curve ``mu_s`` the noise of a
Brownian bridge within each segment, ``lambda(s) eps`` with ``lambda(s) = sigma sqrt(s (1-s))``:
zero at the cells, largest mid-way. The velocity target is the derivative at fixed ``eps``, and
the conditional score is ``-(x - mu_s) / lambda(s)^2 = -eps / lambda(s)``, which diverges at the
ends of the segment. The score network's error is therefore weighted by ``lambda(s)^2`` (as in
simulation-free score and flow matching): the loss ``|lambda(s) s_net(x, t) + eps|^2`` has a
standard normal target at every ``s``, and the network outputs the score itself, a function that
stays bounded at the ends wherever the population is spread out (regressing ``lambda(s)`` times
the score instead asks the network for a function like ``sqrt(s)``, whose errors near the ends
the stochastic sampler then divides by ``lambda(s)``). A :class:`PathSample` carries ``-eps`` as
``score`` and ``lambda(s)`` as ``noise_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from ..transport import PairSampler


@dataclass
class PathSample:
    """Points on the path and their targets (per unit fraction ``s`` of the segment).

    ``g`` (growth, ``d log m / ds``) and ``weight`` (``m(s) / m0``) are ``None`` without masses;
    ``score`` (``-eps``, the conditional score times ``lambda(s)``) and ``noise_scale``
    (``lambda(s)`` ``(n, 1)``; see the module's notes) are ``None`` without bridge noise.
    """

    x: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    score: torch.Tensor | None = None
    noise_scale: torch.Tensor | None = None


def _with_linear_mass(point: PathSample, s: torch.Tensor, m0: torch.Tensor | None,
                      m1: torch.Tensor | None) -> PathSample:
    """Add the growth target of the mass ``(1-s) m0 + s m1`` to a path sample."""
    if m0 is None:
        return point
    assert m1 is not None, "a pair's masses come at both ends"
    mass = (1 - s[:, 0]) * m0 + s[:, 0] * m1
    point.g = (m1 - m0) / mass
    point.weight = mass / m0
    return point


def _ends(points: torch.Tensor, segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells at the start and the end of each sample's segment, ``(n, d)`` each."""
    if len(points) == 2:  # a pair: its two rows bound every sample's segment
        return points[0], points[1]
    rows = torch.arange(points.shape[1], device=points.device)
    return points[segment, rows], points[segment + 1, rows]


class ConditionalPath:
    """Base of the conditional paths: declarations and the pair shortcut.

    Attributes
    ----------
    settings
        Names of the method settings the constructor takes (from ``sigma``, ``delta``, ``times``).
    default_sigma
        Noise when the user gives none, in units of the data's overall standard deviation.
    through_knots
        The path is a curve through every time point of a chain (it needs chains, not pairs).
    makes_growth
        The path gives growth targets even between cells of equal mass.
    calibration
        What :meth:`calibrate` chose, as arrays for the model's history (empty for most paths).
    makes_score
        The path's noise is a Brownian bridge within each segment, so with ``sigma > 0`` it gives
        score targets (see the module's notes) and a stochastic sampler (:mod:`cellflow.solvers`).
    """

    settings: ClassVar[tuple[str, ...]] = ("sigma",)
    default_sigma: ClassVar[float] = 0.1
    through_knots: ClassVar[bool] = False
    makes_growth: ClassVar[bool] = False
    makes_score: ClassVar[bool] = False
    sigma: float = 0.0
    calibration: dict[str, np.ndarray] = {}  # replaced by calibrate, never changed in place

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """The ``eps`` of :meth:`sample`: standard normal noise shaped like ``like``, or zeros when
        the path has none (``sigma = 0``), which spares drawing it.
        """
        return torch.randn_like(like) if self.sigma > 0 else torch.zeros_like(like)

    def calibrate(self, populations: Sequence[torch.Tensor], times: Sequence[float] | np.ndarray,
                  samplers: Sequence[PairSampler]) -> None:
        """Set whatever the path takes from the coupled cells, once before training (most paths: nothing).

        ``populations``: the cells of each time point (tensors); ``times``: their real times;
        ``samplers``: one pair sampler per interval (:mod:`cellflow.transport`).
        """

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        """Points and targets; see the module's notes for the shapes."""
        raise NotImplementedError

    def pair(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
             m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        """:meth:`sample` for single pairs ``x0``, ``x1`` ``(n, d)`` (a segment each)."""
        segment = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        return self.sample(torch.stack([x0, x1]), segment, s, eps, m0, m1)

    def _with_bridge(self, mean: torch.Tensor, velocity: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
                     m0: torch.Tensor | None, m1: torch.Tensor | None) -> PathSample:
        """The sample ``mean + sigma sqrt(s (1-s)) eps`` with its velocity and score target (see the module's notes)."""
        if self.sigma == 0:
            return _with_linear_mass(PathSample(x=mean, u=velocity), s, m0, m1)
        root = torch.sqrt(s * (1 - s))
        # d/ds of the noise is (1-2s) / (2 s (1-s)) (x - mean) = (1-2s) / (2 root) sigma eps; kept finite at the ends
        speed = (1 - 2 * s) / (2 * root.clamp(min=1e-2)) * self.sigma * eps
        scale = self.sigma * root
        point = PathSample(x=mean + scale * eps, u=velocity + speed, score=-eps, noise_scale=scale)
        return _with_linear_mass(point, s, m0, m1)


class LinearPath(ConditionalPath):
    """Straight line ``(1-s) x0 + s x1 + sigma eps`` with target ``x1 - x0`` (CFM, OT-CFM)."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        x0, x1 = _ends(points, segment)
        return _with_linear_mass(PathSample(x=(1 - s) * x0 + s * x1 + self.sigma * eps, u=x1 - x0), s, m0, m1)


class BrownianBridgePath(ConditionalPath):
    """Brownian bridge of noise ``sigma`` between the pair (Schroedinger-bridge CFM).

    ``x_s = (1-s) x0 + s x1 + sigma sqrt(s (1-s)) eps``: exact at both ends, variance
    ``sigma^2 s (1-s)`` per coordinate in between; gives score targets.
    """

    makes_score: ClassVar[bool] = True

    def __init__(self, sigma: float = 0.1):
        if not sigma > 0:
            raise ValueError(f"the Brownian bridge needs sigma > 0, got sigma={sigma}; use path='linear' for no noise")
        self.sigma = float(sigma)

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        x0, x1 = _ends(points, segment)
        return self._with_bridge((1 - s) * x0 + s * x1, x1 - x0, s, eps, m0, m1)


class VariancePreservingPath(ConditionalPath):
    """Trigonometric path ``cos(pi s/2) x0 + sin(pi s/2) x1 + sigma eps``."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        x0, x1 = _ends(points, segment)
        angle = 0.5 * math.pi * s
        x = torch.cos(angle) * x0 + torch.sin(angle) * x1 + self.sigma * eps
        u = 0.5 * math.pi * (torch.cos(angle) * x1 - torch.sin(angle) * x0)
        return _with_linear_mass(PathSample(x=x, u=u), s, m0, m1)


class WFRPath(ConditionalPath):
    """Closed-form Wasserstein-Fisher-Rao geodesic from mass ``m0`` at ``x0`` to ``m1`` at ``x1``.

    With ``d = |x1 - x0| < pi delta``, ``phi = d / (2 delta)``, ``A = m0 + m1 - 2 sqrt(m0 m1) cos phi``
    and ``B = m0 - sqrt(m0 m1) cos phi``: the mass is ``m(s) = A s^2 - 2 B s + m0``, the velocity
    ``u = omega e / m(s)`` with ``omega e = 2 delta sqrt(m0 m1) sin(phi) (x1 - x0) / d``, and the
    growth ``g = (2 A s - 2 B) / m(s)``. The position is ``x0 + theta(s) / w * omega e`` with
    ``w = sqrt(m0 m1) sin phi`` and ``theta = atan2(s w, m0 - B s)``, a form that stays finite as
    ``d -> 0`` or ``m1 -> 0`` (a cell that dies in place). Masses default to one (balanced ends).

    Parameters
    ----------
    delta
        Length scale of the WFR metric, in the units of the points (``delta -> inf`` gives the
        straight OT-CFM path).
    sigma
        Optional Gaussian noise added to the position (not to the targets).
    """

    settings: ClassVar[tuple[str, ...]] = ("delta", "sigma")
    default_sigma: ClassVar[float] = 0.0
    makes_growth: ClassVar[bool] = True

    def __init__(self, delta: float, sigma: float = 0.0):
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.sigma = float(delta), float(sigma)

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        x0, x1 = _ends(points, segment)
        ones = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
        m0 = ones if m0 is None else m0
        m1 = ones if m1 is None else m1
        diff = x1 - x0
        phi = (torch.linalg.vector_norm(diff, dim=1) / (2 * self.delta)).clamp(max=0.5 * math.pi)
        root = torch.sqrt(m0 * m1)
        a_coef = m0 + m1 - 2 * root * torch.cos(phi)
        b_coef = m0 - root * torch.cos(phi)
        w = root * torch.sin(phi)
        omega = (root * torch.sinc(phi / math.pi))[:, None] * diff
        s1 = s[:, 0]
        mass = a_coef * s1**2 - 2 * b_coef * s1 + m0
        denominator = m0 - b_coef * s1
        ratio = torch.where(
            w > 1e-12,
            torch.atan2(s1 * w, denominator) / w.clamp(min=1e-12),
            s1 / denominator.clamp(min=1e-12),
        )
        x = x0 + ratio[:, None] * omega + self.sigma * eps
        return PathSample(
            x=x, u=omega / mass[:, None], g=(2 * a_coef * s1 - 2 * b_coef) / mass, weight=mass / m0
        )
