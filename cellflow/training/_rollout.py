"""Rollout fitting: the flow's own trajectories are made to reproduce the measured populations.

Flow matching fits the field where the training paths pass and leaves it free elsewhere, so
cells pushed across several intervals may drift away from the data (each interval's map
enlarges a small offset a little, and the enlargements compound). Rollout fitting adds a
term that integrates the field itself and compares where it carries cells with where the
cells were measured:

- a *global* rollout: cells of the first time point carried through every later time point;
- *one-interval* rollouts: cells of every time point carried to the next one, so that no
  interval is left unchecked and the one-interval map keeps its accuracy.

Both are integrated together, one interval after the other, with a fixed number of midpoint
steps per interval (the solver is differentiable, so the loss reaches the network's weights
through every step). The discrepancy is the debiased Sinkhorn divergence (``geomloss``)
between the rolled-out cells, weighted by their mass, and a fresh sample of the measured ones;
for fields with growth the squared error of the log of the population size reached is added.
Every divergence is divided by its own value when the stage starts, so that the one-interval
rollouts, whose divergences start small, weigh as much as the global ones, whose divergences
start large (an improvement far out cannot be bought with a loss of one-interval accuracy);
flow matching's loss, which the stage keeps, is likewise divided by its value at the start. The
scales come from the data, so the loss is the same whatever the data's units.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .. import _distributed as distributed
from ..fields import Clock
from ..solvers import integrate
from ._loop import train
from ._objectives import Objective
from ._stopping import EarlyStopping, TrainingField

ROLLOUT_CELLS = 128  # cells per time point in each rollout of a training step
ROLLOUT_SOLVER_STEPS = 4  # midpoint steps per interval (two network passes each)
ROLLOUT_BLUR = 0.05  # Sinkhorn blur, in units of the data's overall standard deviation
START_SAMPLES = 4  # training samples whose divergences, averaged, are the scales of the loss
SIZE_TOLERANCE = float(np.log(1.1))  # a 10% miss of a population's size weighs as a divergence at its start
CHECK_ROLLOUT_CELLS = 256  # draws per time point from the cells kept out of training that every check scores


class RolloutLoss:
    """The rollout term of a training step, and the score that decides when the stage stops.

    Parameters
    ----------
    field
        ``field(z, t, net) -> (velocity (n, d), growth (n, 1) or None)`` per unit of real time, at
        internal positions ``z`` and real times ``t`` (float64).
    populations
        Cells of each time point (tensors on the training device, internal units).
    masses
        Mass of each time point's cells (arrays), or ``None`` for unit masses.
    times
        Real time of each population.
    growth
        The field has growth: rolled-out cells carry a log-mass, the discrepancy weighs them by
        it, and the relative population size is fitted too.
    rng
        NumPy generator: which cells are kept out for the stopping score, and each step's sample.
    n_cells, solver_steps, blur
        Cells per time point and rollout, midpoint steps per interval, Sinkhorn blur.
    """

    def __init__(self, field: TrainingField, populations: list[torch.Tensor], masses: list[np.ndarray] | None,
                 times: npt.ArrayLike, growth: bool, rng: np.random.Generator, *, n_cells: int = ROLLOUT_CELLS,
                 solver_steps: int = ROLLOUT_SOLVER_STEPS, blur: float = ROLLOUT_BLUR) -> None:
        self.field, self.growth, self.rng = field, growth, rng
        self.n_cells, self.solver_steps = int(n_cells), int(solver_steps)
        self.device, self.dtype = populations[0].device, populations[0].dtype
        self.times = torch.as_tensor(np.asarray(times, dtype=np.float64), device=self.device)
        masses = masses or [np.ones(len(z)) for z in populations]
        from geomloss import SamplesLoss  # imported on use: keeps ``import cellflow`` light

        self.divergence = SamplesLoss("sinkhorn", p=2, blur=blur, debias=True, backend="tensorized")
        # relative population size of each time point against the first (what growth must reproduce)
        totals = np.array([float(np.sum(m)) for m in masses])
        self.log_size = torch.as_tensor(np.log(totals / totals[0]), device=self.device, dtype=self.dtype)
        # cells kept out of the rollout's training: the stopping score is measured on them alone
        self.train_cells: list[torch.Tensor] = []
        self.train_mass: list[np.ndarray] = []
        check = []
        for z, m in zip(populations, masses):
            m = np.asarray(m, dtype=np.float64)
            order = rng.permutation(len(z))
            kept, rest = (order[: len(z) // 4], order[len(z) // 4:]) if len(z) >= 8 else (order, order)
            self.train_cells.append(z.index_select(0, torch.as_tensor(rest, device=self.device)))
            self.train_mass.append(m[rest] / m[rest].sum())
            # a fixed draw of the kept cells, as many per time point, so that every check scores the same cells
            pick = kept[rng.choice(len(kept), CHECK_ROLLOUT_CELLS, p=m[kept] / m[kept].sum())]
            check.append(z.index_select(0, torch.as_tensor(pick, device=self.device)))
        self.check_cells = torch.stack(check)
        # each divergence's starting value (set by :meth:`start`)
        self.scales: torch.Tensor | None = None
        self.check_scales: torch.Tensor | None = None
        self.matching_scale = 1.0  # flow matching's loss when the stage starts
        self.last = float("nan")

    def _sample(self) -> torch.Tensor:
        """``n_cells`` training cells per time point, drawn with replacement in proportion to their
        mass: ``(K + 1, n_cells, d)``, so that every divergence of a step is solved in one batch.
        """
        return torch.stack([z.index_select(0, torch.as_tensor(self.rng.choice(len(z), self.n_cells, p=m),
                                                              device=self.device))
                            for z, m in zip(self.train_cells, self.train_mass)])

    def terms(self, net: nn.Module, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Divergences of the rollouts, and for growth the squared errors of their log population size.

        ``cells``: ``(K + 1, n, d)`` equally weighted cells of each time point. Both results are
        ``(K, 2)``: per interval's end, the global rollout's term, then the one-interval one's.
        """
        n_intervals, n = len(cells) - 1, cells.shape[1]
        zero = torch.zeros(n, 1, device=self.device, dtype=self.dtype)
        carried = torch.cat([cells[0], zero], 1)
        ends = []
        for k in range(n_intervals):
            t0, span = self.times[k], self.times[k + 1] - self.times[k]

            def along_fraction(current: torch.Tensor, s: torch.Tensor, t0: torch.Tensor = t0,
                               span: torch.Tensor = span) -> torch.Tensor:  # d(z, log m)/ds on this interval
                v, g = self.field(current[:, :-1], (t0 + s.to(t0.dtype) * span).expand(len(current)), net)
                rate = torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)
                return rate * span.to(rate.dtype)

            state = torch.cat([carried, torch.cat([cells[k], zero], 1)])
            end = integrate(along_fraction, state, torch.tensor([0.0, 1.0]), method="midpoint",
                            step_size=1.0 / self.solver_steps)[-1]
            carried = end[:n]
            ends.append(end.view(2, n, -1))  # the global rollout, then the one-interval one
        stacked = torch.stack(ends)  # (K, 2, n, d + 1)
        log_mass = stacked[..., -1]
        mass = torch.exp(log_mass - log_mass.detach().amax(dim=-1, keepdim=True))
        d = cells.shape[-1]
        uniform = torch.full((n_intervals * 2, n), 1.0 / n, device=self.device, dtype=self.dtype)
        # geomloss flattens its inputs with view(): every tensor it gets is made contiguous
        weights = (mass / mass.sum(-1, keepdim=True)).reshape(-1, n).contiguous()
        moved = stacked[..., :-1].reshape(-1, n, d).contiguous()
        targets = cells[1:, None].expand(-1, 2, -1, -1).reshape(-1, n, d).contiguous()
        divergences = self.divergence(weights, moved, uniform, targets)
        if not self.growth:
            return divergences.view(n_intervals, 2), None
        reached = torch.logsumexp(log_mass, dim=-1) - np.log(n)  # (K, 2) log of the relative size reached
        measured = torch.stack([self.log_size[1:] - self.log_size[0], self.log_size[1:] - self.log_size[:-1]], 1)
        return divergences.view(n_intervals, 2), (reached - measured) ** 2

    def _combined(self, terms: tuple[torch.Tensor, torch.Tensor | None], scales: torch.Tensor | None) -> torch.Tensor:
        """Mean of each divergence over its scale, plus the size errors in units of :data:`SIZE_TOLERANCE`."""
        if scales is None:
            raise RuntimeError("the rollout term has no scales yet: call start() first")
        divergences, sizes = terms
        value = (divergences / scales).mean()
        return value if sizes is None else value + (sizes / SIZE_TOLERANCE**2).mean()

    def start(self, net: nn.Module, matching_loss: float) -> float:
        """Fix the scales the stage's loss is measured in, from the network it starts with: each
        divergence's starting value (over a few training samples, and on the cells kept out).
        Returns the starting network's :meth:`check_score`.
        """
        with torch.no_grad():
            draws = [self.terms(net, self._sample())[0] for _ in range(START_SAMPLES)]
            self.scales = torch.stack(draws).mean(0).detach().clamp_min(1e-8)  # geomloss may keep a graph
            checked = self.terms(net, self.check_cells)
            self.check_scales = checked[0].detach().clamp_min(1e-8)
            score = float(self._combined(checked, self.check_scales).detach())
        self.matching_scale = max(float(matching_loss), 1e-12)
        return score

    def __call__(self, net: nn.Module, matching_loss: torch.Tensor) -> torch.Tensor:
        """Flow matching's loss over its starting value, plus the rollout term on a fresh sample."""
        rollout = self._combined(self.terms(net, self._sample()), self.scales)
        self.last = float(rollout.detach())
        return matching_loss / self.matching_scale + rollout

    def check_score(self, net: nn.Module) -> float:
        """The rollout term on the cells kept out of training (lower is better; one when the stage starts
        without growth).
        """
        with torch.no_grad():
            return float(self._combined(self.terms(net, self.check_cells), self.check_scales).detach())


