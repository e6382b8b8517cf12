"""The one training loop, and the objective that feeds it pairs from couplings along paths."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ._checks import choice
from . import distributed
from ._utils import progress_bar
from .samplers import Pairs, StackedPlans, _lookup, sample_chains
from .integration import integrate
from .metrics import energy_distance
from .networks import field_output

LR_SCHEDULES = ("constant", "cosine")
CHECK_CELLS = 512  # cells per time point pushed to decide when to stop (n_steps="auto")
# midpoint steps per interval of that push; 8 chose the same check on every leave-one-out fold of
# emt and kouno_thp1, at twice the cost
CHECK_STEPS = 4


@dataclass
class Batch:
    """Regression targets at points ``x`` and times ``t``: velocity ``u``, for methods with
    growth the growth ``g``, for paths with bridge noise ``score`` (``-eps``) and ``noise_scale``
    (``lambda(s)``), the score network being fitted by ``|lambda(s) s_net + eps|^2`` (see
    :mod:`cellflow.paths`), with per-point loss weights ``weight``. Objectives give them in real
    time; :meth:`cellflow.clock.Clock.to_network` turns them into the network's units (positions
    keep theirs, so the score is left as it is)."""

    x: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    score: torch.Tensor | None = None
    noise_scale: torch.Tensor | None = None


class PairObjective:
    """Flow matching between neighbouring time points: a coupling per interval, one pair path.

    Parameters
    ----------
    populations
        Cells of each time point, as tensors on the training device.
    times
        Real time of each population.
    samplers
        One pair sampler per interval (see :mod:`cellflow.couplings`).
    path
        A pair path (see :mod:`cellflow.paths`).
    batch_size
        Pairs drawn per interval and step.
    growth
        Produce growth targets (zero where the path gives none).
    """

    def __init__(self, populations, times, samplers, path, batch_size: int, growth: bool = False):
        if path.through_knots:
            raise ValueError("a curve through every time point trains on chains: use objective='chains'")
        self.samplers = samplers
        self.path = path
        self.batch_size = int(batch_size)
        self.growth = growth
        path.calibrate(populations, times, samplers)
        # every interval's pairs are drawn as one batch: cells indexed in one stacked tensor
        self.cells = torch.cat(populations)
        self.offsets = np.cumsum([0, *(len(x) for x in populations)]).tolist()
        self.stacked = None  # one lookup for every interval's pairs; product couplings draw interval by interval
        if StackedPlans.stacks(samplers):
            self.stacked = StackedPlans(samplers, self.offsets[:-1], self.offsets[1:], self.batch_size)
        times = torch.as_tensor(np.asarray(times, dtype=float), device=self.cells.device, dtype=self.cells.dtype)
        self.start = times[:-1].repeat_interleave(self.batch_size)
        self.span = (times[1:] - times[:-1]).repeat_interleave(self.batch_size)
        self.segment = torch.arange(len(samplers), device=self.cells.device).repeat_interleave(self.batch_size)

    def draw(self) -> Batch:
        """One batch: ``batch_size`` pairs from every interval, at uniform fractions of it.

        Everything is drawn on the cells' device (torch's global generator): no copy from the host.
        """
        if self.stacked is not None:
            pairs = self.stacked.sample()
        else:
            drawn = [sampler.sample(self.batch_size) for sampler in self.samplers]
            pairs = Pairs(torch.cat([p.i + self.offsets[k] for k, p in enumerate(drawn)]),
                          torch.cat([p.j + self.offsets[k + 1] for k, p in enumerate(drawn)]))
        x0 = self.cells.index_select(0, pairs.i)
        x1 = self.cells.index_select(0, pairs.j)
        s = torch.rand(len(x0), 1, device=x0.device, dtype=x0.dtype)
        m0 = m1 = None
        if pairs.m0 is not None:
            m0, m1, died = pairs.m0.to(x0.dtype), pairs.m1.to(x0.dtype), pairs.died[:, None]
            x1 = torch.where(died, x0, x1)  # a dying cell stays where it is
            s = torch.where(died, s.clamp(max=0.99), s)  # its growth target diverges at s = 1
        point = self.path.sample(torch.stack([x0, x1]), self.segment, s, self.path.noise(x0), m0, m1)
        g = None
        if self.growth:
            g = point.g / self.span if point.g is not None else torch.zeros_like(self.span)
        t = self.start + self.span * s[:, 0]
        return Batch(x=point.x, t=t, u=point.u / self.span[:, None], g=g, weight=point.weight,
                     score=point.score, noise_scale=point.noise_scale)


class TupleObjective:
    """Multimarginal flow matching: chains through every time point, one path per chain.

    Each step draws ``batch_size * K`` chains ``(x_0, ..., x_K)`` (see
    :func:`cellflow.samplers.sample_chains`) and gives each one time, stratified so that every
    segment gets ``batch_size`` of them. The path is either a curve through all the knots or a
    pair path applied to the chain's own segment (piecewise).

    Parameters
    ----------
    populations, times, samplers, batch_size, growth
        As for :class:`PairObjective`.
    path
        Any path of :mod:`cellflow.paths`.
    """

    def __init__(self, populations, times, samplers, path, batch_size: int, growth: bool = False):
        self.populations = populations
        self.times = torch.as_tensor(np.asarray(times, dtype=float), device=populations[0].device,
                                     dtype=populations[0].dtype)
        self.samplers = samplers
        self.path = path
        self.batch_size = int(batch_size)
        self.growth = growth
        path.calibrate(populations, times, samplers)

    def draw(self) -> Batch:
        """One batch of chains, each evaluated at one time in its segment (drawn on the cells' device)."""
        n_segments = len(self.samplers)
        n = self.batch_size * n_segments
        device, dtype = self.populations[0].device, self.populations[0].dtype
        links = sample_chains(self.samplers, n)
        knots = [self.populations[0].index_select(0, links[0].i)]
        alive = torch.ones(n, dtype=torch.bool, device=device)
        alive_before = []
        for k, link in enumerate(links):
            alive_before.append(alive)
            nxt = self.populations[k + 1].index_select(0, link.j)
            if link.died is not None:
                # a dying chain stays where it died: later knots repeat its last position
                alive = alive & ~link.died
            knots.append(torch.where(alive[:, None], nxt, knots[-1]))
        tuples = torch.stack(knots)
        segment = torch.arange(n, device=device) % n_segments
        rows = torch.arange(n, device=device)
        s = torch.rand(n, 1, device=device, dtype=dtype)
        m0 = m1 = None
        if links[0].m0 is not None:
            m0 = torch.stack([link.m0 for link in links]).to(dtype)[segment, rows]
            m1 = torch.stack([link.m1 for link in links]).to(dtype)[segment, rows]
            s = torch.where(torch.stack([link.died for link in links])[segment, rows][:, None], s.clamp(max=0.99), s)
        point = self.path.sample(tuples, segment, s, self.path.noise(tuples[0]), m0, m1)
        widths = (self.times[1:] - self.times[:-1])[segment]
        g = None
        if self.growth:
            g = point.g / widths if point.g is not None else torch.zeros_like(widths)
        weight = point.weight
        if m0 is not None:
            weight = weight * torch.stack(alive_before)[segment, rows].to(dtype)
        t = self.times[segment] + widths * s[:, 0]
        return Batch(x=point.x, t=t, u=point.u / widths[:, None], g=g, weight=weight, score=point.score,
                     noise_scale=point.noise_scale)


class EndpointObjective:
    """Flow matching on given pairs: cell ``i`` of interval ``k`` travels to ``targets[k][i]``.

    The objective of rectified flow (:meth:`cellflow.CellFlow.rectify`): each cell is paired with
    a point of its own, the end of its trajectory under a trained flow, rather than with cells of
    the next population by a coupling. Every step draws ``batch_size`` pairs per interval (in
    proportion to the sources' masses when given) at uniform fractions of the interval.

    Parameters
    ----------
    sources, targets
        Per interval, the starting points and their paired end points: tensors of equal shape
        ``(n_k, d)`` on the training device.
    times
        Real times of the interval ends (one more than intervals).
    path
        A pair path (see :mod:`cellflow.paths`), e.g. the straight line without noise.
    batch_size
        Pairs drawn per interval and step.
    masses
        Per interval, the sources' masses (tensors ``(n_k,)``), or ``None`` for equal masses.
    """

    def __init__(self, sources, targets, times, path, batch_size: int, masses=None):
        if [z.shape for z in sources] != [z.shape for z in targets]:
            raise ValueError("every source point needs one target point: the shapes of sources and targets differ")
        self.sources, self.targets = torch.cat(sources), torch.cat(targets)
        self.sizes = [len(z) for z in sources]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        # cumulative masses, drawn from as the samplers draw (one search per step, no renormalising)
        self.cdfs = None if masses is None else [torch.cumsum(m.to(torch.float64), 0) for m in masses]
        self.path = path
        self.batch_size = int(batch_size)
        device, dtype = self.sources.device, self.sources.dtype
        times = torch.as_tensor(np.asarray(times, dtype=float), device=device, dtype=dtype)
        self.start = times[:-1].repeat_interleave(self.batch_size)
        self.span = (times[1:] - times[:-1]).repeat_interleave(self.batch_size)

    def draw(self) -> Batch:
        """One batch of ``batch_size`` pairs per interval, drawn on the points' device."""
        device, n = self.sources.device, self.batch_size
        picks = ([torch.randint(size, (n,), device=device) for size in self.sizes] if self.cdfs is None
                 else [_lookup(cdf, n) for cdf in self.cdfs])
        rows = torch.cat([pick + offset for pick, offset in zip(picks, self.offsets)])
        x0, x1 = self.sources.index_select(0, rows), self.targets.index_select(0, rows)
        s = torch.rand(len(x0), 1, device=device, dtype=x0.dtype)
        point = self.path.pair(x0, x1, s, self.path.noise(x0))
        return Batch(x=point.x, t=self.start + self.span * s[:, 0], u=point.u / self.span[:, None])


OBJECTIVES = {"pairs": PairObjective, "chains": TupleObjective}


def learning_rate(step: int, n_steps: int, lr: float, schedule: str = "constant") -> float:
    """Learning rate of ``step`` (0-based) out of ``n_steps``.

    ``"constant"``: ``lr`` throughout. ``"cosine"``: half a cosine from ``lr`` at the first step
    to ``lr / 100`` at the last.
    """
    if schedule == "constant" or n_steps < 2:
        return lr
    floor = lr / 100
    return floor + 0.5 * (lr - floor) * (1 + np.cos(np.pi * step / (n_steps - 1)))


@dataclass
class EarlyStopping:
    """When to stop training: the rule of ``n_steps="auto"``.

    Every ``check_every`` steps, ``score(network)`` (lower is better) is measured on the
    averaged network; training stops when for ``patience`` checks in a row it has not fallen by
    ``min_improvement x scale`` below the last value that did, or at the step limit. ``scale``
    is the score of doing nothing (for a flow: of not moving the cells), so the rule reads
    "stop once the last checks closed less than 1% of the original gap". The network of the
    check with the lowest score is returned.
    """

    score: Callable[[nn.Module], float]
    scale: float
    check_every: int = 100
    patience: int = 4
    min_improvement: float = 0.01


def transport_stopping(field, populations, masses, times, rng) -> EarlyStopping:
    """The rule of ``n_steps="auto"``: how far the flow's push of each time point lands from the next.

    Up to :data:`CHECK_CELLS` cells of every time point are drawn once. The score of a network
    is the mean over intervals of the energy distance between the cells of ``t_k`` pushed to
    ``t_{k+1}`` (:data:`CHECK_STEPS` midpoint steps, weighted by their mass where the field has
    growth) and the cells of ``t_{k+1}``; its scale is that distance for cells that do not
    move. All intervals are pushed together, each in its own fraction of time, so a check costs
    ``2 x CHECK_STEPS`` passes of the network whatever the number of time points. This asks what
    the flow is for (carrying each population onto the next), on the training cells themselves:
    a loss on held-out pairs was tried and rose while this distance, and held-out time points'
    W1, still fell.

    Parameters
    ----------
    field
        ``field(z, t, net) -> (velocity (n, d), growth (n, 1) or None)`` per unit of real time.
    populations
        Cells of each time point (tensors on the training device).
    masses
        Mass of each time point's cells (arrays), or ``None`` for equal masses.
    times
        Real time of each population.
    rng
        NumPy generator that draws the cells.
    """
    device = populations[0].device
    masses = masses or [np.ones(len(z)) for z in populations]
    picks = [rng.choice(len(z), min(CHECK_CELLS, len(z)), replace=False) for z in populations]
    cells = [z[torch.as_tensor(pick, device=device)] for z, pick in zip(populations, picks)]
    weights = [torch.as_tensor(m[pick] / m[pick].sum(), dtype=cells[0].dtype, device=device)
               for m, pick in zip(masses, picks)]
    counts = [len(c) for c in cells[:-1]]
    real = torch.as_tensor(np.asarray(times, dtype=np.float64), device=device)
    start = torch.repeat_interleave(real[:-1], torch.as_tensor(counts, device=device))
    span = torch.repeat_interleave(real[1:] - real[:-1], torch.as_tensor(counts, device=device))
    state = torch.cat([torch.cat(cells[:-1]), torch.zeros(sum(counts), 1, device=device)], dim=1)

    def gaps(moved, log_mass=None) -> torch.Tensor:
        values = []
        for k, (z, m) in enumerate(zip(torch.split(moved, counts), torch.split(log_mass, counts)
                                       if log_mass is not None else [None] * len(counts))):
            w = weights[k] if m is None else weights[k] * torch.exp(m - m.max())
            values.append(energy_distance(z, w / w.sum(), cells[k + 1], weights[k + 1]))
        return torch.stack(values).mean()

    def score(net) -> float:
        def along_fraction(current, s):  # d(z, log m)/ds with t = t_k + s (t_{k+1} - t_k)
            v, g = field(current[:, :-1], start + s.to(start.dtype) * span, net)
            rate = torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)
            return rate * span[:, None].to(rate.dtype)

        out = integrate(along_fraction, state, torch.tensor([0.0, 1.0]), method="midpoint",
                        step_size=1 / CHECK_STEPS)[-1]
        return float(gaps(out[:, :-1], out[:, -1]))

    return EarlyStopping(score, scale=float(gaps(state[:, :-1])))


