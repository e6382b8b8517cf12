"""The one integrator: push cells along a learned field with torchdiffeq."""

from __future__ import annotations

from typing import Callable

import torch
from torchdiffeq import odeint

from . import _checks

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
    step_size = check_solver(method, step_size)
    options = {"step_size": step_size} if method in FIXED_STEP_METHODS else None
    times = times.to(device=x.device, dtype=x.dtype)
    if times.numel() == 1 or bool((times[1:] == times[:-1]).all()):
        return x.unsqueeze(0).expand(times.numel(), *x.shape).clone()

    def rhs(t, state):
        return field(state, t)

    out = [
        odeint(rhs, chunk, times, method=method, rtol=rtol, atol=atol, options=options)
        for chunk in torch.split(x, chunk_size)
    ]
    return torch.cat(out, dim=1)