MAX_ROLLOUT_STEPS = 500  # the most steps of rollout fitting
ROLLOUT_CHECK_EVERY = 10  # steps between two stopping checks of rollout fitting
ROLLOUT_LR_FACTOR = 0.1  # rollout fitting's learning rate, relative to flow matching's


def rollout_steps(asked: bool | str, matching_steps: int, n_intervals: int) -> int:
    """Steps of rollout fitting after ``matching_steps`` steps of flow matching (0: none).

    As many network passes as flow matching took steps, each step taking
    ``2 x ROLLOUT_SOLVER_STEPS`` passes per interval, between :data:`ROLLOUT_CHECK_EVERY` and
    :data:`MAX_ROLLOUT_STEPS`. ``asked="auto"`` runs none for a single interval or when that
    budget is below :data:`ROLLOUT_CHECK_EVERY`; ``False`` none; ``True`` always. Two time points are
    left out because there flow matching already fits the one interval, and a sample-based
    divergence of a few hundred cells in many dimensions may pull the path's middle where the
    path family does not want it (e.g. undo ``"ecfm"``'s entropy control).

    Returns
    -------
    The number of steps.
    """
    budget = int(matching_steps) // (2 * n_intervals * ROLLOUT_SOLVER_STEPS)
    if asked is False or (asked == "auto" and (n_intervals < 2 or budget < ROLLOUT_CHECK_EVERY)):
        return 0
    return max(ROLLOUT_CHECK_EVERY, min(MAX_ROLLOUT_STEPS, budget))


