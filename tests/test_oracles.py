"""Paths against independent references: scipy's Hermite splines and the Brownian bridge's law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicHermiteSpline, PchipInterpolator

from cellflow.paths import BrownianBridgePath, MonotoneHermitePath


def _reference_pchip(times, values):
    """scipy's PCHIP with its inner tangents, and the end slopes as end tangents (our end rule)."""
    tangents = PchipInterpolator(times, values, axis=0).derivative()(times)
    tangents[0] = (values[1] - values[0]) / (times[1] - times[0])
    tangents[-1] = (values[-1] - values[-2]) / (times[-1] - times[-2])
    return CubicHermiteSpline(times, values, tangents, axis=0)


def test_monotone_hermite_equals_scipy_pchip_with_end_slope_tangents():
    times = np.array([0.0, 0.02, 0.3, 0.35, 1.0, 2.7])
    n, d = 48, 3
    values = np.random.default_rng(7).normal(size=(len(times), n, d))
    values[3, :8] = values[2, :8]  # flat stretches: zero slope, so zero tangent at both of its knots
    values[4, 8:16, 0] = values[3, 8:16, 0] + 1e-3  # a slope much smaller than its neighbours'
    reference = _reference_pchip(times, values)
    speed = reference.derivative()
    path = MonotoneHermitePath(times)
    tuples, zeros = torch.from_numpy(values), torch.zeros(n, d, dtype=torch.float64)
    rows = np.arange(n)
    rng = np.random.default_rng(8)
    for k in range(len(times) - 1):
        width = times[k + 1] - times[k]
        s = np.concatenate([[0.0, 1.0], rng.uniform(size=n - 2)])
        t = times[k] + s * width
        point = path.sample(tuples, torch.full((n,), k), torch.from_numpy(s[:, None]), zeros)
        # scipy evaluates every chain at every t: each chain's own time is the diagonal
        np.testing.assert_allclose(point.x.numpy(), reference(t)[rows, rows], rtol=0, atol=1e-10)
        np.testing.assert_allclose(point.u.numpy(), speed(t)[rows, rows] * width, rtol=0, atol=1e-10)


@pytest.mark.parametrize("s", [0.05, 0.3, 0.5, 0.8])
def test_brownian_bridge_has_the_bridge_mean_and_variance(s):
    sigma, n = 0.7, 200_000
    x0, x1 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), torch.tensor([[3.0, 1.0, 0.5]], dtype=torch.float64)
    eps = torch.randn(n, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = BrownianBridgePath(sigma).pair(x0.expand(n, 3), x1.expand(n, 3), torch.full((n, 1), s, dtype=torch.float64), eps).x
    variance = sigma**2 * s * (1 - s)
    mean = (1 - s) * x0[0] + s * x1[0]
    # five standard errors: of the mean, sqrt(variance / n); of the sample variance, variance * sqrt(2 / n)
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=5 * (variance / n) ** 0.5)
    torch.testing.assert_close(x.var(0), torch.full((3,), variance, dtype=torch.float64), rtol=5 * (2 / n) ** 0.5, atol=0)


def test_brownian_bridge_target_is_the_conditional_flow():
    gen = torch.Generator().manual_seed(12)
    x0, x1, eps = (torch.randn(500, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    s = 0.01 + 0.98 * torch.rand(500, 1, generator=gen, dtype=torch.float64)
    point = BrownianBridgePath(0.4).pair(x0, x1, s, eps)
    mean = (1 - s) * x0 + s * x1
    flow = (1 - 2 * s) / (2 * s * (1 - s)) * (point.x - mean) + x1 - x0
    torch.testing.assert_close(point.u, flow, rtol=0, atol=1e-10)
