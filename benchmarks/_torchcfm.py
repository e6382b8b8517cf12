"""TorchCFM's exact minibatch OT-CFM, the benchmarks' peer, trained and integrated as cellflow trains and integrates.

``TorchCFMRunner`` is what ``leave_one_out.py``, ``horizon.py`` and ``time_to_accuracy.py`` run as
TorchCFM OT-CFM; ``torchcfm_fitter`` makes it a fitter of :func:`cellflow.benchmark.leave_one_out`,
and ``IntervalByInterval`` gives a model that only pushes the ``transport`` of the horizon.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch

import cellflow
from cellflow.fields import Clock, TimeMLP
from cellflow.model import METHODS, TimeCourse, default_batch_size, default_hidden
from cellflow.solvers import integrate
from cellflow.training import Batch, train

TORCHCFM = "torchcfm_otcfm"
_DEFAULTS = inspect.signature(cellflow.CellFlow).parameters
EMA = _DEFAULTS["ema_decay"].default
LR = _DEFAULTS["lr"].default
SIGMA = METHODS["otcfm"].path_class.default_sigma  # path noise, in units of the data's overall std


class TorchCFMPairs:
    """Training batches of TorchCFM's exact minibatch OT-CFM, in real time as cellflow's objectives give them.

    Per step and per interval ``[t_k, t_{k+1}]`` (length ``h_k``) of the training time points,
    ``batch_size`` cells are drawn uniformly with replacement from each side; TorchCFM's
    ``sample_location_and_conditional_flow`` solves the exact OT plan of that minibatch,
    resamples pairs from it and returns ``(s, x_s, u)`` with ``s`` in ``[0, 1]``. As in
    cellflow, the path is defined in real time: the point lies at ``t = t_k + s h_k`` and moves
    at ``u / h_k``; the training loop turns these into the network's input time ``tau(t)`` and
    its units (:meth:`cellflow.fields.Clock.to_network`), exactly as for cellflow's own pairs.
    """

    def __init__(self, populations, times, batch_size: int, sigma: float):
        from torchcfm.conditional_flow_matching import (
            ExactOptimalTransportConditionalFlowMatcher,
        )

        self.populations = populations
        self.times = [float(t) for t in times]
        self.batch_size = int(batch_size)
        self.matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)

    def draw(self):
        xs, ts, us = [], [], []
        for k in range(len(self.populations) - 1):
            source, target = self.populations[k], self.populations[k + 1]
            i = torch.randint(0, source.shape[0], (self.batch_size,), device=source.device)
            j = torch.randint(0, target.shape[0], (self.batch_size,), device=target.device)
            s, x_s, u = self.matcher.sample_location_and_conditional_flow(source[i], target[j])
            span = self.times[k + 1] - self.times[k]
            xs.append(x_s)
            ts.append(self.times[k] + span * s)
            us.append(u / span)
        return Batch(x=torch.cat(xs), t=torch.cat(ts), u=torch.cat(us))


class TorchCFMRunner:
    """TorchCFM's exact minibatch OT-CFM, trained and integrated as cellflow trains and integrates.

    Batches come from :class:`TorchCFMPairs` (TorchCFM's coupling and path, cellflow's clock).
    Everything else is cellflow's own code, called rather than copied: the network
    (:class:`cellflow.fields.TimeMLP` of the same widths, hence the same initial weights for a
    seed), the training loop :func:`cellflow.training.train` (loss, Adam, weight averaging with
    the same decay, ``ema_decay``, cellflow's default unless switched off with 0), the
    coordinates (centre, one overall scale, :class:`cellflow.fields.Clock`) and the integrator
    (:func:`cellflow.solvers.integrate`, dopri5 with its default tolerances) on the
    real-time field ``net(z, tau(t)) * r(t)``, the form of ``CellFlow._field``.
    """

    def __init__(self, *, sigma=SIGMA, hidden=(256, 256, 256), n_steps=2000, batch_size=256, lr=LR,
                 ema_decay: float | None = EMA, seed: int = 0, device: str = "cpu"):
        self.sigma = float(sigma)
        self.hidden = tuple(hidden)
        self.n_steps = int(n_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.ema_decay = ema_decay or None
        self.seed = int(seed)
        self.device = torch.device(device)
        self.net = None
        self.history: dict[str, float | np.ndarray] = {}

    def network(self, n_dims: int) -> torch.nn.Module:
        """The field ``net(x, t)``: cellflow's :class:`TimeMLP` of the shared widths."""
        return TimeMLP(n_dims, self.hidden)

    def _internal(self, x) -> torch.Tensor:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return torch.as_tensor(z, dtype=torch.float32, device=self.device)

    def fit(self, course: TimeCourse) -> TorchCFMRunner:
        start = time.perf_counter()
        # torch: initial weights, which cells enter a minibatch and TorchCFM's draws of s and
        # noise; np.random: TorchCFM's resampling of pairs from the minibatch plan.
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)  # noqa: NPY002 (TorchCFM draws from numpy's global generator)

        pooled = np.concatenate(course.populations).astype(np.float64)
        self.center = pooled.mean(axis=0)
        self.scale = float(np.sqrt(pooled.var(axis=0).mean())) or 1.0
        populations = [self._internal(x) for x in course.populations]
        pairs = TorchCFMPairs(populations, course.times, self.batch_size, self.sigma)
        self.clock = Clock.from_targets(course.times, pairs)  # units from its own targets, as cellflow's
        net = self.network(course.n_dims).to(self.device)
        net, log = train(net, pairs, self.clock, n_steps=self.n_steps, lr=self.lr, ema_decay=self.ema_decay,
                         progress=False)
        self.net = net.eval()
        self.history = {"loss": log["loss"], "fit_seconds": time.perf_counter() - start}
        return self

    def _field(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity per unit of real time: the network's output at ``tau(t)`` in the unit of the interval ahead."""
        tau, unit = self.clock.evaluate(t.to(torch.float64).expand(len(z)), at_knots="after")
        return self.net(z, tau.to(z.dtype)) * unit.to(z.dtype)[:, :1]

    def push(self, x, t_from: float, t_to: float) -> np.ndarray:
        times = torch.tensor([t_from, t_to], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            z = integrate(self._field, self._internal(x), times, method="dopri5")
        return z[-1].cpu().numpy().astype(np.float64) * self.scale + self.center


def torchcfm_fitter(steps_of, device: str, ema_decay):
    """``fit(training, seed, held_out_time)`` of :class:`TorchCFMRunner` with cellflow's default widths and
    pairs per step, for ``steps_of(seed, held_out_time)`` steps.
    """

    def fit(training: TimeCourse, seed: int, held_out_time: float):
        runner = TorchCFMRunner(hidden=default_hidden(training.n_dims), n_steps=steps_of(seed, held_out_time),
                                batch_size=default_batch_size(training), ema_decay=ema_decay, seed=seed,
                                device=device)
        return runner.fit(training)

    return fit


class IntervalByInterval:
    """``transport(x, times)`` of a model that only pushes (``push(x, t_from, t_to)``, as TorchCFMRunner):
    the positions at each time pushed on from those at the time before; masses stay one.
    """

    def __init__(self, model):
        self.model = model

    def transport(self, x, times):
        positions = [np.asarray(x, dtype=np.float64)]
        for t_from, t_to in zip(times[:-1], times[1:]):
            positions.append(self.model.push(positions[-1], float(t_from), float(t_to)))
        stacked = np.stack(positions)
        return stacked, np.ones(stacked.shape[:2])