def fit_rollouts(net: nn.Module, objective: Objective, clock: Clock, field: TrainingField,
                 populations: list[torch.Tensor], masses: list[np.ndarray] | None, times: npt.ArrayLike, growth: bool,
                 rng: np.random.Generator, *, n_steps: int, lr: float, ema_decay: float | None, matching_loss: float,
                 progress: bool) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Rollout fitting after flow matching: training goes on with flow matching's loss plus the rollout term.

    From the fitted weights ``net``, at :data:`ROLLOUT_LR_FACTOR` times flow matching's ``lr``, for at most
    ``n_steps`` steps (:func:`rollout_steps`); every :data:`ROLLOUT_CHECK_EVERY` steps the rollout discrepancy
    of cells kept out of this stage is measured; the stage stops as flow matching does (4 checks without a
    1% gain) and keeps the best check's network, or the network it started from when no check beat it.

    Returns
    -------
    The network (in evaluation mode, without gradients) and the stage's history: ``rollout_loss``,
    ``rollout_discrepancy``, ``rollout_step``, ``rollout_score`` (at each check), ``rollout_initial_score``,
    ``rollout_kept`` (whether a check beat the start) and ``rollout_seconds``.
    """
    start = time.perf_counter()
    term = RolloutLoss(field, populations, masses, times, growth, rng)
    net = net.requires_grad_(True)
    before = copy.deepcopy(net.state_dict())
    initial = float(distributed.mean(term.start(net, matching_loss=matching_loss)))
    stopping = EarlyStopping(term.check_score, scale=initial, check_every=ROLLOUT_CHECK_EVERY)
    net, log = train(net, objective, clock, n_steps=n_steps, lr=lr * ROLLOUT_LR_FACTOR, lr_schedule="constant",
                     ema_decay=ema_decay, stopping=stopping, rollout=term, progress=progress,
                     description="rollout fitting")
    improved = bool(log["stopping_score"].min() < initial)
    if not improved:
        net.load_state_dict(before)
    history = dict(rollout_loss=log["loss"], rollout_discrepancy=log["rollout"], rollout_step=log["stopping_step"],
                   rollout_score=log["stopping_score"], rollout_initial_score=np.array(initial),
                   rollout_kept=np.array(improved), rollout_seconds=np.array(time.perf_counter() - start))
    return net.eval().requires_grad_(False), history
