"""When training stops: every few steps a score of the network, and the rule that ends training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ..metrics import energy_distance
from ..solvers import integrate

CHECK_CELLS = 512  # cells per time point pushed to decide when to stop (n_steps="auto")
# midpoint steps per interval of that push; 8 chose the same check on every leave-one-out fold of
# emt and kouno_thp1, at twice the cost
CHECK_STEPS = 4

#: A network in training seen in real time: ``field(z, t, net) -> (velocity (n, d), growth (n, 1) or None)``
#: per unit of real time at internal positions ``z`` and real times ``t`` (``CellFlow._training_field``).
TrainingField = Callable[[torch.Tensor, torch.Tensor, nn.Module], tuple[torch.Tensor, torch.Tensor | None]]


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

    def reason(self) -> str:
        """Why the rule stopped training, in words (the progress bar's note)."""
        return f"stopped early: no {100 * self.min_improvement:g}% gain in {self.patience} checks"


def transport_stopping(field: TrainingField, populations: list[torch.Tensor], masses: list[np.ndarray] | None,
                       times: npt.ArrayLike, rng: np.random.Generator) -> EarlyStopping:
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

    def gaps(moved: torch.Tensor, log_mass: torch.Tensor | None = None) -> torch.Tensor:
        values = []
        for k, (z, m) in enumerate(zip(torch.split(moved, counts), torch.split(log_mass, counts)
                                       if log_mass is not None else [None] * len(counts))):
            w = weights[k] if m is None else weights[k] * torch.exp(m - m.max())
            values.append(energy_distance(z, w / w.sum(), cells[k + 1], weights[k + 1]))
        return torch.stack(values).mean()

    def score(net: nn.Module) -> float:
        # d(z, log m)/ds with t = t_k + s (t_{k+1} - t_k)
        def along_fraction(current: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            v, g = field(current[:, :-1], start + s.to(start.dtype) * span, net)
            rate = torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)
            return rate * span[:, None].to(rate.dtype)

        out = integrate(along_fraction, state, torch.tensor([0.0, 1.0]), method="midpoint",
                        step_size=1 / CHECK_STEPS)[-1]
        return float(gaps(out[:, :-1], out[:, -1]))

    return EarlyStopping(score, scale=float(gaps(state[:, :-1])))
