"""How the network sees time: an internal clock for its input, and units for its outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

TARGET_DRAWS = 8  # batches drawn to measure the size of each interval's targets


class Targets(Protocol):
    """Real-time regression targets at times ``t``: velocity ``u`` and growth ``g`` (``None`` without
    growth), as :class:`cellflow.training.Batch` holds them.
    """

    t: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None


class TargetSource(Protocol):
    """Anything that draws batches of real-time targets (a training objective)."""

    def draw(self) -> Targets:
        """One batch of targets."""
        ...


BatchT = TypeVar("BatchT", bound=Targets)


class Clock:
    """Internal time ``tau(t)`` and output units ``r(t)`` of the measured times ``t_0``, ..., ``t_K``.

    Time courses are often sampled densely where cells change fast (1 h, 6 h, 12 h, ... 96 h),
    so the training targets (velocities, growth rates in real time) differ between intervals by
    up to the ratio of the longest to the shortest one, which a network fits poorly. The network
    therefore works in internal units:

    - its input is ``tau(t)``, piecewise linear, on which every measured interval has length
      ``1 / K``;
    - each output (velocity; growth where learned) is in a unit of its own, ``r_k`` in interval
      ``k``, the typical size of that interval's training targets (:meth:`from_targets`): the
      real-time value is the unit times the network's output.

    A unit changes at a measured time only as the targets do, so the network is never asked to
    jump there, where cellflow evaluates each cell:

    - Targets of pair paths are constant along each pair, so they change size at a measured
      time by the ratio of the two intervals' sizes (pairs of a 1 h and a 24 h interval that move
      similar distances), or not at all (a steady drift). The unit is ``r_k`` throughout
      interval ``k`` and steps with the targets; where the dynamics are continuous both sides
      have one size and there is no step. Exactly at an inner measured time the unit is the
      mean of the two sides (the velocity there is the mean of its two one-sided limits).
    - Curves through every time point (``continuous``) have continuous targets, so the unit is
      continuous too: ``1 / r`` moves from one interval's middle to the next along a smooth step
      in ``tau`` (``3 x^2 - 2 x^3`` of the fraction ``x`` of the way: flat at the middles),
      constant before the first middle and after the last.

    The clock concerns the network only; paths and couplings are defined in real time.

    Parameters
    ----------
    knots
        Increasing measured times ``t_0 < ... < t_K`` (at least two).
    units
        Positive units per interval and output, ``(K, c)``; default ``1 / (K h_k)`` for one
        output, the clock's own rate.
    continuous
        Units that change smoothly between the intervals' middles rather than at measured times.
    """

    def __init__(self, knots: npt.ArrayLike, units: npt.ArrayLike | None = None, continuous: bool = False):
        knots = np.asarray(knots, dtype=np.float64)
        if knots.ndim != 1 or knots.size < 2 or not np.all(np.diff(knots) > 0):
            raise ValueError(f"a clock needs at least two increasing times, got {knots.tolist()}")
        steps = knots.size - 1
        if units is None:
            units = 1.0 / (steps * np.diff(knots))[:, None]
        units = np.asarray(units, dtype=np.float64).reshape(steps, -1)
        if not (np.isfinite(units).all() and (units > 0).all()):
            raise ValueError(f"clock units must be positive and finite, got {units.tolist()}")
        self.knots, self.units, self.continuous = knots, units, bool(continuous)
        self._t = torch.from_numpy(knots)
        self._units = torch.from_numpy(units)
        self._middles = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps

    @classmethod
    def from_targets(cls, knots: npt.ArrayLike, objective: TargetSource, continuous: bool = False) -> Clock:
        """A clock whose units are the typical size of each interval's targets.

        Draws :data:`TARGET_DRAWS` batches of ``objective`` (real-time targets) and takes, per
        interval, the median norm of the velocity targets (robust to the heavy tails of noisy
        paths near their ends) and the mean magnitude of the growth targets, where there are
        any (most pairs may have almost none, while cells dying in place have large ones: a
        median would make the unit tiny and those targets huge). A unit below a thousandth of
        the largest of its output is raised to that (an interval where nothing moves or grows).
        """
        knots = np.asarray(knots, dtype=np.float64)
        batches = [objective.draw() for _ in range(TARGET_DRAWS)]
        t = torch.cat([b.t for b in batches]).detach().cpu().numpy()
        sizes: list[tuple[Callable[..., Any], torch.Tensor]] = [
            (np.median, torch.cat([torch.linalg.vector_norm(b.u, dim=1) for b in batches]))]
        if batches[0].g is not None:  # an objective's batches all have growth targets or none
            sizes.append((np.mean, torch.cat([b.g.abs() for b in batches if b.g is not None])))
        interval = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, knots.size - 2)
        units = np.ones((knots.size - 1, len(sizes)))
        for c, (typical, size) in enumerate(sizes):
            values = size.detach().cpu().numpy().astype(np.float64)
            for k in range(knots.size - 1):
                if (interval == k).any():
                    units[k, c] = typical(values[interval == k])
            top = units[:, c].max()
            units[:, c] = np.maximum(units[:, c], 1e-3 * top) if top > 0 else 1.0
        return cls(knots, units, continuous)

    def evaluate(self, t: torch.Tensor, at_knots: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Internal time ``(n,)`` and units ``(n, c)`` at real times ``t`` ``(n,)``, in ``t``'s dtype and device.

        ``at_knots`` chooses the unit exactly at an inner measured time: ``"mean"`` of the two
        intervals', or that of the interval ``"after"`` or ``"before"`` it (for a path that
        leaves the measured time forward or backward).
        """
        knots, units = self._t.to(t.device), self._units.to(t.device)
        t64 = t.to(torch.float64)
        k = (torch.searchsorted(knots, t64.contiguous(), right=True) - 1).clamp(0, len(knots) - 2)
        tau = (k + (t64 - knots[k]) / (knots[k + 1] - knots[k])) / (len(knots) - 1)
        if self.continuous:
            return tau.to(t.dtype), self._smooth_units(tau, units).to(t.dtype)
        unit = units[k]
        if at_knots != "after":
            inner = ((t64 == knots[k]) & (k > 0))[:, None]
            before = units[(k - 1).clamp(min=0)]
            unit = torch.where(inner, before if at_knots == "before" else 0.5 * (before + unit), unit)
        return tau.to(t.dtype), unit.to(t.dtype)

    def _smooth_units(self, tau: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Units whose inverse moves between the intervals' middles along a smooth step in ``tau``."""
        middles = self._middles.to(tau.device)
        if len(middles) == 1:
            return units[0].expand(len(tau), -1)
        m = (torch.searchsorted(middles, tau.contiguous(), right=True) - 1).clamp(0, len(middles) - 2)
        x = ((tau - middles[m]) / (middles[m + 1] - middles[m])).clamp(0, 1)[:, None]
        inverse = 1 / units[m] + x**2 * (3 - 2 * x) * (1 / units[m + 1] - 1 / units[m])
        return 1 / inverse

    def __call__(self, t: torch.Tensor | npt.ArrayLike) -> torch.Tensor | np.ndarray:
        """Internal time of real times ``t`` (a tensor for a tensor, else a float64 array)."""
        if isinstance(t, torch.Tensor):
            return self.evaluate(t.reshape(-1))[0].reshape(t.shape)
        t = np.asarray(t, dtype=np.float64)
        return self.evaluate(torch.as_tensor(t.reshape(-1)))[0].numpy().reshape(t.shape)

    def unit(self, t: npt.ArrayLike) -> np.ndarray:
        """Units ``(n, c)`` at real times ``t`` (see above)."""
        return self.evaluate(torch.as_tensor(np.asarray(t, dtype=np.float64).reshape(-1)))[1].numpy()

    def to_network(self, batch: BatchT) -> BatchT:
        """A batch of real-time targets (``t``, ``u = dx/dt``, ``g = d log m / dt``) in the network's units."""
        tau, unit = self.evaluate(batch.t, at_knots="after")
        batch.t, batch.u = tau, batch.u / unit[:, :1]
        if batch.g is not None:
            batch.g = batch.g / unit[:, -1]
        return batch
