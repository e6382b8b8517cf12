"""The model object: a method (coupling x path x objective), a trained field, and how to use it."""

from __future__ import annotations

import time

import numpy as np
import torch

from . import _checks, _state, distributed
from ._utils import compute_threads, resolve_device, seed_everything
from .clock import Clock
from .couplings import BLOCK_ORDERS
from .delta import cross_validated_delta
from .integration import check_solver, integrate
from .methods import resolve_method
from .networks import TimeMLP, VelocityGrowthField
from .readers import TimeCourse
from .training import LR_SCHEDULES, OBJECTIVES, train, transport_stopping

MAX_WIDTH = 65536  # widest hidden layer accepted (a guard against typos and tampered files)
MAX_LOG_GROWTH = 50.0  # largest |prior growth rate x interval| accepted (a factor e^50 per interval)
MAX_AUTO_STEPS = 4000  # the most steps n_steps="auto" takes
EVALUATION_CHUNK = 65536  # cells evaluated together when writing velocity and growth


def _pooled_moments(populations) -> tuple[np.ndarray, float]:
    """Mean of all cells and one overall scale (root mean variance over coordinates), in one pass
    of float64 sums per population (no pooled copy)."""
    n = sum(len(x) for x in populations)
    total = sum(np.asarray(x, dtype=np.float64).sum(axis=0) for x in populations)
    center = total / n
    squares = sum(((np.asarray(x, dtype=np.float64) - center) ** 2).sum(axis=0) for x in populations)
    return center, float(np.sqrt((squares / n).mean())) or 1.0


def default_batch_size(course: TimeCourse) -> int:
    """Pairs per interval and step of ``batch_size="auto"``: 256, or the number of cells of the smallest
    source population when that is smaller (at least 64). A balanced plan between ``n`` cells and the next
    time point has about ``n`` entries, so a larger batch only draws the same pairs again."""
    return int(min(256, max(64, min(len(x) for x in course.populations[:-1]))))


def default_hidden(n_dims: int) -> list[int]:
    """Hidden widths of ``hidden="auto"``: three layers of ``16 (d + 1)`` units, rounded up to a power
    of two, between 64 and 256 (64 up to 3 dimensions, 128 up to 7, 256 from 15)."""
    width = 2 ** int(np.ceil(np.log2(16 * (n_dims + 1))))
    return [int(min(256, max(64, width)))] * 3


def _optional(name: str, value, **bounds) -> float | None:
    return None if value is None else _checks.number(name, value, **bounds)


