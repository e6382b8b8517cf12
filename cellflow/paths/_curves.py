"""Curves through every time point of a chain: a natural cubic spline and a shape-preserving cubic Hermite
curve, both in real time.
"""

from __future__ import annotations

from typing import ClassVar

import numpy.typing as npt
import torch

from ._paths import ConditionalPath, PathSample, _ends


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


def hermite(lo: torch.Tensor, hi: torch.Tensor, d_lo: torch.Tensor, d_hi: torch.Tensor,
            s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic Hermite curve and its derivative ``d/ds`` at ``s``, from values and ``d/ds`` slopes at both ends."""
    s2, s3 = s**2, s**3
    x = (2 * s3 - 3 * s2 + 1) * lo + (s3 - 2 * s2 + s) * d_lo + (-2 * s3 + 3 * s2) * hi + (s3 - s2) * d_hi
    u = (6 * s2 - 6 * s) * lo + (3 * s2 - 4 * s + 1) * d_lo + (6 * s - 6 * s2) * hi + (3 * s2 - 2 * s) * d_hi
    return x, u


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

    settings: ClassVar[tuple[str, ...]] = ("times", "sigma")
    through_knots: ClassVar[bool] = True
    makes_score: ClassVar[bool] = True

    def __init__(self, times: npt.ArrayLike | torch.Tensor, sigma: float = 0.0):
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

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
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

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        h = self.widths.to(device=points.device, dtype=points.dtype)[segment][:, None]
        d_lo, d_hi = _ends(monotone_tangents(points, self.widths), segment)
        x_lo, x_hi = _ends(points, segment)
        x, u = hermite(x_lo, x_hi, d_lo * h, d_hi * h, s)
        return self._with_bridge(x, u, s, eps, m0, m1)
