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

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .entropy import displacement_factor, noise_level


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


def _with_linear_mass(point: PathSample, s, m0, m1) -> PathSample:
    """Add the growth target of the mass ``(1-s) m0 + s m1`` to a path sample."""
    if m0 is None:
        return point
    mass = (1 - s[:, 0]) * m0 + s[:, 0] * m1
    point.g = (m1 - m0) / mass
    point.weight = mass / m0
    return point


def _ends(points, segment):
    """The cells at the start and the end of each sample's segment, ``(n, d)`` each."""
    if len(points) == 2:  # a pair: its two rows bound every sample's segment
        return points[0], points[1]
    rows = torch.arange(points.shape[1], device=points.device)
    return points[segment, rows], points[segment + 1, rows]


def monotone_tangents(values: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Tangents of the shape-preserving cubic Hermite interpolant (PCHIP) at every knot.

    Parameters
    ----------
    values
        Knot values ``(K + 1, ...)``.
    widths
        Knot spacings ``(K,)``, positive.

    Returns
    -------
    ``(K + 1, ...)`` derivatives: at an inner knot the weighted harmonic mean of the two
    neighbouring slopes (zero where they differ in sign), at the ends the end slopes. Every
    tangent is at most three times the smaller neighbouring slope, so each cubic stays within
    the range of its two knots.
    """
    h = widths.reshape(-1, *([1] * (values.ndim - 1))).to(values)
    slopes = (values[1:] - values[:-1]) / h
    tangents = torch.empty_like(values)
    tangents[0], tangents[-1] = slopes[0], slopes[-1]
    if len(slopes) > 1:
        before, after = slopes[:-1], slopes[1:]
        w_before, w_after = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
        same_sign = before * after > 0
        safe_before = torch.where(same_sign, before, torch.ones_like(before))
        safe_after = torch.where(same_sign, after, torch.ones_like(after))
        harmonic = (w_before + w_after) / (w_before / safe_before + w_after / safe_after)
        tangents[1:-1] = torch.where(same_sign, harmonic, torch.zeros_like(harmonic))
    return tangents


def hermite(lo, hi, d_lo, d_hi, s):
    """Cubic Hermite curve and its derivative ``d/ds`` at ``s``, from values and ``d/ds`` slopes at both ends."""
    s2, s3 = s**2, s**3
    x = (2 * s3 - 3 * s2 + 1) * lo + (s3 - 2 * s2 + s) * d_lo + (-2 * s3 + 3 * s2) * hi + (s3 - s2) * d_hi
    u = (6 * s2 - 6 * s) * lo + (3 * s2 - 4 * s + 1) * d_lo + (6 * s - 6 * s2) * hi + (3 * s2 - 2 * s) * d_hi
    return x, u


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
        score targets (see the module's notes) and a stochastic sampler (:mod:`cellflow.stochastic`).
    """

    settings: tuple[str, ...] = ("sigma",)
    default_sigma = 0.1
    through_knots = False
    makes_growth = False
    makes_score = False
    sigma = 0.0
    calibration: dict = {}

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """The ``eps`` of :meth:`sample`: standard normal noise shaped like ``like``, or zeros when
        the path has none (``sigma = 0``), which spares drawing it."""
        return torch.randn_like(like) if self.sigma > 0 else torch.zeros_like(like)

    def calibrate(self, populations, times, samplers) -> None:
        """Set whatever the path takes from the coupled cells, once before training (most paths: nothing).

        ``populations``: the cells of each time point (tensors); ``times``: their real times;
        ``samplers``: one pair sampler per interval (:mod:`cellflow.couplings`).
        """

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        """Points and targets; see the module's notes for the shapes."""
        raise NotImplementedError

    def pair(self, x0, x1, s, eps, m0=None, m1=None) -> PathSample:
        """:meth:`sample` for single pairs ``x0``, ``x1`` ``(n, d)`` (a segment each)."""
        segment = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        return self.sample(torch.stack([x0, x1]), segment, s, eps, m0, m1)

    def _with_bridge(self, mean, velocity, s, eps, m0, m1) -> PathSample:
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

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        x0, x1 = _ends(points, segment)
        return _with_linear_mass(PathSample(x=(1 - s) * x0 + s * x1 + self.sigma * eps, u=x1 - x0), s, m0, m1)


class BrownianBridgePath(ConditionalPath):
    """Brownian bridge of noise ``sigma`` between the pair (Schroedinger-bridge CFM).

    ``x_s = (1-s) x0 + s x1 + sigma sqrt(s (1-s)) eps``: exact at both ends, variance
    ``sigma^2 s (1-s)`` per coordinate in between; gives score targets.
    """

    makes_score = True

    def __init__(self, sigma: float = 0.1):
        if not sigma > 0:
            raise ValueError(f"the Brownian bridge needs sigma > 0, got sigma={sigma}; use path='linear' for no noise")
        self.sigma = float(sigma)

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        x0, x1 = _ends(points, segment)
        return self._with_bridge((1 - s) * x0 + s * x1, x1 - x0, s, eps, m0, m1)


class VariancePreservingPath(ConditionalPath):
    """Trigonometric path ``cos(pi s/2) x0 + sin(pi s/2) x1 + sigma eps``."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
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

    settings = ("delta", "sigma")
    default_sigma = 0.0
    makes_growth = True

    def __init__(self, delta: float, sigma: float = 0.0):
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.sigma = float(delta), float(sigma)

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
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


class CubicSplinePath(ConditionalPath):
    """Natural cubic spline through the knots ``(t_k, x_k)`` of each chain, batched in torch.

    The second derivatives at the knots are a fixed linear map of the knot values (the knot
    times are shared by every chain), so one small matrix, built once, serves every batch.
    Natural splines overshoot between closely spaced knots; :class:`MonotoneHermitePath` does not.

    Parameters
    ----------
    times
        Real times ``t_0 < ... < t_K`` of the knots.
    sigma
        Noise of a Brownian bridge within each segment, ``sigma sqrt(s (1-s)) eps`` around the
        curve: none at the knots (multimarginal score and flow matching); with ``sigma > 0`` the
        path gives score targets.
    """

    settings = ("times", "sigma")
    through_knots = True
    makes_score = True

    def __init__(self, times, sigma: float = 0.0):
        tau = torch.as_tensor(times, dtype=torch.float64)
        if tau.ndim != 1 or tau.numel() < 2 or not bool((tau[1:] > tau[:-1]).all()):
            raise ValueError("a curve through the time points needs at least two increasing knot times")
        self.times, self.sigma = tau, float(sigma)
        self.widths = tau[1:] - tau[:-1]
        n = tau.numel()
        curvature = torch.zeros(n, n, dtype=torch.float64)
        if n > 2:
            h = self.widths
            system = torch.zeros(n - 2, n - 2, dtype=torch.float64)
            slopes = torch.zeros(n - 2, n, dtype=torch.float64)
            for r in range(n - 2):
                system[r, r] = 2 * (h[r] + h[r + 1])
                if r > 0:
                    system[r, r - 1] = h[r]
                if r < n - 3:
                    system[r, r + 1] = h[r + 1]
                slopes[r, r], slopes[r, r + 1], slopes[r, r + 2] = 6 / h[r], -6 / h[r] - 6 / h[r + 1], 6 / h[r + 1]
            curvature[1:-1] = torch.linalg.solve(system, slopes)
        self.curvature = curvature  # second derivatives at the knots = curvature @ knot values

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        curvature = self.curvature.to(device=points.device, dtype=points.dtype)
        h = self.widths.to(device=points.device, dtype=points.dtype)[segment][:, None]
        x_lo, x_hi = _ends(points, segment)
        # (K+1) x (K+1) times the knots, as a broadcast sum: tiny matmuls cost more in BLAS
        m_lo, m_hi = _ends((curvature[:, :, None, None] * points[None]).sum(1), segment)
        a, b = 1 - s, s
        x = a * x_lo + b * x_hi + ((a**3 - a) * m_lo + (b**3 - b) * m_hi) * h**2 / 6
        u = x_hi - x_lo + ((3 * b**2 - 1) * m_hi - (3 * a**2 - 1) * m_lo) * h**2 / 6
        return self._with_bridge(x, u, s, eps, m0, m1)


class MonotoneHermitePath(CubicSplinePath):
    """Shape-preserving piecewise cubic Hermite curve (PCHIP) through the knots ``(t_k, x_k)``.

    Per coordinate, the tangent at an inner knot is the weighted harmonic mean of the two
    neighbouring slopes (zero where they differ in sign), and the end tangents are the end
    slopes (:func:`monotone_tangents`). The curve is C1, never leaves the range of two
    neighbouring knots, and each segment depends on its own knots and their neighbours only:
    unevenly spaced or noisy knots do not make it overshoot as a natural cubic spline does.

    Parameters
    ----------
    times
        Real times ``t_0 < ... < t_K`` of the knots.
    sigma
        Noise of a Brownian bridge within each segment (as for :class:`CubicSplinePath`).
    """

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        h = self.widths.to(device=points.device, dtype=points.dtype)[segment][:, None]
        d_lo, d_hi = _ends(monotone_tangents(points, self.widths), segment)
        x_lo, x_hi = _ends(points, segment)
        x, u = hermite(x_lo, x_hi, d_lo * h, d_hi * h, s)
        return self._with_bridge(x, u, s, eps, m0, m1)


CALIBRATION_PAIRS = 1024  # most coupled pairs per interval on which the entropy-controlled path sets its noise
FEWEST_PAIRS = 16  # fewest distinct pairs whose entropy it estimates


def distinct_pairs(sampler, n_source: int, n_target: int):
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
    (:func:`cellflow.entropy.displacement_factor`) and ``c_k`` the least level for which the
    entropy of the cells on the path stays above the straight line between its two ends less
    ``d * entropy_rate * dt_k * min(s, 1-s)`` (:func:`cellflow.entropy.noise_level`): where
    the straight lines keep their entropy, ``c_k = 0`` and the path is the straight line.
    Both are set by :meth:`calibrate`, from up to :data:`CALIBRATION_PAIRS` distinct pairs
    per interval (:func:`distinct_pairs`), before training (in a distributed fit, where each
    process holds its share of the plan, as the mean over the processes).

    Parameters
    ----------
    entropy_rate
        How fast the entropy may fall below the straight line between the two ends, in nats
        per dimension per unit of real time (see :mod:`cellflow.entropy`).
    """

    settings = ("entropy_rate",)
    makes_score = False  # the noise is shaped per interval: -eps is not its score

    def __init__(self, entropy_rate: float):
        if not entropy_rate >= 0:
            raise ValueError(f"entropy_rate must be >= 0, got {entropy_rate}")
        self.entropy_rate, self.sigma = float(entropy_rate), 0.0
        self.levels = self.factors = None

    def calibrate(self, populations, times, samplers) -> None:
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

    def sample(self, points, segment, s, eps, m0=None, m1=None) -> PathSample:
        """Points and targets, the noise of each sample shaped and scaled for its interval (``segment``)."""
        if self.factors is None:
            raise RuntimeError("the entropy-controlled path sets its noise from the coupled cells: call calibrate()")
        if self.sigma > 0:
            n, d = eps.shape
            side_by_side = (eps @ self.factors.to(eps)).view(n, -1, d)
            eps = side_by_side[torch.arange(n, device=eps.device), segment]
        return dataclasses.replace(super().sample(points, segment, s, eps, m0, m1), score=None, noise_scale=None)

