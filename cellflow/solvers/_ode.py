"""The integrators: push cells along a learned field with torchdiffeq (ODE), or by Euler-Maruyama (SDE)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .. import _checks

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4")


def check_solver(method: str, step_size: float | None) -> float | None:
    """Check a solver name and its step (needed by fixed-step solvers, positive); returns the step."""
    _checks.choice("solver", method, ADAPTIVE_METHODS + FIXED_STEP_METHODS)
    if method in FIXED_STEP_METHODS and step_size is None:
        raise ValueError(f"solver {method!r} takes fixed steps: pass step_size (in time units)")
    return None if step_size is None else _checks.number("step_size", step_size, minimum=0, strict=True)


def integrate(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    method: str = "dopri5",
    step_size: float | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Solve ``dx/dt = field(x, t)`` from ``times[0]`` through every later entry of ``times``.

    Parameters
    ----------
    field
        Function of ``(x, t)`` returning ``dx/dt`` with the shape of ``x``.
    x
        Initial states ``(n, d)`` at ``times[0]``.
    times
        1-D increasing or decreasing tensor of times (integration runs backward when decreasing).
    method
        A torchdiffeq solver: adaptive (:data:`ADAPTIVE_METHODS`, default ``"dopri5"``) or
        fixed-step (:data:`FIXED_STEP_METHODS`, which need ``step_size``).
    step_size
        Step of a fixed-step solver, in the units of ``times``.
    rtol, atol
        Tolerances of an adaptive solver.
    chunk_size
        Cells integrated together; bounds memory for large populations.

    Returns
    -------
    States ``(len(times), n, d)``.
    """
    from torchdiffeq import odeint  # imported on use: keeps ``import cellflow`` light

    step_size = check_solver(method, step_size)
    options = {"step_size": step_size} if method in FIXED_STEP_METHODS else None
    times = times.to(device=x.device, dtype=x.dtype)
    if times.numel() == 1 or bool((times[1:] == times[:-1]).all()):
        return x.unsqueeze(0).expand(times.numel(), *x.shape).clone()

    def rhs(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return field(state, t)

    out = [
        odeint(rhs, chunk, times, method=method, rtol=rtol, atol=atol, options=options)
        for chunk in torch.split(x, chunk_size)
    ]
    return torch.cat(out, dim=1)


def euler_maruyama(
    drift: Callable[[torch.Tensor, float, float], torch.Tensor],
    diffusion: Callable[[float, float], torch.Tensor],
    x: torch.Tensor,
    grid: Iterable[float],
    marks: Iterable[int],
    generator: torch.Generator,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Solve ``dx = drift dt + diffusion dW`` by Euler-Maruyama on a given time grid.

    Each step from ``t0`` to ``t1`` moves ``x`` by ``drift(x, t0, t1) (t1 - t0)`` plus
    ``diffusion(t0, t1) sqrt(|t1 - t0|)`` times standard normal noise from ``generator``: the
    drift is that at the step's start (the callables see the whole step, so that the caller can
    tell which side of a discontinuity it lies on).

    Parameters
    ----------
    drift
        ``(x, t0, t1) -> (n, D)`` drift over the step.
    diffusion
        ``(t0, t1) -> (D,)`` noise scale per coordinate over the step (zero: none).
    x
        Initial states ``(n, D)`` at ``grid[0]``.
    grid
        Times of the steps' ends, monotone (backward when decreasing).
    marks
        Increasing indices into ``grid`` of the states to return.
    generator
        Source of the noise, on ``x``'s device.
    chunk_size
        Cells integrated together (each chunk runs the whole grid with its own draws).

    Returns
    -------
    States ``(len(marks), n, D)``.
    """
    grid, marks = [float(t) for t in grid], list(marks)
    out = []
    for state in torch.split(x, chunk_size):
        kept = [state] if marks[0] == 0 else []
        for step, (t0, t1) in enumerate(zip(grid[:-1], grid[1:]), start=1):
            noise = torch.randn(state.shape, generator=generator, device=state.device, dtype=state.dtype)
            state = state + drift(state, t0, t1) * (t1 - t0) + diffusion(t0, t1) * abs(t1 - t0) ** 0.5 * noise
            if step in marks:
                kept.append(state)
        out.append(torch.stack(kept))
    return torch.cat(out, dim=1)