def _squared_error(net: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over the batch of ``(|v - u|^2 + |g_net - g|^2 + |noise_scale s_net - score|^2) * weight``."""
    with_score = batch.score is not None
    output = field_output(net(batch.x, batch.t, score=True) if with_score else net(batch.x, batch.t))
    error = ((output.velocity - batch.u) ** 2).sum(dim=1)
    if batch.g is not None:
        error = error + (output.growth[:, 0] - batch.g) ** 2
    if with_score:
        error = error + ((batch.noise_scale * output.score - batch.score) ** 2).sum(dim=1)
    if batch.weight is not None:
        error = error * batch.weight
    return error.mean()


def train(
    net: nn.Module,
    objective,
    clock,
    *,
    n_steps: int,
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    ema_decay: float | None = 0.999,
    stopping: EarlyStopping | None = None,
    rollout=None,
    progress: bool | None = None,
    description: str = "training",
) -> tuple[nn.Module, dict]:
    """Fit ``net(x, t)`` to the targets of ``objective`` by Adam on the squared error.

    The loss is ``E[(|v - u|^2 + |g_net - g|^2 + |noise_scale s_net - score|^2) * weight]``, the growth and
    score terms and the weight only where the batch has them. Velocity, growth and score are
    separate networks (:class:`cellflow.networks.Fields`), so each is fitted to its own target (a
    relative weight of the errors would not change the fit under Adam).

    Under an initialised ``torch.distributed`` process group of several processes the network is
    wrapped in :class:`torch.nn.parallel.DistributedDataParallel`: every process draws its own
    batches, gradients are averaged across processes, and the scores of early stopping are
    averaged too, so every process takes the same steps and stops at the same one.

    Parameters
    ----------
    net
        The field, trained in place: returns a velocity, or a :class:`cellflow.networks.FieldOutput`
        (with the score output when called with ``score=True``).
    objective
        Anything with ``draw() -> Batch`` (real-time targets).
    clock
        Turns each batch into the network's units (:meth:`cellflow.clock.Clock.to_network`).
    n_steps
        Optimiser steps (the most, with ``stopping``).
    lr
        Adam learning rate (the peak rate with a schedule).
    lr_schedule
        ``"constant"``, or ``"cosine"``: half a cosine from ``lr`` down to ``lr / 100`` over the steps.
    ema_decay
        Decay of an exponential moving average of the weights (``None``: no average). Early on
        the decay is ``min(ema_decay, (1 + step) / (10 + step))`` so the first weights do not linger.
    stopping
        Stop early by a score of the network (:class:`EarlyStopping`); ``None`` runs every step.
    rollout
        A :class:`cellflow.rollout.RolloutLoss`: each step's loss becomes ``rollout(net, loss)``,
        flow matching plus the rollout term, each over its value when the stage started.
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    description
        The progress bar's label.

    Returns
    -------
    The trained field (the averaged copy when ``ema_decay`` is set) and its history: ``loss``
    of every step run (with ``rollout``, the rollout term's own value at each step as
    ``rollout``) and, with ``stopping``, ``stopping_score`` at each check with the checks'
    ``stopping_step``.
    """
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    model = net
    if distributed.active():
        model = nn.parallel.DistributedDataParallel(net)  # starts from rank 0's weights
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
    average = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
    result = average if average is not None else net
    trained = list(net.parameters())
    averaged = list(average.parameters()) if average is not None else None
    history = torch.empty(n_steps, device=next(net.parameters()).device)
    rollout_history = np.full(n_steps, np.nan)
    checks, best, reference, best_state, waited = [], np.inf, np.inf, None, 0
    bar = progress_bar(n_steps, description, progress)
    step = 0
    for step in range(n_steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, n_steps, lr, lr_schedule)
        loss = _squared_error(model, clock.to_network(objective.draw()))
        if rollout is not None:
            loss = rollout(model, loss)
            rollout_history[step] = rollout.last
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(averaged, trained, 1 - decay)
        history[step] = loss.detach()
        if not bar.disable and (step % 50 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.4g}")
        bar.update()
        if stopping is not None and (step + 1) % stopping.check_every == 0:
            with torch.no_grad():
                value = float(distributed.mean(stopping.score(result)))  # every process stops at the same step
            checks.append((step + 1, value))
            if checks[-1][1] < best:
                best, best_state = checks[-1][1], copy.deepcopy(result.state_dict())
            if checks[-1][1] < reference - stopping.min_improvement * stopping.scale:
                reference, waited = checks[-1][1], 0
            else:
                waited += 1
                if waited >= stopping.patience:
                    break
    bar.close()
    if best_state is not None:
        result.load_state_dict(best_state)
    log = {"loss": history[: step + 1].cpu().numpy()}
    if rollout is not None:
        log["rollout"] = rollout_history[: step + 1]
    if checks:
        log["stopping_step"], log["stopping_score"] = (np.array(c) for c in zip(*checks))
    return result, log
