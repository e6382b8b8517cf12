"""How the network sees time: an internal clock for its input, a continuous unit for its output."""

from __future__ import annotations

import numpy as np
import torch


class Clock:
    """Internal time ``tau(t)`` and velocity unit ``r(t)`` of the measured times ``t_0 < ... < t_K``.

    Time courses are often sampled densely where cells change fast (1 h, 6 h, 12 h, ... 96 h), so
    velocities in real time differ between intervals by up to the ratio of the longest to the
    shortest one, which a network fits poorly. The network therefore works in internal units:

    - its input is ``tau(t)``, piecewise linear, on which every measured interval has length
      ``1 / K``;
    - its output ``w`` is a velocity per unit ``r(t)``: the real-time velocity is
      ``v = r(t) w`` (growth likewise). ``r`` is ``1 / (K h_k)`` at the middle of each interval
      of length ``h_k`` (the clock's rate there), and ``1 / r`` moves from one middle to the next
      along a smooth step in ``tau`` (``3 x^2 - 2 x^3`` of the fraction ``x`` of the way: flat
      at the middles, the mean of the two at the measured time between them; constant before the
      first middle and after the last).

    So the network's targets are of the same size in every interval, and, since ``r`` is
    smooth, a velocity that is smooth in real time asks for a smooth output: there is no jump
    at a measured time, where cellflow evaluates each cell. The clock concerns the
    network only; paths and couplings are defined in real time.

    Parameters
    ----------
    knots
        Increasing measured times ``t_0 < ... < t_K`` (at least two).
    """

    def __init__(self, knots):
        knots = np.asarray(knots, dtype=np.float64)
        if knots.ndim != 1 or knots.size < 2 or not np.all(np.diff(knots) > 0):
            raise ValueError(f"a clock needs at least two increasing times, got {knots.tolist()}")
        self.knots = knots
        steps = knots.size - 1
        self._t = torch.from_numpy(knots)
        self._tau = torch.arange(steps + 1, dtype=torch.float64) / steps
        self._middles = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        self._lengths = steps * torch.from_numpy(np.diff(knots))  # 1 / r at the middles

    def evaluate(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal time ``tau`` and velocity unit ``r`` at real times ``t`` (any shape, ``t``'s dtype and device)."""
        knots, tau, middles, lengths = (
            a.to(device=t.device) for a in (self._t, self._tau, self._middles, self._lengths)
        )
        t64 = t.to(torch.float64)
        k = (torch.searchsorted(knots, t64.contiguous(), right=True) - 1).clamp(0, len(knots) - 2)
        internal = tau[k] + (t64 - knots[k]) / (knots[k + 1] - knots[k]) * (tau[k + 1] - tau[k])
        if len(middles) == 1:
            inverse = lengths[0].expand_as(internal)
        else:
            m = (torch.searchsorted(middles, internal.contiguous(), right=True) - 1).clamp(0, len(middles) - 2)
            share = ((internal - middles[m]) / (middles[m + 1] - middles[m])).clamp(0, 1)
            inverse = lengths[m] + share**2 * (3 - 2 * share) * (lengths[m + 1] - lengths[m])
        return internal.to(t.dtype), (1 / inverse).to(t.dtype)

    def __call__(self, t):
        """Internal time of real times ``t`` (a tensor for a tensor, else a float64 array)."""
        if isinstance(t, torch.Tensor):
            return self.evaluate(t)[0]
        return self.evaluate(torch.as_tensor(np.asarray(t, dtype=np.float64)))[0].numpy()

    def unit(self, t):
        """Velocity unit ``r(t)``: real-time velocity per unit of the network's output (see above)."""
        if isinstance(t, torch.Tensor):
            return self.evaluate(t)[1]
        return self.evaluate(torch.as_tensor(np.asarray(t, dtype=np.float64)))[1].numpy()
