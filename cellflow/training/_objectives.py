"""Training objectives: batches of points, times and regression targets drawn from couplings along paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from ..paths import ConditionalPath
from ..transport._samplers import Pairs, PairSampler, StackedPlans, _lookup, sample_chains


@dataclass
class Batch:
    """Regression targets at points ``x`` and times ``t``: velocity ``u``, for methods with
    growth the growth ``g``, for paths with bridge noise ``score`` (``-eps``) and ``noise_scale``
    (``lambda(s)``), the score network being fitted by ``|lambda(s) s_net + eps|^2`` (see
    :mod:`cellflow.paths`), with per-point loss weights ``weight``. Objectives give them in real
    time; :meth:`cellflow.fields.Clock.to_network` turns them into the network's units (positions
    keep theirs, so the score is left as it is).
    """

    x: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor
    g: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    score: torch.Tensor | None = None
    noise_scale: torch.Tensor | None = None


class Objective(Protocol):
    """What the training loop fits: anything that draws batches of real-time targets."""

    def draw(self) -> Batch:
        """One batch."""
        ...


class PairObjective:
    """Flow matching between neighbouring time points: a coupling per interval, one pair path.

    Parameters
    ----------
    populations
        Cells of each time point, as tensors on the training device.
    times
        Real time of each population.
    samplers
        One pair sampler per interval (see :mod:`cellflow.transport`).
    path
        A pair path (see :mod:`cellflow.paths`).
    batch_size
        Pairs drawn per interval and step.
    growth
        Produce growth targets (zero where the path gives none).
    """

    def __init__(self, populations: list[torch.Tensor], times: Sequence[float] | np.ndarray,
                 samplers: Sequence[PairSampler], path: ConditionalPath, batch_size: int, growth: bool = False) -> None:
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
        # one lookup for every interval's pairs; product couplings draw interval by interval
        self.stacked: StackedPlans | None = None
        if StackedPlans.stacks(samplers):
            self.stacked = StackedPlans(samplers, self.offsets[:-1], self.offsets[1:], self.batch_size)
        real = torch.as_tensor(np.asarray(times, dtype=float), device=self.cells.device, dtype=self.cells.dtype)
        self.start = real[:-1].repeat_interleave(self.batch_size)
        self.span = (real[1:] - real[:-1]).repeat_interleave(self.batch_size)
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
            assert pairs.m1 is not None and pairs.died is not None, "unbalanced pairs carry both masses"
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
    :func:`cellflow.transport.sample_chains`) and gives each one time, stratified so that every
    segment gets ``batch_size`` of them. The path is either a curve through all the knots or a
    pair path applied to the chain's own segment (piecewise).

    Parameters
    ----------
    populations, times, samplers, batch_size, growth
        As for :class:`PairObjective`.
    path
        Any path of :mod:`cellflow.paths`.
    """

    def __init__(self, populations: list[torch.Tensor], times: Sequence[float] | np.ndarray,
                 samplers: Sequence[PairSampler], path: ConditionalPath, batch_size: int, growth: bool = False) -> None:
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
            m0 = torch.stack([_given(link.m0) for link in links]).to(dtype)[segment, rows]
            m1 = torch.stack([_given(link.m1) for link in links]).to(dtype)[segment, rows]
            s = torch.where(torch.stack([_given(link.died) for link in links])[segment, rows][:, None],
                            s.clamp(max=0.99), s)
        point = self.path.sample(tuples, segment, s, self.path.noise(tuples[0]), m0, m1)
        widths = (self.times[1:] - self.times[:-1])[segment]
        g = None
        if self.growth:
            g = point.g / widths if point.g is not None else torch.zeros_like(widths)
        weight = point.weight
        if m0 is not None:
            assert weight is not None, "a path with masses weighs its points"
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

    def __init__(self, sources: list[torch.Tensor], targets: list[torch.Tensor], times: npt.ArrayLike,
                 path: ConditionalPath, batch_size: int, masses: list[torch.Tensor] | None = None) -> None:
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
        real = torch.as_tensor(np.asarray(times, dtype=float), device=device, dtype=dtype)
        self.start = real[:-1].repeat_interleave(self.batch_size)
        self.span = (real[1:] - real[:-1]).repeat_interleave(self.batch_size)

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


def _given(part: torch.Tensor | None) -> torch.Tensor:
    """A part of unbalanced pairs (``m0``, ``m1``, ``died``), which come all together."""
    assert part is not None, "unbalanced pairs carry both masses and which cells died"
    return part


OBJECTIVES: dict[str, type[PairObjective | TupleObjective]] = {"pairs": PairObjective, "chains": TupleObjective}