class CellFlow:
    """A flow-matching model of a time course.

    A method is a coupling between time points, a conditional path through the coupled cells
    and a training objective (pairs of neighbouring time points, or chains through all of them);
    one network ``v(x, t)`` is regressed on the path velocities. Positions are internally
    centred and divided by one overall scale, and the network sees time on an internal clock on
    which every interval between measured time points has the same length, with outputs in
    units of the typical size of each interval's targets (:class:`cellflow.clock.Clock`);
    everything the model returns is in the user's units.

    Parameters
    ----------
    method
        A row of :data:`cellflow.methods.METHODS`: ``"icfm"`` (independent coupling, straight
        paths), ``"otcfm"`` (exact OT, straight paths), ``"sbcfm"`` (entropic OT with
        ``reg = 2 sigma**2``, Brownian bridges), ``"wfr"`` (unbalanced Wasserstein-Fisher-Rao
        coupling and geodesics, WFR-FM: learns a growth field too) or ``"mmfm"``
        (multimarginal: the plans of consecutive intervals chained into tuples through every
        time point, a shape-preserving cubic Hermite curve through each tuple in real time) or
        ``"mmfm_potential"`` (as ``"mmfm"``, with chains drawn from the entropic OT potentials of
        each interval, extended to every cell by their c-transform; :mod:`cellflow.potentials`).
    coupling, path, objective
        Replace a piece of the method: coupling ``"independent"``, ``"exact"``, ``"entropic"``,
        ``"wfr"``, ``"potential"`` or ``"potential_map"``; path ``"linear"``, ``"brownian"``, ``"vp"``, ``"wfr"``, ``"hermite"`` or
        ``"spline"`` (natural cubic spline); objective ``"pairs"`` or ``"chains"`` (a curve
        through every time point needs chains; a pair path on chains is applied piecewise to
        each chain's own segment). A growth field is learned whenever the coupling carries mass
        or the path makes growth (``"wfr"``).
    sigma
        Noise of the path, in units of the data's overall standard deviation; default from the
        path (0.1; none for the WFR geodesic).
    reg
        Entropic regularisation of the coupling (relative units); default from the coupling:
        ``2 sigma**2`` for entropic OT and the OT potentials (the Schroedinger bridge of the
        path's noise), 0.01 for the WFR coupling (its cost is in units of ``(d / 2 delta)^2``);
        exact and independent couplings have none.
    delta
        WFR length scale, positive, in the units of the representation; ``None`` chooses it from
        the data (:func:`cellflow.delta.cross_validated_delta`: the candidate whose static WFR
        geodesics best predict each inner time point from its two neighbours; with two time
        points :func:`cellflow.delta.default_delta`). Pairs farther apart than ``pi * delta``
        are never transported: the source cell dies in place and the target cell is not reached.
    hidden
        Hidden layer widths of the velocity network (and of the growth network); ``"auto"``
        sizes them from the representation's dimension (:func:`default_hidden`).
    n_steps
        Optimiser steps; ``"auto"`` (default) stops when the flow stops getting closer to
        the data: every 100 steps, up to 512 cells of each time point are pushed to the next
        one and the energy distance to its cells is measured; training ends after 4 checks in a
        row that closed less than 1% of the distance of unmoved cells, or at 4000 steps, with
        the network of the best check (:func:`cellflow.training.transport_stopping`,
        :class:`cellflow.training.EarlyStopping`). An integer runs exactly that many steps.
    batch_size, lr, lr_schedule, ema_decay
        Training: pairs per interval and step (``"auto"``: :func:`default_batch_size`), Adam learning rate, its schedule
        (``"constant"`` or ``"cosine"`` decay to ``lr / 100``), weight averaging (in
        ``[0, 1)``; ``None`` or 0 to switch off).
    block_size
        Largest OT problem per side; larger populations are coupled in blocks.
    block_order
        How populations larger than ``block_size`` are cut into blocks: ``"random"`` (random
        subsamples) or ``"projection"`` (slabs along the first principal axis); see
        :func:`cellflow.couplings.blocks`.
    seed
        Seed of every random draw (couplings, pairs, noise, initial weights).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... Under ``torchrun`` a bare
        CUDA device is each process's own GPU (:mod:`cellflow.distributed`). On a CPU, cellflow
        uses as many threads as there are cores not busy with other work
        (:func:`cellflow._utils.cpu_threads`).
    """

    def __init__(
        self,
        method: str = "otcfm",
        *,
        coupling: str | None = None,
        path: str | None = None,
        objective: str | None = None,
        sigma: float | None = None,
        reg: float | None = None,
        delta: float | None = None,
        hidden: tuple[int, ...] | str = "auto",
        n_steps: int | str = "auto",
        batch_size: int | str = "auto",
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        ema_decay: float | None = 0.999,
        block_size: int = 2048,
        block_order: str = "random",
        seed: int = 0,
        device: str = "auto",
    ):
        self.method = resolve_method(method, coupling, path, objective)
        coupling_class, path_class = self.method.coupling_class, self.method.path_class
        sigma = path_class.default_sigma if sigma is None else _checks.number("sigma", sigma, minimum=0)
        reg = coupling_class.default_reg(sigma) if reg is None else _checks.number("reg", reg, minimum=0, strict=True)
        if "reg" not in coupling_class.settings:
            reg = None
        delta = _optional("delta", delta, minimum=0, strict=True,
                          hint=" (a length in the representation's units; None chooses it from the data)")
        if hidden != "auto" and (isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__len__") or len(hidden) == 0):
            raise ValueError(f"hidden={hidden!r} must be 'auto' or a list of layer widths, e.g. (256, 256, 256)")
        self.params = dict(
            method=method, coupling=self.method.coupling, path=self.method.path, objective=self.method.objective,
            sigma=sigma, reg=reg, delta=delta if self.method.needs_delta else None,
            hidden="auto" if hidden == "auto" else [_checks.integer("hidden", h, 1, MAX_WIDTH) for h in hidden],
            n_steps="auto" if n_steps == "auto" else _checks.integer("n_steps", n_steps, hint=" (or 'auto')"),
            batch_size="auto" if batch_size == "auto" else _checks.integer("batch_size", batch_size, hint=" (or 'auto')"),
            lr=_checks.number("lr", lr, minimum=0, strict=True),
            lr_schedule=_checks.choice("lr_schedule", lr_schedule, LR_SCHEDULES),
            ema_decay=0.0 if ema_decay is None else _checks.number("ema_decay", ema_decay, minimum=0, maximum=1 - 1e-12),
            block_size=_checks.integer("block_size", block_size, 2),
            block_order=_checks.choice("block_order", block_order, BLOCK_ORDERS), seed=_checks.integer("seed", seed, 0),
        )
        self._path(np.array([0.0, 1.0]), 1.0)  # the path checks its own settings (e.g. the bridge's sigma > 0)
        self.device = distributed.local_device(resolve_device(device))
        self.net: TimeMLP | None = None
        self.history: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        p, state = self.params, "trained" if self.net is not None else "not trained"
        return (f"CellFlow({p['method']!r}: coupling={p['coupling']!r}, path={p['path']!r}, "
                f"objective={p['objective']!r}; {state})")

    @property
    def has_growth(self) -> bool:
        """Whether the model learns a growth field (a coupling with mass or a path with growth)."""
        return self.method.has_growth

    @property
    def multimarginal(self) -> bool:
        """Whether training draws chains through all time points rather than pairs."""
        return self.method.objective == "chains"

    # -- the pieces a method is made of -------------------------------------------------
    def _settings(self, times, delta) -> dict:
        """Every setting a coupling or a path may ask for, in internal units."""
        p = self.params
        return dict(sigma=p["sigma"], reg=p["reg"], delta=delta, block_size=p["block_size"],
                    block_order=p["block_order"], times=times)

    def _coupling(self):
        cls, delta = self.method.coupling_class, self.params["delta"]
        settings = self._settings(self.times, None if delta is None else delta / self.scale)
        return cls(**{name: settings[name] for name in cls.settings})

    def _path(self, times, internal_delta=None):
        cls, delta = self.method.path_class, self.params["delta"]
        if internal_delta is None and delta is not None:
            internal_delta = delta / self.scale
        settings = self._settings(times, internal_delta)
        return cls(**{name: settings[name] for name in cls.settings})

    def _network(self, n_dims: int):
        hidden = tuple(self.params["hidden"])
        return VelocityGrowthField(n_dims, hidden) if self.has_growth else TimeMLP(n_dims, hidden)

    # -- coordinates -----------------------------------------------------------------------
    def _set_frame(self, center, scale, times) -> None:
        self.center, self.scale = np.asarray(center, dtype=np.float64), float(scale)
        self.times = np.asarray(times, dtype=np.float64)

    def _to_internal(self, x) -> torch.Tensor:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.center.size:
            raise ValueError(f"positions of shape {x.shape} do not match the model's {self.center.size} "
                             "dimensions; pass one row per cell in the representation the model was fitted on")
        z = torch.empty(x.shape, dtype=torch.float32, device=self.device)
        rows = max(1, 2**22 // max(x.shape[1], 1))  # float64 blocks of 32 MB: memory stays that of the result
        for start in range(0, len(x), rows):
            block = (np.asarray(x[start : start + rows], dtype=np.float64) - self.center) / self.scale
            z[start : start + rows] = torch.from_numpy(block.astype(np.float32))
        return z

    def _check_fitted(self) -> None:
        if self.net is None:
            raise RuntimeError("the model is not trained yet: call fit() first")

    # -- training --------------------------------------------------------------------------
    def _source_masses(self, course: TimeCourse) -> list[np.ndarray]:
        """Source marginal of each interval: the cells' mass times their prior growth over it."""
        mass = course.weights or [np.ones(len(x)) for x in course.populations]
        if course.growth is None:
            return mass[:-1]
        masses = []
        for k, dt in enumerate(np.diff(course.times)):
            log_growth = course.growth[k] * dt
            worst = float(np.abs(log_growth).max())
            if not worst <= MAX_LOG_GROWTH:
                raise ValueError(
                    f"the prior growth rates (growth_key) of time point {course.times[k]:g} reach "
                    f"{worst / dt:g} per time unit, a change of e^{worst:.0f} in mass by the next time point; "
                    "give log growth rates per unit of the time column (e.g. from cellflow.pp.score_growth)"
                )
            masses.append(mass[k] * np.exp(log_growth))
        return masses

    def _samplers(self, course: TimeCourse, internal: list[np.ndarray], sources: list[np.ndarray], rng,
                  progress: bool):
        """One pair sampler per interval on the model's device, fitted to the source marginals
        ``sources`` (see :meth:`_source_masses`); in a distributed fit each process solves its
        share of the blocks (:meth:`cellflow.couplings._BlockwiseOT.plan`)."""
        coupling = self._coupling()
        mass = course.weights or [np.ones(len(z)) for z in internal]
        part = distributed.part()
        return [
            coupling.sampler(internal[k], internal[k + 1], sources[k], mass[k + 1], rng=rng, source_mass=mass[k],
                             device=self.device, part=part, progress=progress)
            for k in range(len(internal) - 1)
        ]

    def fit(self, course: TimeCourse, progress: bool = True) -> "CellFlow":
        """Train on a time course (see :func:`cellflow.readers.read_time_course`).

        Under ``torchrun`` (an initialised ``torch.distributed`` group) every process runs
        this same call: each solves its share of the coupling blocks and draws its own pairs,
        and gradients are averaged (:func:`cellflow.training.train`).
        """
        p = self.params
        distributed.join(self.device)
        rng = seed_everything(p["seed"])
        sources = self._source_masses(course)  # bad prior growth fails before any work
        center, scale = _pooled_moments(course.populations)
        self._set_frame(center, scale, course.times)
        internal = [self._to_internal(x) for x in course.populations]
        # the couplings read float32 cells on the host (each block is solved in float64)
        cpu = [z.numpy() if z.device.type == "cpu" else ((np.asarray(x) - center) / scale).astype(np.float32)
               for z, x in zip(internal, course.populations)]
        start = time.perf_counter()
        if self.method.needs_delta and p["delta"] is None:
            p["delta"] = cross_validated_delta(
                [np.asarray(x, dtype=np.float64) for x in course.populations], course.times,
                reg=p["reg"] if "delta" in self.method.coupling_class.settings else None,
                block_size=p["block_size"], seed=p["seed"],
            )
        with compute_threads(self.device):
            samplers = self._samplers(course, cpu, sources, rng, progress)
            coupling_seconds = time.perf_counter() - start
            if p["batch_size"] == "auto":
                p["batch_size"] = default_batch_size(course)
            objective = OBJECTIVES[self.method.objective](
                internal, course.times, samplers, self._path(course.times), p["batch_size"], growth=self.has_growth,
            )
            stopping = None
            if p["n_steps"] == "auto":
                stopping = transport_stopping(lambda z, t, net: self._field(z, t, "after", net), internal,
                                              course.weights, course.times, rng)
            # every process draws its own pairs: the seed differs per rank after the shared choices above
            torch.manual_seed(p["seed"] + 1_000_003 * distributed.part()[0])
            curves = self.method.path_class.through_knots  # continuous targets: continuous units
            self.clock = Clock.from_targets(course.times, objective, continuous=curves)
            if distributed.active():  # one clock for all processes: the mean of their measured units
                self.clock = Clock(course.times, distributed.mean(self.clock.units), continuous=curves)
            if p["hidden"] == "auto":
                p["hidden"] = default_hidden(course.n_dims)
            net, log = train(
                self._network(course.n_dims).to(self.device), objective, self.clock,
                n_steps=MAX_AUTO_STEPS if stopping else p["n_steps"], lr=p["lr"], lr_schedule=p["lr_schedule"],
                ema_decay=p["ema_decay"] or None, stopping=stopping, progress=progress,
            )
        self.net = net.eval()
        self.history = {
            **log,
            "coupling_seconds": np.array(coupling_seconds),
            "fit_seconds": np.array(time.perf_counter() - start),
        }
        return self

    # -- using the field ---------------------------------------------------------------
    def _times(self, t, n: int, name: str = "t") -> torch.Tensor:
        """Real times broadcast to ``n`` cells, checked finite, as float64 on the model's device."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        if not np.isfinite(t).all():
            raise ValueError(f"{name}={float(t[~np.isfinite(t)][0])!r}: times must be finite numbers")
        return torch.as_tensor(t.copy(), device=self.device)

    def _field(self, z: torch.Tensor, t: torch.Tensor, at_knots: str = "mean", net=None):
        """Internal velocity (and growth) per unit of real time at internal positions ``z`` and real times ``t``.

        ``at_knots``: the unit exactly at a measured time (see :meth:`cellflow.clock.Clock.evaluate`).
        ``net``: a network other than the model's (one in training).
        """
        tau, unit = self.clock.evaluate(t.to(torch.float64).expand(len(z)), at_knots)
        out = (self.net if net is None else net)(z, tau.to(z.dtype))
        unit = unit.to(z.dtype)
        if isinstance(out, tuple):
            return out[0] * unit[:, :1], out[1] * unit[:, -1:]
        return out * unit[:, :1], None

    def _state_field(self, state: torch.Tensor, t: torch.Tensor, at_knots: str, net=None) -> torch.Tensor:
        """``d(z, log m)/dt`` of states ``(n, d + 1)`` holding the log-mass in the last column."""
        v, g = self._field(state[:, :-1], t, at_knots, net)
        return torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)

    def evaluate(self, x, t) -> tuple[np.ndarray, np.ndarray | None]:
        """Velocity and growth rate at positions ``x`` ``(n, d)`` and times ``t`` in one pass of the network.

        Returns
        -------
        Velocity ``(n, d)`` as :meth:`velocity` gives it, and growth ``(n,)`` as :meth:`growth`
        gives it, or ``None`` for balanced methods.
        """
        self._check_fitted()
        x = np.asarray(x)
        n = len(x)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        velocity = np.empty((n, self.center.size))
        growth = np.empty(n) if self.has_growth else None
        with torch.no_grad(), compute_threads(self.device):
            for start in range(0, n, EVALUATION_CHUNK):  # memory bounded by the chunk, not the cells
                rows = slice(start, start + EVALUATION_CHUNK)
                z = self._to_internal(x[rows])
                v, g = self._field(z, self._times(t[rows], len(z)))
                velocity[rows] = v.cpu().numpy() * self.scale
                if growth is not None:
                    growth[rows] = g[:, 0].cpu().numpy()
        return velocity, growth

    def velocity(self, x, t) -> np.ndarray:
        """Velocity ``dx/dt`` in the user's units at positions ``x`` ``(n, d)`` and times ``t`` (one or ``(n,)``)."""
        return self.evaluate(x, t)[0]

    def growth(self, x, t) -> np.ndarray:
        """Growth rate ``d log m / dt`` (per unit of the user's time); zeros for balanced methods."""
        v, g = self.evaluate(x, t)
        return np.zeros(len(v)) if g is None else g

    def transport(
        self, x, times, *, method: str = "dopri5", step_size: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and masses of cells starting at ``x`` at ``times[0]``, at every time of ``times``.

        The field is integrated in real time; ``step_size`` (fixed-step solvers only) is in the
        user's time unit. Masses start at one and follow ``d log m / dt = g``; they stay one for
        balanced methods.

        Returns
        -------
        Positions ``(len(times), n, d)`` and masses ``(len(times), n)``.
        """
        self._check_fitted()
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        step = check_solver(method, step_size)
        times = self._times(times, len(times), "times").to(torch.float32)
        z = self._to_internal(x)
        side = "after" if len(times) < 2 or times[-1] >= times[0] else "before"  # the interval the cells move into

        with torch.no_grad(), compute_threads(self.device):
            state = torch.cat([z, torch.zeros(len(z), 1, device=z.device)], dim=1)
            out = integrate(lambda s, t: self._state_field(s, t, side), state, times, method=method, step_size=step)
            z, log_mass = out[..., :-1], out[..., -1]
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
        params = {k: (np.array(v) if isinstance(v, list) else v) for k, v in self.params.items() if v is not None}
        return {
            "version": _state.VERSION,
            "params": params,
            "center": self.center,
            "scale": self.scale,
            "times": self.times,
            "clock_units": self.clock.units,
            "n_dims": int(self.center.size),
            "weights": {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()},
            "history": dict(self.history),
        }

    def save(self, path):
        """Write the model to a ``.npz`` file of plain arrays; returns the path written.

        In a distributed fit only rank 0 writes (every process holds the same model).
        """
        return _state.write(self.to_dict(), path) if distributed.is_main() else path

    @classmethod
    def load(cls, path, device: str = "auto") -> "CellFlow":
        """Read a model file written by :meth:`save`; loading executes no code."""
        return cls.from_dict(_state.read(path), device=device)

    @classmethod
    def from_dict(cls, state, device: str = "auto") -> "CellFlow":
        """Restore a model written by :meth:`to_dict` (e.g. read back from an ``.h5ad``).

        Every entry is checked (:func:`cellflow._state.check_state`), and the weights' names and
        shapes against the network the parameters describe, before that network is built.
        """
        parts = _state.check_state(state)
        params = dict(parts["params"])
        ema = params.pop("ema_decay", None)
        try:
            model = cls(**params, ema_decay=ema or None, device=device)
        except TypeError as err:
            raise ValueError(f"the model's parameters do not fit this cellflow ({err}); refit the model") from None
        model._set_frame(parts["center"], parts["scale"], parts["times"])
        model.clock = Clock(parts["times"], parts["clock_units"], continuous=model.method.path_class.through_knots)
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = {k: tuple(v.shape) for k, v in model._network(model.center.size).state_dict().items()}
        found = {k: tuple(v.shape) for k, v in parts["weights"].items()}
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
            raise ValueError(f"the model's weights do not match its parameters (first mismatch: {wrong[0]!r}); "
                             "the state was edited or damaged: refit the model")
        net = model._network(model.center.size)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in parts["weights"].items()})
        model.net = net.to(model.device).eval()
        model.history = parts["history"]
        return model
