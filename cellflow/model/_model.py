"""The model object: a configured method (coupling x path x objective) that a fit trains on a time course."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _checks
from .. import _distributed as distributed
from .._utils import compute_threads, resolve_device, seed_everything, show_progress
from ..fields import Clock
from ..paths import ConditionalPath
from ..training import (
    OBJECTIVES,
    fit_rollouts,
    rectify,
    rollout_steps,
    train,
    transport_stopping,
)
from . import _serialization
from ._config import Config, Resolved
from ._course import TimeCourse
from ._field import TrainedField
from ._horizon import horizon_history
from ._pieces import build_coupling, build_path
from ._resolve import resolve, source_masses, target_masses

MAX_AUTO_STEPS = 4000  # the most steps n_steps="auto" takes
TRUST_CELLS = 500  # cells per time point that a fit's trust signals (cellflow.model.horizon) are measured on


class CellFlow(TrainedField):
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
        Rollout fitting after flow matching (:func:`cellflow.training.fit_rollouts`): training goes
        on with a second term that carries cells along the flow itself, from the first time point
        through every later one and from each time point to the next, and measures how far they
        land from the measured cells (Sinkhorn divergence; population size for methods with
        growth), at most as many network passes as flow matching took steps. ``"auto"`` (default)
        runs it for three time points or more when that budget allows 10 steps or more
        (:func:`cellflow.training.rollout_steps`); ``True`` always, ``False`` never.
    hidden
        Hidden layer widths of the velocity network (and of the growth network); ``"auto"``
        sizes them from the representation's dimension (:func:`cellflow.model.default_hidden`).
    n_steps
        Optimiser steps; ``"auto"`` (default) stops when the flow stops getting closer to
        the data: every 100 steps, up to 512 cells of each time point are pushed to the next
        one and the energy distance to its cells is measured; training ends after 4 checks in a
        row that closed less than 1% of the distance of unmoved cells, or at 4000 steps, with
        the network of the best check (:func:`cellflow.training.transport_stopping`,
        :class:`cellflow.training.EarlyStopping`). An integer runs exactly that many steps.
    batch_size, lr, lr_schedule, ema_decay
        Training: pairs per interval and step (``"auto"``: :func:`cellflow.model.default_batch_size`),
        Adam learning rate, its schedule
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

    Attributes
    ----------
    config
        The settings above, checked once (:class:`cellflow.model.Config`); a fit never changes them.
    resolved
        What the last fit chose from its time course (:class:`cellflow.model.Resolved`: delta,
        entropy rate, batch size, widths, frame, clock); ``None`` before a fit. Fitting again,
        on the same or another time course, chooses them afresh (:attr:`params` shows both as one dict).
    net, history
        The trained network and the training history.
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
        hidden: tuple[int, ...] | list[int] | str = "auto",
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
    ) -> None:
        self.config = Config.create(
            method, coupling=coupling, path=path, objective=objective, sigma=sigma, reg=reg, delta=delta,
            entropy_rate=entropy_rate, hidden=hidden, n_steps=n_steps, batch_size=batch_size, lr=lr,
            lr_schedule=lr_schedule, ema_decay=ema_decay, block_size=block_size, block_order=block_order,
            field=field, reflow=reflow, rollout=rollout, seed=seed,
        )
        self.method = self.config.chosen_method
        self.net: torch.nn.Module | None = None
        self.resolved: Resolved | None = None
        self.history: dict[str, np.ndarray] = {}
        if self.config.reflow:
            self._check_balanced("reflow", reflow)
        self._path(np.array([0.0, 1.0]), 1.0)  # the path checks its own settings (e.g. the bridge's sigma > 0)
        self.device = distributed.local_device(resolve_device(device))

    # -- the pieces a method is made of (cellflow.model._pieces) ---------------------------
    def _path(self, times: np.ndarray, internal_delta: float | None = None) -> ConditionalPath:
        return build_path(self.config, self.method, self.resolved, times, internal_delta)

    def _check_balanced(self, name: str, value: int) -> None:
        if self.has_growth:
            raise ValueError(
                f"{name}={value!r} needs a balanced method, but {self.config.method!r} (coupling "
                f"{self.method.coupling!r}, path {self.method.path!r}) learns a growth field: rectified flow pairs "
                "each cell with the end of its own trajectory as a straight path of constant mass, which would discard "
                "the growth learned along it; use reflow=0 with this method, or a balanced one (e.g. 'otcfm')"
            )

    # -- training --------------------------------------------------------------------------
    def _samplers(self, cells: list[np.ndarray], sources: list[np.ndarray], weights: list[np.ndarray] | None,
                  rng: np.random.Generator, progress: bool, targets: list[np.ndarray] | None = None) -> list[Any]:
        """One pair sampler per interval, fitted to the source marginals ``sources`` and target marginals
        ``targets`` (default: the next time point's ``weights``) of internal float32 cells on the host; in a
        distributed fit each process solves its share of the blocks.
        """
        coupling, part = build_coupling(self.config, self.method, self._fitted_state()), distributed.part()
        mass = weights or [np.ones(len(z)) for z in cells]
        targets = mass[1:] if targets is None else targets
        return [coupling.sampler(cells[k], cells[k + 1], sources[k], targets[k], rng=rng, source_mass=mass[k],
                                 device=self.device, part=part, progress=progress)
                for k in range(len(cells) - 1)]

    def fit(self, course: TimeCourse, progress: bool | None = None) -> CellFlow:
        """Train on a time course (see :func:`cellflow.io.read_time_course`).

        Everything a fit chooses from the data is chosen afresh (:attr:`resolved`), so fitting
        the same model on another course gives the model a fresh one would. Under ``torchrun``
        (an initialised ``torch.distributed`` group) every process runs this same call: each
        solves its share of the coupling blocks and draws its own pairs, and gradients are
        averaged (:func:`cellflow.training.train`). ``progress``: show progress bars (``None``:
        unless ``scanpy.settings.verbosity`` is 0).

        Returns
        -------
        The model itself, trained.
        """
        c, progress = self.config, show_progress(progress)
        distributed.join(self.device)
        rng = seed_everything(c.seed)
        self.net, self.resolved, self.history = None, None, {}
        sources = source_masses(course)  # bad prior growth fails before any work
        start = time.perf_counter()
        self.resolved = resolve(self.config, self.method, course)
        internal = [self._to_internal(x) for x in course.populations]
        # the couplings read float32 cells on the host (each block is solved in float64)
        cpu = [z.numpy() if z.device.type == "cpu" else ((np.asarray(x) - self.center) / self.scale).astype(np.float32)
               for z, x in zip(internal, course.populations)]
        with compute_threads(self.device):
            samplers = self._samplers(cpu, sources, course.weights, rng, progress, target_masses(course, sources))
            coupling_seconds = time.perf_counter() - start
            path = self._path(course.times)
            objective = OBJECTIVES[self.method.objective](
                internal, course.times, samplers, path, self.resolved.batch_size, growth=self.has_growth,
            )
            field = self._training_field
            stopping = (transport_stopping(field, internal, course.weights, course.times, rng)
                        if c.n_steps == "auto" else None)
            # every process draws its own pairs: the seed differs per rank after the shared choices above
            torch.manual_seed(c.seed + 1_000_003 * distributed.part()[0])
            curves = self.method.path_class.through_knots  # continuous targets: continuous units
            clock = Clock.from_targets(course.times, objective, continuous=curves)
            if distributed.active():  # one clock for all processes: the mean of their measured units
                clock = Clock(course.times, distributed.mean(clock.units), continuous=curves)
            self.resolved = dataclasses.replace(self.resolved, clock=clock)
            net, log = train(
                self._network(course.n_dims, self.resolved.hidden).to(self.device), objective, clock,
                n_steps=MAX_AUTO_STEPS if c.n_steps == "auto" else c.n_steps, lr=c.lr, lr_schedule=c.lr_schedule,
                ema_decay=c.ema_decay or None, stopping=stopping, progress=progress,
            )
            self.net = net.eval()
            self.history = {**log, **path.calibration, "coupling_seconds": np.array(coupling_seconds)}
            if c.reflow:
                self._rectify(internal, sources, course, c.reflow, rng, progress)
            steps = rollout_steps(c.rollout, self.history["loss"].size, len(internal) - 1)
            if steps:
                self.net, log = fit_rollouts(
                    self.net, objective, clock, field, internal, course.weights, course.times, self.has_growth, rng,
                    n_steps=steps, lr=c.lr, ema_decay=c.ema_decay or None,
                    matching_loss=float(np.mean(self.history["loss"][-100:])), progress=progress,
                )
                self.history.update(log)
        self.history["fit_seconds"] = np.array(time.perf_counter() - start)
        start = time.perf_counter()
        self.history.update(horizon_history(self, course, max_cells=TRUST_CELLS))
        self.history["trust_seconds"] = np.array(time.perf_counter() - start)
        return self

    def _training_field(self, z: torch.Tensor, t: torch.Tensor,
                        net: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocity and growth of a network in training, in the interval after each knot."""
        return self._field(z, t, "after", net)

    # -- rectified flow ------------------------------------------------------------------
    def rectify(self, course: TimeCourse, rounds: int = 1, progress: bool | None = None) -> CellFlow:
        """Straighten the trained flow by ``rounds`` rounds of rectified flow ("reflow") on ``course``.

        A round pushes every cell of each time point but the last to the next along the current
        flow and trains the network again on straight lines without noise from each cell to its
        own end point (:func:`cellflow.training.rectify`), for as many steps as the first fit
        (``n_steps``, or the steps that ``n_steps="auto"`` ran), without early stopping: the old
        flow's pushes are the targets, so a distance to the data would not see the paths
        straighten. ``params["reflow"]`` counts the rounds done; ``history`` records per round
        ``reflow_loss``, ``reflow_seconds`` and ``reflow_straightness``.

        Parameters
        ----------
        course
            The time course the model was fitted on (its time points, in the same representation).
        rounds
            Rounds to run (at least one).
        progress
            Show a progress bar (``None``: unless ``scanpy.settings.verbosity`` is 0).

        Returns
        -------
        The model itself, straightened.
        """
        self._check_fitted()
        rounds, progress = _checks.integer("rounds", rounds, 1), show_progress(progress)
        self._check_balanced("rounds", rounds)
        if course.times.shape != self.times.shape or not np.allclose(course.times, self.times):
            raise ValueError(f"the course's times {course.times.tolist()} are not the model's {self.times.tolist()}: "
                             "rectify the model on the time course it was fitted on")
        rng = seed_everything(self.config.seed + 7919 * (1 + self._fitted_state().reflow))
        with compute_threads(self.device):
            internal = [self._to_internal(x) for x in course.populations]
            self._rectify(internal, source_masses(course), course, rounds, rng, progress)
        return self

    def _rectify(self, internal: list[torch.Tensor], sources: list[np.ndarray], course: TimeCourse, rounds: int,
                 rng: np.random.Generator, progress: bool) -> None:
        c, resolved = self.config, self._fitted_state()
        equal = course.weights is None and course.growth is None
        masses = None if equal else [torch.as_tensor(m, dtype=torch.float32, device=self.device) for m in sources]
        self.net, log = rectify(
            self._fitted_net(), self._training_field, internal, self.times, self.clock, masses=masses, rounds=rounds,
            n_steps=c.n_steps if c.n_steps != "auto" else int(self.history["loss"].size),
            batch_size=resolved.batch_size, lr=c.lr, lr_schedule=c.lr_schedule, ema_decay=c.ema_decay or None,
            rng=rng, progress=progress, history=self.history,
        )
        self.history.update(log)
        self.resolved = dataclasses.replace(resolved, reflow=resolved.reflow + rounds)

    # -- plain-array state (for AnnData.uns and files) -----------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to restore the model, as plain scalars, strings and arrays.

        Returns
        -------
        The state (:func:`cellflow.model._serialization.model_state`).
        """
        self._check_fitted()
        return _serialization.model_state(self)

    def save(self, path: str | Path) -> Path:
        """Write the model to a ``.npz`` file of plain arrays; in a distributed fit only rank 0 writes.

        Returns
        -------
        The path written.
        """
        return _serialization.write(self.to_dict(), path) if distributed.is_main() else Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> CellFlow:
        """Read a model file written by :meth:`save`; loading executes no code.

        Returns
        -------
        The restored model.
        """
        return cls.from_dict(_serialization.read(path), device=device)

    @classmethod
    def from_dict(cls, state: dict[str, Any], device: str = "auto") -> CellFlow:
        """Restore a model written by :meth:`to_dict` (e.g. read back from an ``.h5ad``).

        Every entry is checked, and the weights' names and shapes against the network the
        settings describe, before that network is built.

        Returns
        -------
        The restored model.
        """
        return _serialization.restore(cls, state, device)
