"""Conditional probability paths between the two cells of a pair.

Each path maps a pair ``(x0, x1)``, a fraction ``s`` of the interval in ``[0, 1]`` and standard
normal noise ``eps`` to a point ``x_s`` on the path and its velocity ``u = dx_s/ds``. The
training loop turns ``u`` into real-time velocity by dividing by the interval's length.

Where the pair carries masses ``m0`` and ``m1`` (unbalanced couplings), a path also gives the
growth target ``g = d log m / ds`` and the loss weight ``m(s) / m0``. The Wasserstein-Fisher-Rao
geodesic moves mass and position together; the other paths interpolate the mass linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PathSample:
    """Points on the path and their targets (per unit fraction of the interval).

    ``g`` (growth, ``d log m / ds``) and ``weight`` (``m(s) / m0``) are ``None`` without masses.
    """

    x: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None = None
    weight: torch.Tensor | None = None


def _with_linear_mass(point: PathSample, s, m0, m1) -> PathSample:
    """Add the growth target of the mass ``(1-s) m0 + s m1`` to a path sample."""
    if m0 is None:
        return point
    mass = (1 - s[:, 0]) * m0 + s[:, 0] * m1
    point.g = (m1 - m0) / mass
    point.weight = mass / m0
    return point


class LinearPath:
    """Straight line ``(1-s) x0 + s x1 + sigma eps`` with target ``x1 - x0`` (CFM, OT-CFM)."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps, m0=None, m1=None) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``)."""
        return _with_linear_mass(PathSample(x=(1 - s) * x0 + s * x1 + self.sigma * eps, u=x1 - x0), s, m0, m1)


