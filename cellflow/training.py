"""The one training loop, and the objective that feeds it pairs from couplings along paths."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import choice
from ._utils import progress_bar
from .couplings import sample_chains

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class Batch:
    """Regression targets at points ``x`` and times ``t``: velocity ``u`` and, for methods with
    growth, growth ``g``, with per-point loss weights ``weight``. Objectives give them in real
    time; :meth:`cellflow.clock.Clock.to_network` turns them into the network's units."""

    x: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None = None
    weight: torch.Tensor | None = None


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
        # every interval's pairs are drawn as one batch: cells indexed in one stacked tensor
        self.cells = torch.cat(populations)
        self.offsets = np.cumsum([0, *(len(x) for x in populations)])
        times = torch.as_tensor(np.asarray(times, dtype=float), device=self.cells.device, dtype=self.cells.dtype)
        self.start = times[:-1].repeat_interleave(self.batch_size)
        self.span = (times[1:] - times[:-1]).repeat_interleave(self.batch_size)
        self.segment = torch.zeros(len(self.start), dtype=torch.long, device=self.cells.device)

    def draw(self, rng: np.random.Generator) -> Batch:
        """One batch: ``batch_size`` pairs from every interval, at uniform fractions of it."""
        device, dtype = self.cells.device, self.cells.dtype
        drawn = [sampler.sample(self.batch_size, rng) for sampler in self.samplers]
        i = np.concatenate([pairs.i + self.offsets[k] for k, pairs in enumerate(drawn)])
        j = np.concatenate([pairs.j + self.offsets[k + 1] for k, pairs in enumerate(drawn)])
        x0 = self.cells[torch.from_numpy(i).to(device)]
        x1 = self.cells[torch.from_numpy(j).to(device)]
        s = torch.rand(len(i), 1, device=device, dtype=dtype)
        m0 = m1 = None
        if drawn[0].m0 is not None:
            m0 = torch.as_tensor(np.concatenate([p.m0 for p in drawn]), device=device, dtype=dtype)
            m1 = torch.as_tensor(np.concatenate([p.m1 for p in drawn]), device=device, dtype=dtype)
            died = torch.from_numpy(np.concatenate([p.died for p in drawn])).to(device)[:, None]
            x1 = torch.where(died, x0, x1)  # a dying cell stays where it is
            s = torch.where(died, s.clamp(max=0.99), s)  # its growth target diverges at s = 1
        point = self.path.sample(torch.stack([x0, x1]), self.segment, s, torch.randn_like(x0), m0, m1)
        g = None
        if self.growth:
            g = point.g / self.span if point.g is not None else torch.zeros_like(self.span)
        t = self.start + self.span * s[:, 0]
        return Batch(x=point.x, t=t, u=point.u / self.span[:, None], g=g, weight=point.weight)


class TupleObjective:
    """Multimarginal flow matching: chains through every time point, one path per chain.

    Each step draws ``batch_size * K`` chains ``(x_0, ..., x_K)`` (see
    :func:`cellflow.couplings.sample_chains`) and gives each one time, stratified so that every
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

    def draw(self, rng: np.random.Generator) -> Batch:
        """One batch of chains, each evaluated at one time in its segment."""
        n_segments = len(self.samplers)
        n = self.batch_size * n_segments
        device, dtype = self.populations[0].device, self.populations[0].dtype
        links = sample_chains(self.samplers, n, rng)
        knots = [self.populations[0][torch.from_numpy(links[0].i).to(device)]]
        alive = torch.ones(n, dtype=torch.bool, device=device)
        alive_before = []
        for k, link in enumerate(links):
            alive_before.append(alive)
            nxt = self.populations[k + 1][torch.from_numpy(link.j).to(device)]
            if link.died is not None:
                # a dying chain stays where it died: later knots repeat its last position
                alive = alive & ~torch.from_numpy(link.died).to(device)
            knots.append(torch.where(alive[:, None], nxt, knots[-1]))
        tuples = torch.stack(knots)
        segment = torch.arange(n, device=device) % n_segments
        rows = torch.arange(n, device=device)
        s = torch.rand(n, 1, device=device, dtype=dtype)
        m0 = m1 = None
        if links[0].m0 is not None:
            pick = lambda name: torch.as_tensor(np.stack([getattr(l, name) for l in links]), device=device)  # noqa: E731
            m0 = pick("m0").to(dtype)[segment, rows]
            m1 = pick("m1").to(dtype)[segment, rows]
            s = torch.where(pick("died")[segment, rows][:, None], s.clamp(max=0.99), s)
        point = self.path.sample(tuples, segment, s, torch.randn_like(tuples[0]), m0, m1)
        widths = (self.times[1:] - self.times[:-1])[segment]
        g = None
        if self.growth:
            g = point.g / widths if point.g is not None else torch.zeros_like(widths)
        weight = point.weight
        if m0 is not None:
            weight = weight * torch.stack(alive_before)[segment, rows].to(dtype)
        t = self.times[segment] + widths * s[:, 0]
        return Batch(x=point.x, t=t, u=point.u / widths[:, None], g=g, weight=weight)


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


def train(
    net: nn.Module,
    objective,
    clock,
    *,
    n_steps: int,
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    ema_decay: float | None = 0.999,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[nn.Module, np.ndarray]:
    """Fit ``net(x, t)`` to the targets of ``objective`` by Adam on the squared error.

    The loss is ``E[(|v - u|^2 + |g_net - g|^2) * weight]``, the growth term and the weight only
    where the batch has them. Velocity and growth are separate networks, so each is fitted to
    its own target (a relative weight of the two errors would not change the fit under Adam).

    Parameters
    ----------
    net
        The field, trained in place: returns a velocity, or ``(velocity, growth)``.
    objective
        Anything with ``draw(rng) -> Batch`` (real-time targets).
    clock
        Turns each batch into the network's units (:meth:`cellflow.clock.Clock.to_network`).
    n_steps
        Optimiser steps.
    lr
        Adam learning rate (the peak rate with a schedule).
    lr_schedule
        ``"constant"``, or ``"cosine"``: half a cosine from ``lr`` down to ``lr / 100`` over the steps.
    ema_decay
        Decay of an exponential moving average of the weights (``None``: no average). Early on
        the decay is ``min(ema_decay, (1 + step) / (10 + step))`` so the first weights do not linger.
    rng
        Random generator for pair sampling (torch draws use the global torch seed).
    progress
        Show a progress bar.

    Returns
    -------
    The trained field (the averaged copy when ``ema_decay`` is set) and the loss of every step.
    """
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
    average = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
    trained = list(net.parameters())
    averaged = list(average.parameters()) if average is not None else None
    history = torch.empty(n_steps, device=next(net.parameters()).device)
    bar = progress_bar(n_steps, "training", progress)
    for step in range(n_steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, n_steps, lr, lr_schedule)
        batch = clock.to_network(objective.draw(rng))
        output = net(batch.x, batch.t)
        velocity, growth = output if isinstance(output, tuple) else (output, None)
        error = ((velocity - batch.u) ** 2).sum(dim=1)
        if batch.g is not None:
            error = error + (growth[:, 0] - batch.g) ** 2
        if batch.weight is not None:
            error = error * batch.weight
        loss = error.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(averaged, trained, 1 - decay)
        history[step] = loss.detach()
        if progress and (step % 50 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.4g}")
        bar.update()
    bar.close()
    return (average if average is not None else net), history.cpu().numpy()
