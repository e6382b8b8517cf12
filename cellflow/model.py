"""The model object: a method (coupling x path), a trained field, and how to use it."""

from __future__ import annotations

import time

import numpy as np
import torch

from ._utils import resolve_device, seed_everything
from .couplings import (
    EntropicOTCoupling, ExactOTCoupling, IndependentCoupling, WFRCoupling, cross_validated_delta
)
from .integration import integrate
from .networks import TimeMLP, VelocityGrowthField
from .paths import (
    BrownianBridgePath,
    CubicSplinePath,
    LinearPath,
    MonotoneHermitePath,
    VariancePreservingPath,
    WFRPath,
)
from .readers import TimeCourse
from .training import PairObjective, TupleObjective, check_lr_schedule, train

COUPLINGS = {
    "independent": IndependentCoupling,
    "exact": ExactOTCoupling,
    "entropic": EntropicOTCoupling,
    "wfr": WFRCoupling,
}
PATHS = {
    "linear": LinearPath,
    "brownian": BrownianBridgePath,
    "vp": VariancePreservingPath,
    "wfr": WFRPath,
    "spline": CubicSplinePath,
    "hermite": MonotoneHermitePath,
}
METHODS = {
    "icfm": ("independent", "linear"),
    "otcfm": ("exact", "linear"),
    "sbcfm": ("entropic", "brownian"),
    "wfr": ("wfr", "wfr"),
    "mmfm": ("exact", "hermite"),
}


