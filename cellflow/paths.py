"""Conditional probability paths between the two cells of a pair.

Each path maps a pair ``(x0, x1)``, a fraction ``s`` of the interval in ``[0, 1]`` and standard
normal noise ``eps`` to a point ``x_s`` on the path and its velocity ``u = dx_s/ds``. The
training loop turns ``u`` into real-time velocity by dividing by the interval's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PathSample:
    """Points on the path and their targets (per unit fraction of the interval)."""

    x: torch.Tensor
    u: torch.Tensor


class LinearPath:
    """Straight line ``(1-s) x0 + s x1 + sigma eps`` with target ``x1 - x0`` (CFM, OT-CFM)."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``)."""
        return PathSample(x=(1 - s) * x0 + s * x1 + self.sigma * eps, u=x1 - x0)


class BrownianBridgePath:
    """Brownian bridge of noise ``sigma`` between the pair (Schroedinger-bridge CFM)."""

    def __init__(self, sigma: float = 0.1):
        if sigma <= 0:
            raise ValueError(f"the Brownian bridge needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``), ``0 < s < 1``."""
        s = s.clamp(1e-4, 1 - 1e-4)
        root = torch.sqrt(s * (1 - s))
        x = (1 - s) * x0 + s * x1 + self.sigma * root * eps
        # (1-2s) / (2 s (1-s)) * (x - mean) simplifies to (1-2s) / (2 root) * sigma * eps.
        u = (1 - 2 * s) / (2 * root) * self.sigma * eps + x1 - x0
        return PathSample(x=x, u=u)


class VariancePreservingPath:
    """Trigonometric path ``cos(pi s/2) x0 + sin(pi s/2) x1 + sigma eps``."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = float(sigma)

    def sample(self, x0, x1, s, eps) -> PathSample:
        """Points and targets at fractions ``s`` (shape ``(n, 1)``)."""
        angle = 0.5 * math.pi * s
        x = torch.cos(angle) * x0 + torch.sin(angle) * x1 + self.sigma * eps
        u = 0.5 * math.pi * (torch.cos(angle) * x1 - torch.sin(angle) * x0)
        return PathSample(x=x, u=u)
