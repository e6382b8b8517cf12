"""The model object: a method (coupling x path x objective), a trained field, and how to use it."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .. import _checks, metrics
from .. import _distributed as distributed
from .._utils import compute_threads, resolve_device, seed_everything, show_progress
from ..fields import FIELDS, Clock, Fields, TimeMLP, field_output, velocity_network
from ..paths import LinearPath, default_entropy_rate
from ..solvers import _sde as bridges
from ..solvers import check_solver, integrate
from ..training import (
    CHECK_CELLS,
    LR_SCHEDULES,
    OBJECTIVES,
    EarlyStopping,
    EndpointObjective,
    train,
    transport_stopping,
)
from ..training._rollout import ROLLOUT_SOLVER_STEPS, RolloutLoss
from ..transport import BLOCK_ORDERS
from . import _serialization as _state
from ._course import TimeCourse
from ._delta import cross_validated_delta
from ._horizon import horizon_history
from ._methods import resolve_method

MAX_WIDTH = 65536  # widest hidden layer accepted (a guard against typos and tampered files)
MAX_LOG_GROWTH = 50.0  # largest |prior growth rate x interval| accepted (a factor e^50 per interval)
MAX_AUTO_STEPS = 4000  # the most steps n_steps="auto" takes
EVALUATION_CHUNK = 65536  # cells evaluated together when writing velocity and growth
TRUST_CELLS = 500  # cells per time point that a fit's trust signals (cellflow.model) are measured on
MAX_ROLLOUT_STEPS = 500  # the most steps of rollout fitting
ROLLOUT_CHECK_EVERY = 10  # steps between two stopping checks of rollout fitting
ROLLOUT_LR_FACTOR = 0.1  # rollout fitting's learning rate, relative to flow matching's


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
    units of the typical size of each interval's targets (:class:`cellflow.fields.Clock`);
    everything the model returns is in the user's units.

    Parameters
    ----------
    method
        A row of :data:`cellflow.model.METHODS`: ``"icfm"`` (independent coupling, straight
        paths), ``"otcfm"`` (exact OT, straight paths), ``"sbcfm"`` (entropic OT with
        ``reg = 2 sigma**2``, Brownian bridges), ``"wfr"`` (unbalanced Wasserstein-Fisher-Rao
        coupling and geodesics, WFR-FM: learns a growth field too) or ``"mmfm"``
        (multimarginal: the plans of consecutive intervals chained into tuples through every
        time point, a shape-preserving cubic Hermite curve through each tuple in real time) or
        ``"ecfm"`` (entropy-controlled: exact OT, straight lines with the least noise that keeps
        the entropy of the cells on them from falling faster than ``entropy_rate``) or
        ``"mmfm_potential"`` (as ``"mmfm"``, with chains drawn from the entropic OT potentials of
        each interval, extended to every cell by their c-transform; :mod:`cellflow.transport`) or
        ``"mfm"`` (metric flow matching: exact OT, paths bent toward the cells of the interval's two
        time points, of least kinetic energy under a LAND metric; :mod:`cellflow.paths`).
    coupling, path, objective
        Replace a piece of the method: coupling ``"independent"``, ``"exact"``, ``"entropic"``,
        ``"wfr"``, ``"potential"`` or ``"potential_map"``; path ``"linear"``, ``"brownian"``,
        ``"vp"``, ``"wfr"``, ``"hermite"``, ``"spline"`` (natural cubic spline), ``"entropy"``
        (entropy-controlled), ``"metric"`` or ``"metric_rbf"`` (bent toward the data under the LAND
        or the RBF metric; :class:`cellflow.paths.MetricPath`); objective ``"pairs"`` or
        ``"chains"`` (a curve through every time point needs chains; a pair path on chains is
        applied piecewise to each chain's own segment). A growth field is learned whenever the coupling carries mass
        or the path makes growth (``"wfr"``).
    sigma
        Noise of the path, in units of the data's overall standard deviation; default from the
        path (0.1; none for the WFR geodesic). The entropy-controlled path sets its own noise
        (see ``entropy_rate``) and takes no ``sigma``. Paths with bridge noise (``"brownian"`` and the
        curves ``"hermite"``, ``"spline"``: ``sigma sqrt(s (1-s))`` within each interval) with
        ``sigma > 0`` train a score network beside the velocity, which
        ``transport(..., stochastic=True)`` and :meth:`score` use.
    reg
        Entropic regularisation of the coupling (relative units); default from the coupling:
        ``2 sigma**2`` for entropic OT and the OT potentials (the Schroedinger bridge of the
        path's noise), 0.01 for the WFR coupling (its cost is in units of ``(d / 2 delta)^2``);
        exact and independent couplings have none.
    delta
        WFR length scale, positive, in the units of the representation; ``None`` chooses it from
        the data (:func:`cellflow.model.cross_validated_delta`: the candidate whose static WFR
        geodesics best predict each inner time point from its two neighbours; with two time
        points :func:`cellflow.model.default_delta`). Pairs farther apart than ``pi * delta``
        are never transported: the source cell dies in place and the target cell is not reached.
    entropy_rate
        For the entropy-controlled path (``"ecfm"``): how fast the entropy of the cells on the
        path may fall below the straight line between the entropies of the two time points, in
        nats per dimension per unit of the time column; the path adds the least noise that keeps
        this bound (:class:`cellflow.paths.EntropyControlledPath`). ``None`` chooses
        ``2 log(1 / 0.95) / median interval`` (:func:`cellflow.paths.default_entropy_rate`): by
        the middle of a typical interval the spread may shrink to 95% of the line, no further.
    field
        How the velocity is parametrised: ``"direct"`` (a network with one output per
        dimension) or ``"gradient"`` (the gradient in ``x`` of a learned scalar potential,
        ``v = grad phi(x, t)``: a field without curl, as optimal-transport velocities are;
        :class:`cellflow.fields.GradientField`; a training step costs about twice as much).
        A growth field stays a network of its own.
    reflow
        Rounds of rectified flow after the fit (:meth:`rectify`; 0 for none): each pairs every
        cell with the end of its own trajectory at the next time point and trains again on
        straight lines between the two, which straightens the flow so that few solver steps
        suffice. Balanced methods only.
    rollout
        Rollout fitting after flow matching (:mod:`cellflow.training`): training goes on with a
        second term that carries cells of the first time point through every later time point,
        and cells of each time point to the next, along the flow itself (a differentiable solver,
        :data:`cellflow.training._rollout.ROLLOUT_SOLVER_STEPS` midpoint steps per interval) and measures
        how far they land from the measured cells there (Sinkhorn divergence, mass-weighted, with
        the population size for methods with growth). It keeps pushes across many intervals on
        the data at a bounded cost: at most as many network passes as flow matching took steps;
        it stops on cells kept out of this stage and keeps the flow matching network when it
        cannot improve on it. ``"auto"`` (default) runs it for three time points or more (a push
        across several intervals; with two, flow matching already fits the one interval, and a
        sample-based divergence of a few hundred cells, in many dimensions, may pull the path's
        middle where the path family does not want it, e.g. undo ``"ecfm"``'s entropy control) when
        that budget allows at least :data:`ROLLOUT_CHECK_EVERY` steps (flow matching of a few
        hundred steps or more); ``True`` always (at least that many steps), ``False`` never.
        ``history`` records ``rollout_loss``, ``rollout_discrepancy``, ``rollout_score`` at each
        check (``rollout_step``), ``rollout_initial_score``, ``rollout_kept`` and ``rollout_seconds``.
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
        :func:`cellflow.transport.blocks`.
    seed
        Seed of every random draw (couplings, pairs, noise, initial weights).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... Under ``torchrun`` a bare
        CUDA device is each process's own GPU (:mod:`cellflow._distributed`). On a CPU, cellflow
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
        entropy_rate: float | None = None,
        hidden: tuple[int, ...] | str = "auto",
        n_steps: int | str = "auto",
        batch_size: int | str = "auto",
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        ema_decay: float | None = 0.999,
        block_size: int = 2048,
        block_order: str = "random",
        field: str = "direct",
        reflow: int = 0,
        rollout: bool | str = "auto",
        seed: int = 0,
        device: str = "auto",
    ):
        self.method = resolve_method(method, coupling, path, objective)
        coupling_class, path_class = self.method.coupling_class, self.method.path_class
        if sigma is not None and "sigma" not in path_class.settings:
            raise ValueError(f"sigma={sigma!r} does not apply to path={self.method.path!r}, whose settings are "
                             f"{list(path_class.settings)}; leave sigma out")
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
            sigma=sigma if "sigma" in path_class.settings else None, reg=reg,
            delta=delta if self.method.needs_delta else None,
            entropy_rate=_optional("entropy_rate", entropy_rate, minimum=0, hint=" (nats per dimension per time unit)")
            if "entropy_rate" in path_class.settings else None,
            hidden="auto" if hidden == "auto" else [_checks.integer("hidden", h, 1, MAX_WIDTH) for h in hidden],
            n_steps="auto" if n_steps == "auto" else _checks.integer("n_steps", n_steps, hint=" (or 'auto')"),
            batch_size="auto" if batch_size == "auto" else _checks.integer("batch_size", batch_size, hint=" (or 'auto')"),
            lr=_checks.number("lr", lr, minimum=0, strict=True),
            lr_schedule=_checks.choice("lr_schedule", lr_schedule, LR_SCHEDULES),
            ema_decay=0.0 if ema_decay is None else _checks.number("ema_decay", ema_decay, minimum=0, maximum=1 - 1e-12),
            block_size=_checks.integer("block_size", block_size, 2),
            block_order=_checks.choice("block_order", block_order, BLOCK_ORDERS), seed=_checks.integer("seed", seed, 0),
            field=_checks.choice("field", field, FIELDS), reflow=_checks.integer("reflow", reflow, 0),
            rollout="auto" if isinstance(rollout, str) and rollout == "auto" else _checks.flag(
                "rollout", rollout, hint=" or 'auto'"),
        )
        if self.params["reflow"]:
            self._check_balanced("reflow", reflow)
        self._path(np.array([0.0, 1.0]), 1.0)  # the path checks its own settings (e.g. the bridge's sigma > 0)
        self.device = distributed.local_device(resolve_device(device))
        self.net: torch.nn.Module | None = None
        self.history: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        p = self.params
        learns = ["velocity" + (" (gradient of a potential)" if p["field"] == "gradient" else "")]
        learns += [name for name, flag in (("growth", self.has_growth), ("score", self.has_score)) if flag]
        lines = [f"CellFlow {p['method']!r} on {self.device}",
                 f"    coupling {p['coupling']!r}, path {p['path']!r}, objective {p['objective']!r}",
                 f"    learns {', '.join(learns)}"]
        if self.net is None:
            lines.append("    not trained: call fit()")
        else:
            shown = [f"{t:g}" for t in self.times]
            times = ", ".join(shown if len(shown) <= 8 else [*shown[:3], "...", *shown[-2:]])
            steps = self.history["loss"].size if "loss" in self.history else 0
            reflow = f", then {p['reflow']} round{'s' * (p['reflow'] > 1)} of reflow" if p["reflow"] else ""
            rollout = (f", rollout fitting {self.history['rollout_loss'].size} steps"
                       if "rollout_loss" in self.history else "")
            lines.append(f"    trained on {self.times.size} time points ({times}) in {self.center.size} dimensions, "
                         f"{steps} steps{reflow}{rollout}")
            if "horizon_w1_first" in self.history:
                h = self.history
                worst = int(np.argmax(h["horizon_w1_first"] / h["horizon_w1_previous"]))
                ratio = h["horizon_w1_first"][worst] / h["horizon_w1_previous"][worst]
                lines.append(f"    horizon: cells of {self.times[0]:g} pushed to {h['horizon_times'][worst]:g} "
                             f"land at W1 {h['horizon_w1_first'][worst]:.3g}, {ratio:.2f}x the one-interval W1 "
                             "(the worst time)")
                lines.append(f"    pushed cells reach {h['horizon_norm_ratio'].max():.2f}x the data's largest norm; "
                             f"interval gain {h['interval_gain'].min():.2f}-{h['interval_gain'].max():.2f} "
                             "(cellflow.pl)")
        return "\n".join(lines)

    @property
    def has_growth(self) -> bool:
        """Whether the model learns a growth field (a coupling with mass or a path with growth)."""
        return self.method.has_growth

    @property
    def has_score(self) -> bool:
        """Whether the model learns a score (a path with bridge noise and ``sigma > 0``), so that it can
        sample its stochastic bridges (``transport(..., stochastic=True)``)."""
        return self.method.path_class.makes_score and self.params["sigma"] > 0

    @property
    def multimarginal(self) -> bool:
        """Whether training draws chains through all time points rather than pairs."""
        return self.method.objective == "chains"

    # -- the pieces a method is made of -------------------------------------------------
    def _settings(self, times, delta) -> dict:
        """Every setting a coupling or a path may ask for, in internal units."""
        p = self.params
        rate = p["entropy_rate"] if p["entropy_rate"] is not None else default_entropy_rate(times)
        return dict(sigma=p["sigma"], reg=p["reg"], delta=delta, block_size=p["block_size"],
                    block_order=p["block_order"], times=times, entropy_rate=rate)

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
        """The velocity network (see ``field``), with a growth and a score network beside it where the method
        learns them."""
        hidden = tuple(self.params["hidden"])
        velocity = velocity_network(n_dims, hidden, self.params["field"])
        if not (self.has_growth or self.has_score):
            return velocity
        return Fields(velocity, TimeMLP(n_dims, hidden, out_dim=1) if self.has_growth else None,
                      TimeMLP(n_dims, hidden) if self.has_score else None)

    def _check_balanced(self, name: str, value) -> None:
        if self.has_growth:
            raise ValueError(
                f"{name}={value!r} needs a balanced method, but {self.params['method']!r} (coupling "
                f"{self.method.coupling!r}, path {self.method.path!r}) learns a growth field: rectified flow pairs each "
                "cell with the end of its own trajectory as a straight path of constant mass, which would discard the "
                "growth learned along it; use reflow=0 with this method, or a balanced one (e.g. 'otcfm')"
            )

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
        share of the blocks (:meth:`cellflow.transport._couplings._BlockwiseOT.plan`)."""
        coupling = self._coupling()
        mass = course.weights or [np.ones(len(z)) for z in internal]
        part = distributed.part()
        return [
            coupling.sampler(internal[k], internal[k + 1], sources[k], mass[k + 1], rng=rng, source_mass=mass[k],
                             device=self.device, part=part, progress=progress)
            for k in range(len(internal) - 1)
        ]

    def fit(self, course: TimeCourse, progress: bool | None = None) -> "CellFlow":
        """Train on a time course (see :func:`cellflow.io.read_time_course`).

        Under ``torchrun`` (an initialised ``torch.distributed`` group) every process runs
        this same call: each solves its share of the coupling blocks and draws its own pairs,
        and gradients are averaged (:func:`cellflow.training.train`). ``progress``: show progress
        bars (``None``: unless ``scanpy.settings.verbosity`` is 0).
        """
        p, progress = self.params, show_progress(progress)
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
        if "entropy_rate" in self.method.path_class.settings and p["entropy_rate"] is None:
            p["entropy_rate"] = default_entropy_rate(course.times)
        with compute_threads(self.device):
            samplers = self._samplers(course, cpu, sources, rng, progress)
            coupling_seconds = time.perf_counter() - start
            if p["batch_size"] == "auto":
                p["batch_size"] = default_batch_size(course)
            path = self._path(course.times)
            objective = OBJECTIVES[self.method.objective](
                internal, course.times, samplers, path, p["batch_size"], growth=self.has_growth,
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
            self.history = {**log, **path.calibration, "coupling_seconds": np.array(coupling_seconds)}
            if p["reflow"]:
                self._rectify(internal, sources, course.weights is None and course.growth is None, p["reflow"],
                              rng, progress)
            steps = self._rollout_steps(len(internal) - 1)
            if steps:
                self._fit_rollouts(internal, course, objective, steps, rng, progress)
        self.history["fit_seconds"] = np.array(time.perf_counter() - start)
        start = time.perf_counter()
        self.history.update(horizon_history(self, course, max_cells=TRUST_CELLS))
        self.history["trust_seconds"] = np.array(time.perf_counter() - start)
        return self

    # -- rollout fitting -----------------------------------------------------------------
    def _rollout_steps(self, n_intervals: int) -> int:
        """Steps of rollout fitting after the flow matching just run (0: none; see ``rollout``): as many
        network passes as flow matching took steps, each step taking ``2 x ROLLOUT_SOLVER_STEPS``
        passes per interval, between :data:`ROLLOUT_CHECK_EVERY` and :data:`MAX_ROLLOUT_STEPS`."""
        asked = self.params["rollout"]
        budget = int(self.history["loss"].size) // (2 * n_intervals * ROLLOUT_SOLVER_STEPS)
        if asked is False or (asked == "auto" and (n_intervals < 2 or budget < ROLLOUT_CHECK_EVERY)):
            return 0
        return max(ROLLOUT_CHECK_EVERY, min(MAX_ROLLOUT_STEPS, budget))

    def _fit_rollouts(self, internal, course: TimeCourse, objective, n_steps: int, rng, progress: bool) -> None:
        """Rollout fitting after flow matching (see ``rollout`` and :mod:`cellflow.training`).

        Training goes on from the fitted weights with flow matching's loss plus the rollout term,
        at :data:`ROLLOUT_LR_FACTOR` times the learning rate, for at most ``n_steps`` steps
        (:meth:`_rollout_steps`); every :data:`ROLLOUT_CHECK_EVERY` steps the rollout discrepancy
        of cells kept out of this stage is measured; the stage stops as flow matching does (4 checks
        without a 1% gain) and keeps the best check's network, or the network it started from when
        no check beat it.
        """
        p, start = self.params, time.perf_counter()
        term = RolloutLoss(lambda z, t, net: self._field(z, t, "after", net), internal, course.weights,
                           course.times, self.has_growth, rng)
        net = self.net.requires_grad_(True)
        before = copy.deepcopy(net.state_dict())
        initial = float(distributed.mean(term.start(net, matching_loss=float(np.mean(self.history["loss"][-100:])))))
        stopping = EarlyStopping(term.check_score, scale=initial, check_every=ROLLOUT_CHECK_EVERY)
        net, log = train(net, objective, self.clock, n_steps=n_steps, lr=p["lr"] * ROLLOUT_LR_FACTOR,
                         lr_schedule="constant", ema_decay=p["ema_decay"] or None, stopping=stopping,
                         rollout=term, progress=progress, description="rollout fitting")
        improved = bool(log["stopping_score"].min() < initial)
        if not improved:
            net.load_state_dict(before)
        self.net = net.eval().requires_grad_(False)
        self.history.update(rollout_loss=log["loss"], rollout_discrepancy=log["rollout"],
                            rollout_step=log["stopping_step"], rollout_score=log["stopping_score"],
                            rollout_initial_score=np.array(initial), rollout_kept=np.array(improved),
                            rollout_seconds=np.array(time.perf_counter() - start))

    # -- rectified flow ------------------------------------------------------------------
    def rectify(self, course: TimeCourse, rounds: int = 1, progress: bool | None = None) -> "CellFlow":
        """Straighten the trained flow by ``rounds`` rounds of rectified flow ("reflow") on ``course``.

        A round pushes every cell of each time point ``t_k`` but the last to ``t_(k+1)`` along the
        current flow (the adaptive solver of :meth:`transport`), and trains the network again on
        straight lines without noise from each cell to its own end point
        (:class:`cellflow.training.EndpointObjective`, cells drawn in proportion to their mass).
        The new flow carries each population where the old one did, along straighter paths, so
        that few solver steps suffice. Each round starts from the current weights (as rectified
        flow does) and runs as many steps as the first fit (``n_steps``, or the steps that
        ``n_steps="auto"`` ran), without early stopping: the old flow's pushes are the targets, so
        a distance to the data would not see the paths straighten. ``params["reflow"]`` counts
        the rounds done; ``history`` records per round ``reflow_loss`` (every step),
        ``reflow_seconds`` and ``reflow_straightness`` (:func:`cellflow.metrics.straightness` of
        each interval on up to :data:`cellflow.training.CHECK_CELLS` cells of its start; the
        first row is before the first round).

        Parameters
        ----------
        course
            The time course the model was fitted on (its time points, in the same representation).
        rounds
            Rounds to run (at least one).
        progress
            Show a progress bar (``None``: unless ``scanpy.settings.verbosity`` is 0).
        """
        self._check_fitted()
        rounds, progress = _checks.integer("rounds", rounds, 1), show_progress(progress)
        self._check_balanced("rounds", rounds)
        if course.times.shape != self.times.shape or not np.allclose(course.times, self.times):
            raise ValueError(f"the course's times {course.times.tolist()} are not the model's {self.times.tolist()}: "
                             "rectify the model on the time course it was fitted on")
        rng = seed_everything(self.params["seed"] + 7919 * (1 + self.params["reflow"]))
        with compute_threads(self.device):
            internal = [self._to_internal(x) for x in course.populations]
            self._rectify(internal, self._source_masses(course), course.weights is None and course.growth is None,
                          rounds, rng, progress)
        self.params["reflow"] += rounds
        return self

    def _rectify(self, internal, sources, equal_masses: bool, rounds: int, rng, progress: bool) -> None:
        """Rounds of rectified flow on the internal populations (see :meth:`rectify`)."""
        p = self.params
        steps = p["n_steps"] if p["n_steps"] != "auto" else int(self.history["loss"].size)
        masses = None if equal_masses else [torch.as_tensor(m, dtype=torch.float32, device=self.device)
                                             for m in sources]
        checked = [z[torch.as_tensor(rng.choice(len(z), min(CHECK_CELLS, len(z)), replace=False), device=z.device)]
                   for z in internal[:-1]]
        spans = list(zip(self.times[:-1], self.times[1:]))

        def forward(z, t):
            return self._field(z, t, "after")[0]

        def straightness():
            return [metrics.straightness(forward, cells, t0, t1) for cells, (t0, t1) in zip(checked, spans)]

        history = {key: list(self.history.get(f"reflow_{key}", [])) for key in ("loss", "seconds", "straightness")}
        if not history["straightness"]:
            history["straightness"].append(straightness())
        for _ in range(rounds):
            start = time.perf_counter()
            with torch.no_grad():
                ends = [integrate(forward, z, torch.tensor([t0, t1], dtype=torch.float32))[-1]
                        for z, (t0, t1) in zip(internal[:-1], spans)]
            objective = EndpointObjective(internal[:-1], ends, self.times, LinearPath(), p["batch_size"], masses)
            net, log = train(self.net.requires_grad_(True), objective, self.clock, n_steps=steps, lr=p["lr"],
                             lr_schedule=p["lr_schedule"], ema_decay=p["ema_decay"] or None, progress=progress)
            self.net = net.eval()
            history["loss"].append(log["loss"])
            history["seconds"].append(time.perf_counter() - start)
            history["straightness"].append(straightness())
        self.history.update({f"reflow_{key}": np.array(values) for key, values in history.items()})

    def straightness(self, x, t_from: float, t_to: float, *, method: str = "dopri5",
                     step_size: float | None = None) -> float:
        """Straightness of the flow's paths from cells ``x`` at ``t_from`` to ``t_to``: kinetic energy over
        squared displacement, one for straight paths at constant speed (:func:`cellflow.metrics.straightness`)."""
        self._check_fitted()
        check_solver(method, step_size)
        t_from, t_to = _checks.number("t_from", t_from), _checks.number("t_to", t_to)
        side = "after" if t_to >= t_from else "before"
        with compute_threads(self.device):
            return metrics.straightness(lambda z, t: self._field(z, t, side)[0], self._to_internal(x), t_from, t_to,
                                        method=method, step_size=step_size)

    # -- using the field ---------------------------------------------------------------
    def _times(self, t, n: int, name: str = "t") -> torch.Tensor:
        """Real times broadcast to ``n`` cells, checked finite, as float64 on the model's device."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        if not np.isfinite(t).all():
            raise ValueError(f"{name}={float(t[~np.isfinite(t)][0])!r}: times must be finite numbers")
        return torch.as_tensor(t.copy(), device=self.device)

    def _field(self, z: torch.Tensor, t: torch.Tensor, at_knots: str = "mean", net=None, score: bool = False):
        """Internal velocity and growth (``None`` without) per unit of real time at internal positions
        ``z`` and real times ``t``; with ``score=True`` also the score network's output as a third entry.

        ``at_knots``: the unit exactly at a measured time (see :meth:`cellflow.fields.Clock.evaluate`).
        ``net``: a network other than the model's (one in training).
        """
        tau, unit = self.clock.evaluate(t.to(torch.float64).expand(len(z)), at_knots)
        net = self.net if net is None else net
        out = field_output(net(z, tau.to(z.dtype), score=True) if score else net(z, tau.to(z.dtype)))
        unit = unit.to(z.dtype)
        growth = None if out.growth is None else out.growth * unit[:, -1:]
        return (out.velocity * unit[:, :1], growth, out.score) if score else (out.velocity * unit[:, :1], growth)

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
        self, x, times, *, method: str = "dopri5", step_size: float | None = None, stochastic: bool = False,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and masses of cells starting at ``x`` at ``times[0]``, at every time of ``times``.

        The field is integrated in real time; ``step_size`` (fixed-step solvers only) is in the
        user's time unit. Masses start at one and follow ``d log m / dt = g``; they stay one for
        balanced methods.

        With ``stochastic=True`` (models with a score, :attr:`has_score`) each cell instead follows
        one path of the SDE ``dx = [v + (g^2 / 2) grad log p_t] dt + g dW`` whose marginals are those
        of the flow, ``g`` the diffusion of the path's bridges (:mod:`cellflow.solvers`), by
        Euler-Maruyama with ``step_size`` (default: 1/100 of each measured interval), drawn on the
        model's device from ``seed`` (default: the model's ``seed``), between the first and the
        last measured time.

        Returns
        -------
        Positions ``(len(times), n, d)`` and masses ``(len(times), n)``.
        """
        self._check_fitted()
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        if stochastic:
            self._check_score("stochastic=True")
            if method != "dopri5":
                raise ValueError(f"method={method!r} is an ODE solver; stochastic=True integrates the SDE by "
                                 "Euler-Maruyama: leave method at its default and set step_size if needed")
            step = None if step_size is None else _checks.number("step_size", step_size, minimum=0, strict=True)
            seed = self.params["seed"] if seed is None else _checks.integer("seed", seed, 0)
        else:
            step = check_solver(method, step_size)
        real, times = times, self._times(times, len(times), "times").to(torch.float32)
        z = self._to_internal(x)
        side = "after" if len(times) < 2 or times[-1] >= times[0] else "before"  # the interval the cells move into

        with torch.no_grad(), compute_threads(self.device):
            state = torch.cat([z, torch.zeros(len(z), 1, device=z.device)], dim=1)
            if stochastic:
                generator = torch.Generator(device=self.device).manual_seed(seed)
                out = bridges.transport(self, state, real, step, generator)
            else:
                out = integrate(lambda s, t: self._state_field(s, t, side), state, times, method=method,
                                step_size=step)
            z, log_mass = out[..., :-1], out[..., -1]
        positions = z.cpu().numpy().astype(np.float64) * self.scale + self.center
        return positions, np.exp(log_mass.cpu().numpy().astype(np.float64))

    def _check_score(self, asked: str) -> None:
        """Raise unless the model learned a score, naming what ``asked`` for it."""
        if not self.has_score:
            p = self.params
            raise ValueError(
                f"{asked} needs a learned score, but method {p['method']!r} (path {p['path']!r}, "
                f"sigma={p['sigma']:g}) learns none; fit a method whose path has bridge noise, e.g. "
                "method='sbcfm', or method='mmfm' with sigma > 0"
            )

    def score(self, x, t) -> np.ndarray:
        """Score ``grad log p_t`` of the model's population at positions ``x`` ``(n, d)`` and times ``t``
        (one or ``(n,)``, between the first and the last measured time), per unit of the user's
        representation; only for models with a score (:attr:`has_score`).
        """
        self._check_fitted()
        self._check_score("score()")
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (len(x),))
        bridges.check_range(self.times, t, "t")
        with torch.no_grad(), compute_threads(self.device):
            z = self._to_internal(x)
            score = self._field(z, self._times(t, len(z)), score=True)[2]
        return score.cpu().numpy().astype(np.float64) / self.scale

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

        Every entry is checked (:func:`cellflow.model._serialization.check_state`), and the weights' names and
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
        if model.has_score and not any(k.startswith("score.") for k in found):
            raise ValueError("the model has no score network: an earlier cellflow saved it, before paths with "
                             f"bridge noise (path {params['path']!r}, sigma={params['sigma']:g}) learned one; "
                             "refit the model")
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
            raise ValueError(f"the model's weights do not match its parameters (first mismatch: {wrong[0]!r}); "
                             "the state was edited or damaged: refit the model")
        net = model._network(model.center.size)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in parts["weights"].items()})
        model.net = net.to(model.device).eval()
        model.history = parts["history"]
        return model
