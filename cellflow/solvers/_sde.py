"""Stochastic transport for paths with bridge noise: the SDE with the flow's marginals, and the score.

A path with bridge noise (:attr:`cellflow.paths.ConditionalPath.makes_score`) spreads each
segment's cells by ``sigma sqrt(s (1-s)) eps`` at the fraction ``s`` of the interval ``k``
between measured times ``t_k`` and ``t_{k+1}`` (length ``h_k``). In real time that is the
bridge of a Brownian motion of diffusion ``g_k = sigma / sqrt(h_k)``, and the SDE

    dz = [v(z, t) + (g_k^2 / 2) grad log p_t(z)] dt + g_k dW

has the marginals ``p_t`` of the flow ``dz = v dt`` (in Fokker-Planck's equation the score's
drift cancels the diffusion); ``grad log p_t`` is the score network's output (see
:mod:`cellflow.paths` for how it is trained). Backward in time the reversed SDE has the same
marginals; its score drift has the opposite sign. Growth (unbalanced methods) is integrated
along each sampled path as ``d log m / dt = g(z, t)``, as the flow does (the growth field is
regressed on the noisy points, so it is that of the noisy marginals).

Positions ``z`` and ``sigma`` are in the model's internal units (see :class:`cellflow.CellFlow`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ._ode import euler_maruyama

DEFAULT_STEPS = 100  # Euler-Maruyama steps per measured interval when no step size is given


def _interval(knots: np.ndarray, t: npt.ArrayLike) -> np.ndarray:
    """Index of the measured interval holding each time ``t`` (the last one for ``t = t_K``)."""
    return np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)


def check_range(knots: np.ndarray, times: np.ndarray, name: str = "times") -> None:
    """Raise unless every time lies between the first and the last measured time (where the bridges are)."""
    outside = times[(times < knots[0]) | (times > knots[-1])]
    if outside.size:
        raise ValueError(
            f"{name} include {float(outside[0]):g}, outside the measured times {knots[0]:g} to {knots[-1]:g}: "
            "the stochastic bridges, and the score, exist only between measured times; use stochastic=False "
            "to extrapolate with the flow"
        )


def sde_grid(knots: np.ndarray, times: np.ndarray, step_size: float | None = None) -> tuple[np.ndarray, list[int]]:
    """Time grid of Euler-Maruyama from ``times[0]`` through every later entry of ``times``.

    The grid stops at every measured time on the way, so that no step crosses one (the
    diffusion changes there), and cuts each stretch within interval ``k``
    into equal steps of at most ``step_size``, by default ``h_k /`` :data:`DEFAULT_STEPS`.

    Returns
    -------
    The grid and, for each entry of ``times``, the index of its time in the grid.
    """
    grid, marks = [float(times[0])], [0]
    for start, end in zip(times[:-1], times[1:]):
        inner = knots[(knots > min(start, end)) & (knots < max(start, end))]
        cuts = [start, *(inner if end > start else inner[::-1]), end]
        for a, b in zip(cuts[:-1], cuts[1:]):
            k = _interval(knots, 0.5 * (a + b))
            step = step_size or (knots[k + 1] - knots[k]) / DEFAULT_STEPS
            grid.extend(np.linspace(a, b, max(1, math.ceil(abs(b - a) / step - 1e-9)) + 1)[1:])
        marks.append(len(grid) - 1)
    return np.asarray(grid), marks


def transport(model: Any, state: torch.Tensor, times: np.ndarray, step_size: float | None,
              generator: torch.Generator) -> torch.Tensor:
    """Sample the SDE (see the module's notes) from states ``(n, d + 1)`` (internal positions and
    log-mass) at ``times[0]``; returns the states at every entry of ``times``, ``(len(times), n, d + 1)``.
    """
    knots, sigma = model.times, model.params["sigma"]
    check_range(knots, times)
    grid, marks = sde_grid(knots, times, step_size)
    d = state.shape[1] - 1

    def width(t0: float, t1: float) -> float:  # length of the measured interval the step lies in
        k = int(_interval(knots, 0.5 * (t0 + t1)))
        return knots[k + 1] - knots[k]

    def drift(current: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
        t = torch.tensor(t0, dtype=torch.float64, device=current.device)
        side, sign = ("after", 1.0) if t1 >= t0 else ("before", -1.0)  # backward: the reversed SDE
        v, g, score = model._field(current[:, :-1], t, side, score=True)
        v = v + sign * sigma**2 / (2 * width(t0, t1)) * score
        return torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)

    def diffusion(t0: float, t1: float) -> torch.Tensor:
        scale = torch.full((d + 1,), sigma / math.sqrt(width(t0, t1)), dtype=state.dtype, device=state.device)
        scale[-1] = 0.0  # the log-mass is not noisy
        return scale

    return euler_maruyama(drift, diffusion, state, grid, marks, generator)
