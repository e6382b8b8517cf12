"""The one training loop, and the objective that feeds it pairs from couplings along paths."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._utils import progress_bar


@dataclass
class Batch:
    """Regression targets for the velocity field at points ``x`` and times ``t``."""

    x: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor


class PairObjective:
    """Flow matching between neighbouring time points: a coupling per interval, one path.

    Parameters
    ----------
    populations
        Cells of each time point, as tensors on the training device.
    times
        Time of each population (the training time scale).
    samplers
        One pair sampler per interval (see :mod:`cellflow.couplings`).
    path
        Conditional path (see :mod:`cellflow.paths`).
    batch_size
        Pairs drawn per interval and step.
    """

    def __init__(self, populations, times, samplers, path, batch_size: int):
        self.populations = populations
        self.times = [float(t) for t in times]
        self.samplers = samplers
        self.path = path
        self.batch_size = int(batch_size)

    def draw(self, rng: np.random.Generator) -> Batch:
        """One batch: ``batch_size`` pairs from every interval, at uniform fractions of it."""
        xs, ts, us = [], [], []
        for k, sampler in enumerate(self.samplers):
            i, j = sampler.sample(self.batch_size, rng)
            source, target = self.populations[k], self.populations[k + 1]
            x0 = source[torch.from_numpy(i).to(source.device)]
            x1 = target[torch.from_numpy(j).to(target.device)]
            s = torch.rand(self.batch_size, 1, device=x0.device, dtype=x0.dtype)
            point = self.path.sample(x0, x1, s, torch.randn_like(x0))
            span = self.times[k + 1] - self.times[k]
            xs.append(point.x)
            ts.append(self.times[k] + span * s)
            us.append(point.u / span)
        return Batch(x=torch.cat(xs), t=torch.cat(ts), u=torch.cat(us))


def train(
    net: nn.Module,
    objective,
    *,
    n_steps: int,
    lr: float = 1e-3,
    ema_decay: float | None = 0.999,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[nn.Module, np.ndarray]:
    """Fit ``net(x, t)`` to the targets of ``objective`` by Adam on the squared error.

    Parameters
    ----------
    net
        The field, trained in place.
    objective
        Anything with ``draw(rng) -> Batch``.
    n_steps
        Optimiser steps.
    lr
        Adam learning rate.
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
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    average = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
    history = torch.empty(n_steps, device=next(net.parameters()).device)
    bar = progress_bar(n_steps, "training", progress)
    for step in range(n_steps):
        batch = objective.draw(rng)
        loss = ((net(batch.x, batch.t) - batch.u) ** 2).sum(dim=1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_avg, p in zip(average.parameters(), net.parameters()):
                    p_avg.lerp_(p, 1 - decay)
        history[step] = loss.detach()
        if progress and (step % 50 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.4g}")
        bar.update()
    bar.close()
    return (average if average is not None else net), history.cpu().numpy()
