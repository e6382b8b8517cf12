"""The one integrator of flows (ODE solvers on states with a log-mass column) and of their stochastic bridges."""

from ._ode import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    check_solver,
    euler_maruyama,
    integrate,
)

__all__ = ["ADAPTIVE_METHODS", "FIXED_STEP_METHODS", "check_solver", "euler_maruyama", "integrate"]