class Clock:
    """The model's internal time: piecewise linear in real time, each measured interval of length ``1/K``.

    Time courses are often sampled densely where cells change fast (1 h, 6 h, 12 h, ... 96 h).
    On a clock that gives every interval the same length, the velocity per unit of internal time
    is of the same size in every interval, which a network learns far more easily than velocities
    that differ by the ratio of the longest to the shortest interval. Real-time velocities are
    ``dx/dtau * rate(t)``. Before the first and after the last time point the clock runs at the
    rate of the nearest interval.

    Parameters
    ----------
    knots
        Increasing measured times ``t_0 < ... < t_K`` (at least two).
    """

    def __init__(self, knots):
        self.knots = np.asarray(knots, dtype=np.float64)

    def _interval(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Index and length of the interval of each ``t`` (the first or last one outside)."""
        index = np.clip(np.searchsorted(self.knots, t, side="right") - 1, 0, len(self.knots) - 2)
        return index, self.knots[index + 1] - self.knots[index]

    def __call__(self, t) -> np.ndarray:
        """Internal time of real times ``t``."""
        t = np.asarray(t, dtype=np.float64)
        index, span = self._interval(t)
        return (index + (t - self.knots[index]) / span) / (len(self.knots) - 1)

    def rate(self, t) -> np.ndarray:
        """``d tau / dt`` at real times ``t`` (of the interval that starts at or before ``t``)."""
        _, span = self._interval(np.asarray(t, dtype=np.float64))
        return 1.0 / ((len(self.knots) - 1) * span)

    @property
    def max_rate(self) -> float:
        """``d tau / dt`` in the shortest interval."""
        return 1.0 / ((len(self.knots) - 1) * float(np.min(np.diff(self.knots))))


class CellFlow:
    """A flow-matching model of a time course.

    A method is a coupling between neighbouring time points and a conditional path between
    the paired cells; one network ``v(x, t)`` is regressed on the path velocities. Positions
    are internally centred and divided by one overall scale, and the network runs on an
    internal clock on which every interval between measured time points has the same length
    (:class:`Clock`); everything the model returns is in the user's units.

    Parameters
    ----------
    method
        ``"icfm"`` (independent coupling, straight paths), ``"otcfm"`` (exact OT, straight
        paths), ``"sbcfm"`` (entropic OT with ``reg = 2 sigma**2``, Brownian bridges) or
        ``"wfr"`` (unbalanced Wasserstein-Fisher-Rao coupling and geodesics, WFR-FM: learns a
        growth field too), or ``"mmfm"`` (multimarginal: the plans of consecutive intervals
        chained into tuples through every time point, a shape-preserving cubic Hermite curve
        through each tuple; ``path="spline"`` for the natural cubic spline; both curves pass
        through the knots on the internal clock, where they are evenly spaced).
    coupling, path
        Override the method's coupling (``"independent"``, ``"exact"``, ``"entropic"``,
        ``"wfr"``) or path (``"linear"``, ``"brownian"``, ``"vp"``, ``"wfr"``, ``"hermite"``,
        ``"spline"``).
        A growth field is learned whenever the coupling or the path is ``"wfr"``. With
        ``"mmfm"`` a pair path is applied piecewise to each chain's own segment (e.g.
        ``path="linear"``: piecewise linear; ``coupling="wfr", path="wfr"``: unbalanced
        multimarginal); the curves through all knots always train on chains.
    sigma
        Noise of the path, in units of the data's overall standard deviation (``"wfr"``
        method: no noise unless given).
    reg
        Entropic regularisation (relative units); default ``2 sigma**2`` with Brownian bridges,
        0.01 for the WFR coupling (its cost is in units of ``(d / 2 delta)^2``), else 0.05.
    delta
        WFR length scale, in the units of the representation; ``None`` chooses it from the data:
        the candidate whose static WFR geodesics best predict each inner time point from its two
        neighbours (:func:`cellflow.couplings.cross_validated_delta`; with two time points,
        :func:`cellflow.couplings.default_delta`). Pairs farther apart than ``pi * delta`` are
        never transported: the source cell dies in place and the target cell is not reached.
        Larger values keep the learned growth from depending on how far cells move; smaller
        ones explain population changes by more local birth and death (see the notes of
        :func:`~cellflow.couplings.default_delta`).
    growth_weight
        Weight of the growth error in the loss (``kappa``).
    hidden
        Hidden layer widths of the velocity network (and of the growth network).
    n_steps, batch_size, lr, lr_schedule, ema_decay
        Training: optimiser steps, pairs per interval and step, Adam learning rate, its
        schedule (``"constant"`` or ``"cosine"`` decay to ``lr / 100``), weight averaging
        (``None`` to switch off).
    block_size
        Largest OT problem per side; larger populations are coupled in random blocks.
    seed
        Seed of every random draw (couplings, pairs, noise, initial weights).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
    """

    def __init__(
        self,
        method: str = "otcfm",
        *,
        coupling: str | None = None,
        path: str | None = None,
        sigma: float | None = None,
        reg: float | None = None,
        delta: float | None = None,
        growth_weight: float = 1.0,
        hidden: tuple[int, ...] = (256, 256, 256),
        n_steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        ema_decay: float | None = 0.999,
        block_size: int = 2048,
        seed: int = 0,
        device: str = "auto",
    ):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is unknown; choose one of {sorted(METHODS)}")
        default_coupling, default_path = METHODS[method]
        coupling = coupling or default_coupling
        path = path or default_path
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling={coupling!r} is unknown; choose one of {sorted(COUPLINGS)}")
        if path not in PATHS:
            raise ValueError(f"path={path!r} is unknown; choose one of {sorted(PATHS)}")
        if sigma is None:
            sigma = 0.0 if path == "wfr" else 0.1
        if reg is None:
            reg = {"brownian": 2 * sigma**2}.get(path, 0.01 if coupling == "wfr" else 0.05)
        self.params = dict(
            method=method, coupling=coupling, path=path, sigma=float(sigma), reg=float(reg),
            delta=float(delta or 0.0), growth_weight=float(growth_weight),
            hidden=[int(h) for h in hidden], n_steps=int(n_steps), batch_size=int(batch_size),
            lr=float(lr), lr_schedule=check_lr_schedule(lr_schedule), ema_decay=0.0 if ema_decay is None else float(ema_decay),
            block_size=int(block_size), seed=int(seed),
        )
        self.device = resolve_device(device)
        self.net: TimeMLP | None = None
        self.history: dict[str, np.ndarray] = {}

    @property
    def has_growth(self) -> bool:
        """Whether the model learns a growth field (a WFR coupling or path)."""
        return "wfr" in (self.params["coupling"], self.params["path"])

    # -- the pieces a method is made of -------------------------------------------------
    def _coupling(self):
        name, p = self.params["coupling"], self.params
        if name == "independent":
            return IndependentCoupling()
        if name == "exact":
            return ExactOTCoupling(block_size=p["block_size"])
        if name == "entropic":
            return EntropicOTCoupling(reg=p["reg"], block_size=p["block_size"])
        return WFRCoupling(delta=p["delta"] / self.scale, reg=p["reg"], block_size=p["block_size"])

    def _path(self, knots):
        if self.params["path"] == "wfr":
            return WFRPath(delta=self.params["delta"] / self.scale, sigma=self.params["sigma"])
        if self.params["path"] in ("spline", "hermite"):
            return PATHS[self.params["path"]](knots, sigma=self.params["sigma"])
        return PATHS[self.params["path"]](sigma=self.params["sigma"])

    @property
    def multimarginal(self) -> bool:
        """Whether training draws chains through all time points rather than pairs."""
        return self.params["method"] == "mmfm" or self.params["path"] in ("spline", "hermite")

    def _network(self, n_dims: int):
        hidden = tuple(self.params["hidden"])
        return VelocityGrowthField(n_dims, hidden) if self.has_growth else TimeMLP(n_dims, hidden)

    # -- coordinates -----------------------------------------------------------------------
    def _set_scales(self, course: TimeCourse) -> None:
        cells = np.concatenate(course.populations).astype(np.float64)
        self.center = cells.mean(axis=0)
        self.scale = float(np.sqrt(cells.var(axis=0).mean())) or 1.0
        self.times = np.asarray(course.times, dtype=float)

    @property
    def clock(self) -> Clock:
        """The internal clock of the measured time points (see :class:`Clock`)."""
        return Clock(self.times)

    def _to_internal(self, x) -> torch.Tensor:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return torch.as_tensor(z, dtype=torch.float32, device=self.device)

    def _check_fitted(self) -> None:
        if self.net is None:
            raise RuntimeError("the model is not trained yet: call fit() first")

    # -- training --------------------------------------------------------------------------
    def _samplers(self, course: TimeCourse, internal: list[np.ndarray], rng):
        """One pair sampler per interval; a prior growth rate reweights the source marginal."""
        coupling = self._coupling()
        n = len(internal)
        mass = course.weights or [np.ones(len(z)) for z in internal]
        samplers = []
        for k in range(n - 1):
            a, b = mass[k], mass[k + 1]
            if course.growth is not None:
                a = a * np.exp(course.growth[k] * (course.times[k + 1] - course.times[k]))
            if isinstance(coupling, WFRCoupling):
                samplers.append(coupling.sampler(internal[k], internal[k + 1], a, b, rng, source_mass=mass[k]))
            else:
                samplers.append(coupling.sampler(internal[k], internal[k + 1], a, b, rng))
        return samplers

    def fit(self, course: TimeCourse, progress: bool = True) -> "CellFlow":
        """Train on a time course (see :func:`cellflow.readers.read_time_course`)."""
        p = self.params
        rng = seed_everything(p["seed"])
        self._set_scales(course)
        internal = [self._to_internal(x) for x in course.populations]
        cpu = [z.cpu().numpy().astype(np.float64) for z in internal]
        start = time.perf_counter()
        if self.has_growth and not p["delta"]:
            p["delta"] = self.scale * cross_validated_delta(
                cpu, course.times, reg=p["reg"], block_size=p["block_size"], seed=p["seed"]
            )
        samplers = self._samplers(course, cpu, rng)
        coupling_seconds = time.perf_counter() - start
        tau = self.clock(course.times)
        objective = (TupleObjective if self.multimarginal else PairObjective)(
            internal, tau, samplers, self._path(tau), p["batch_size"], growth=self.has_growth
        )
        net, loss = train(
            self._network(course.n_dims).to(self.device), objective, n_steps=p["n_steps"], lr=p["lr"],
            lr_schedule=p["lr_schedule"],
            ema_decay=p["ema_decay"] or None, growth_weight=p["growth_weight"], rng=rng, progress=progress,
        )
        self.net = net.eval()
        self.history = {
            "loss": loss,
            "coupling_seconds": np.array(coupling_seconds),
            "fit_seconds": np.array(time.perf_counter() - start),
        }
        return self

    # -- using the field ---------------------------------------------------------------
    def _evaluate(self, x, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Internal velocity and growth at user positions ``x`` and times ``t``."""
        self._check_fitted()
        x = np.asarray(x)
        tau = torch.as_tensor(np.broadcast_to(self.clock(t), (x.shape[0],)).copy(), dtype=torch.float32)
        with torch.no_grad():
            out = self.net(self._to_internal(x), tau.to(self.device))
        return out if isinstance(out, tuple) else (out, None)

    def velocity(self, x, t) -> np.ndarray:
        """Velocity ``dx/dt`` in the user's units at positions ``x`` ``(n, d)`` and times ``t``."""
        v, _ = self._evaluate(x, t)
        rate = np.broadcast_to(self.clock.rate(t), (v.shape[0],))[:, None]
        return v.cpu().numpy().astype(np.float64) * self.scale * rate

    def growth(self, x, t) -> np.ndarray:
        """Growth rate ``d log m / dt`` (per unit of the user's time); zeros for balanced methods."""
        _, g = self._evaluate(x, t)
        if g is None:
            return np.zeros(len(np.asarray(x)))
        return g[:, 0].cpu().numpy().astype(np.float64) * self.clock.rate(t)

    def _augmented_field(self, state: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``d(z, log m)/dtau`` for the integrator; the log-mass is the last column."""
        v, g = self.net(state[:, :-1], tau)
        return torch.cat([v, g], dim=1)

    def transport(
        self, x, times, *, method: str = "dopri5", step_size: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and masses of cells starting at ``x`` at ``times[0]``, at every time of ``times``.

        ``step_size`` (for fixed-step solvers) is in the user's time unit; it is applied in the
        shortest measured interval and stretched with the internal clock elsewhere, so no interval
        is integrated more coarsely than asked. Masses start at one and follow
        ``d log m / dt = g``; they stay one for balanced methods.

        Returns
        -------
        Positions ``(len(times), n, d)`` and masses ``(len(times), n)``.
        """
        self._check_fitted()
        tau = torch.as_tensor(self.clock(np.atleast_1d(times)), dtype=torch.float32)
        step = None if step_size is None else step_size * self.clock.max_rate
        z = self._to_internal(x)
        with torch.no_grad():
            if self.has_growth:
                state = torch.cat([z, torch.zeros(len(z), 1, device=z.device)], dim=1)
                out = integrate(self._augmented_field, state, tau, method=method, step_size=step)
                z, log_mass = out[..., :-1], out[..., -1]
            else:
                z = integrate(self.net, z, tau, method=method, step_size=step)
                log_mass = torch.zeros(z.shape[:2])
        positions = z.cpu().numpy().astype(np.float64) * self.scale + self.center
        return positions, np.exp(log_mass.cpu().numpy().astype(np.float64))

    def push(self, x, t_from: float, t_to: float, *, return_mass: bool = False, **kwargs):
        """Positions at ``t_to`` of cells at ``x`` at ``t_from`` (forward or backward in time).

        With ``return_mass=True`` also each cell's mass at ``t_to`` (one at ``t_from``).
        """
        positions, mass = self.transport(x, [t_from, t_to], **kwargs)
        return (positions[-1], mass[-1]) if return_mass else positions[-1]

    # -- plain-array state (for AnnData.uns and files) -----------------------------------
    def to_dict(self) -> dict:
        """Everything needed to restore the model, as plain scalars, strings and arrays."""
        self._check_fitted()
        return {
            "params": {k: (np.array(v) if isinstance(v, list) else v) for k, v in self.params.items()},
            "center": self.center,
            "scale": self.scale,
            "times": self.times,
            "n_dims": int(self.center.size),
            "weights": {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()},
            "history": dict(self.history),
        }

    def save(self, path) -> None:
        """Write the model to a ``.npz`` file of plain arrays (see :func:`cellflow.io.save_model`)."""
        from .io import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path, device: str = "auto") -> "CellFlow":
        """Read a model file written by :meth:`save`; loading executes no code."""
        from .io import load_model

        return load_model(path, device=device)

    @classmethod
    def from_dict(cls, state: dict, device: str = "auto") -> "CellFlow":
        """Restore a model written by :meth:`to_dict` (e.g. read back from an ``.h5ad``)."""
        params = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state["params"].items()}
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
        ema, delta = params.pop("ema_decay"), params.pop("delta")
        model = cls(**params, ema_decay=ema or None, delta=delta or None, device=device)
        model.center = np.asarray(state["center"], dtype=np.float64)
        model.scale = float(state["scale"])
        model.times = np.asarray(state["times"], dtype=float)
        net = model._network(int(state["n_dims"]))
        net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state["weights"].items()})
        model.net = net.to(model.device).eval()
        model.history = {k: np.asarray(v) for k, v in state.get("history", {}).items()}
        return model