class BrownianBridgePath:
    """Brownian bridge of noise ``sigma`` between the pair (Schroedinger-bridge CFM)."""

    def __init__(self, sigma: float = 0.1):
        if sigma <= 0:
            raise ValueError(f"the Brownian bridge needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps, m0=None, m1=None) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``), ``0 < s < 1``."""
        s = s.clamp(1e-4, 1 - 1e-4)
        root = torch.sqrt(s * (1 - s))
        x = (1 - s) * x0 + s * x1 + self.sigma * root * eps
        # (1-2s) / (2 s (1-s)) * (x - mean) simplifies to (1-2s) / (2 root) * sigma * eps.
        u = (1 - 2 * s) / (2 * root) * self.sigma * eps + x1 - x0
        return _with_linear_mass(PathSample(x=x, u=u), s, m0, m1)


class VariancePreservingPath:
    """Trigonometric path ``cos(pi s/2) x0 + sin(pi s/2) x1 + sigma eps``."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps, m0=None, m1=None) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``)."""
        angle = 0.5 * math.pi * s
        x = torch.cos(angle) * x0 + torch.sin(angle) * x1 + self.sigma * eps
        u = 0.5 * math.pi * (torch.cos(angle) * x1 - torch.sin(angle) * x0)
        return _with_linear_mass(PathSample(x=x, u=u), s, m0, m1)


class WFRPath:
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
        Length scale of the WFR metric (``delta -> inf`` gives the straight OT-CFM path).
    sigma
        Optional Gaussian noise added to the position (not to the targets).
    """

    def __init__(self, delta: float, sigma: float = 0.0):
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.sigma = float(delta), float(sigma)

    def sample(self, x0, x1, s, eps, m0=None, m1=None) -> PathSample:
        """Points, velocity, growth and weight at fractions ``s`` (shape ``(n, 1)``)."""
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


class CubicSplinePath:
    """Natural cubic spline through the knots ``(tau_k, x_k)`` of each tuple, batched in torch.

    The second derivatives at the knots are a fixed linear map of the knot values (the knot
    times are shared by every tuple), so one small matrix, built once, serves every batch.

    Parameters
    ----------
    knots
        Knot times ``tau_0 < ... < tau_K`` (the training time scale).
    sigma
        Optional Gaussian noise added to the position (not to the target).
    """

    through_knots = True

    def __init__(self, knots, sigma: float = 0.0):
        tau = torch.as_tensor(knots, dtype=torch.float64)
        if tau.ndim != 1 or tau.numel() < 2 or not bool((tau[1:] > tau[:-1]).all()):
            raise ValueError("a spline needs at least two increasing knot times")
        self.knots, self.sigma = tau, float(sigma)
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

    def sample(self, tuples, segment, s, eps) -> PathSample:
        """Points and velocities ``dx/dtau`` on the spline.

        Parameters
        ----------
        tuples
            Knot values ``(K + 1, n, d)``.
        segment
            Segment of each sample, ``(n,)`` integers in ``[0, K)``.
        s
            Fraction of the segment, ``(n, 1)``.
        eps
            Standard normal noise ``(n, d)``.
        """
        dtype, device = tuples.dtype, tuples.device
        curvature = self.curvature.to(device=device, dtype=dtype)
        rows = torch.arange(tuples.shape[1], device=device)
        h = self.widths.to(device=device, dtype=dtype)[segment][:, None]
        x_lo, x_hi = tuples[segment, rows], tuples[segment + 1, rows]
        # (K+1) x (K+1) times the knots, as a broadcast sum: tiny matmuls cost more in BLAS
        second = (curvature[:, :, None, None] * tuples[None]).sum(1)
        m_lo, m_hi = second[segment, rows], second[segment + 1, rows]
        a, b = 1 - s, s
        x = a * x_lo + b * x_hi + ((a**3 - a) * m_lo + (b**3 - b) * m_hi) * h**2 / 6
        u = (x_hi - x_lo) / h + ((3 * b**2 - 1) * m_hi - (3 * a**2 - 1) * m_lo) * h / 6
        return PathSample(x=x + self.sigma * eps, u=u)


class MonotoneHermitePath(CubicSplinePath):
    """Shape-preserving piecewise cubic Hermite curve (PCHIP) through the knots of each tuple.

    Per coordinate, the tangent at an inner knot is the weighted harmonic mean of the two
    neighbouring slopes (zero where they differ in sign), and the end tangents are the end
    slopes. The curve is C1, never leaves the range of two neighbouring knots, and each segment
    depends on its own knots and their neighbours only: unevenly spaced or noisy knots do not
    make it overshoot as a natural cubic spline does.

    Parameters
    ----------
    knots
        Knot times ``tau_0 < ... < tau_K``.
    sigma
        Optional Gaussian noise added to the position (not to the target).
    """

    def _tangents(self, tuples):
        h = self.widths.to(device=tuples.device, dtype=tuples.dtype)[:, None, None]
        slopes = (tuples[1:] - tuples[:-1]) / h
        tangents = torch.empty_like(tuples)
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

    def sample(self, tuples, segment, s, eps) -> PathSample:
        """Points and velocities ``dx/dtau``; arguments as for :meth:`CubicSplinePath.sample`."""
        rows = torch.arange(tuples.shape[1], device=tuples.device)
        h = self.widths.to(device=tuples.device, dtype=tuples.dtype)[segment][:, None]
        tangents = self._tangents(tuples)
        x_lo, x_hi = tuples[segment, rows], tuples[segment + 1, rows]
        d_lo, d_hi = tangents[segment, rows] * h, tangents[segment + 1, rows] * h
        s2, s3 = s**2, s**3
        x = (2 * s3 - 3 * s2 + 1) * x_lo + (s3 - 2 * s2 + s) * d_lo + (-2 * s3 + 3 * s2) * x_hi + (s3 - s2) * d_hi
        u = ((6 * s2 - 6 * s) * x_lo + (3 * s2 - 4 * s + 1) * d_lo + (6 * s - 6 * s2) * x_hi + (3 * s2 - 2 * s) * d_hi) / h
        return PathSample(x=x + self.sigma * eps, u=u)
